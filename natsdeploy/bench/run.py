"""`natsdeploy bench`: latency of transformed vs baseline on each backend, interleaved."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from natsdeploy.arch import Arch
from natsdeploy.cli_values import format_shape
from natsdeploy.errors import RuntimeBackendError, UsageError
from natsdeploy.runners import BACKENDS
from natsdeploy.timing.latency import PairedTiming, time_interleaved

__all__ = ["BACKENDS", "SCHEMA", "BenchCase", "bench", "format_bench"]

SCHEMA = "natsdeploy-bench/1"
CV_WARN = 0.025  # trtexec's threshold


@dataclass(frozen=True)
class BenchCase:
    """One backend/device/precision/shape combination, timed."""

    backend: str
    device: str
    precision: str
    input_shape: tuple[int, ...]
    timing: PairedTiming
    notes: tuple[str, ...] = ()
    inference_precision: dict[str, str] | None = None
    """OpenVINO: {"requested": ..., "ran": ...} (they differ where the CPU lacks the format); else None."""

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device, "precision": self.precision,
                "inference_precision": self.inference_precision, "input_shape": list(self.input_shape),
                "notes": list(self.notes), **self.timing.to_dict()}


def _torch_modules(arch: Arch, weights: Any, seed: int) -> list[Any]:
    """The baseline and the transformed backbone with the same weights (seeded ones without `weights`)."""
    import torch

    from natsdeploy.models.build import build_backbone, build_baseline, resolve_weights

    sd = resolve_weights(weights, arch.spec)
    if sd is None:
        torch.manual_seed(seed)
        sd = build_baseline(arch.backbone).state_dict()
    return [build_baseline(arch.backbone, sd), build_backbone(arch, sd)]


def _onnx_files(arch: Arch | None, onnx_dir: Path | None, weights: Any, shape: Sequence[int], seed: int,
                tmp: Path) -> tuple[Path, Path]:
    if onnx_dir is not None:
        files = (onnx_dir / "baseline.onnx", onnx_dir / "model.onnx")
        for f in files:
            if not f.is_file():
                raise UsageError(f"--onnx: got {str(onnx_dir)!r} without {f.name}, expected a folder written by "
                                 "natsdeploy export")
        return files
    from natsdeploy.export.onnx import save_onnx, to_onnx
    from natsdeploy.models.build import build_trunks

    assert arch is not None
    transformed, baseline, _ = build_trunks(arch, weights, seed)
    out = []
    for name, module in (("baseline", baseline), ("model", transformed)):
        proto = to_onnx(module, input_shape=shape, dynamic=True).model
        out.append(save_onnx(proto, tmp / f"{name}.onnx"))
    return out[0], out[1]


def _trt_engines(files, engines: Sequence[Path] | None, fp16: bool, shape) -> list[Path]:
    """The given engines, or engines built from the ONNX files (after checking TensorRT and a GPU are here)."""
    from natsdeploy.export.tensorrt import build_engine, require_trt_runtime

    require_trt_runtime()
    if engines is not None:
        return list(engines)
    prec = "fp16" if fp16 else "fp32"
    return [build_engine(f, f.with_suffix(f".{prec}.engine"), fp16=fp16, dynamic=True, input_shape=shape)
            for f in files]


def _runner_pair(backend: str, models: Sequence[Any], *, device: str, fp16: bool, threads: int,
                 openvino_precision: str) -> tuple[list[Any], list[str], Callable[[], None] | None]:
    """Baseline and transformed runners of `backend` (`runners.create` makes them), the notes the report keeps,
    and what waits for the device (torch on CUDA; the other runners return host arrays)."""
    from natsdeploy.runners import create

    cuda = device == "cuda"
    options: dict[str, Any] = {"threads": threads}
    notes: list[str] = []
    sync = None
    if backend == "torch":
        import torch

        options = {"device": device, "channels_last": cuda, "fp16": fp16 and cuda}
        sync = torch.cuda.synchronize if cuda else None
        notes = (["channels_last"] + (["fp16 autocast"] if fp16 else [])) if cuda else []
        if fp16 and not cuda:
            notes.append("fp16 ignored on CPU")
    elif backend == "ort":
        options["providers"] = ("CUDAExecutionProvider",) if cuda else ("CPUExecutionProvider",)
        notes = [] if cuda else [f"{threads} intra-op threads, no spinning"]
    elif backend == "openvino":
        options["precision"] = openvino_precision
    elif backend == "trt":
        options = {"precision": "fp16" if fp16 else "fp32"}
    try:
        runners = [create(backend, m, **options) for m in models]
    except RuntimeBackendError as e:
        raise UsageError(f"--backend {backend} --device {device}: {e}") from None
    if backend == "openvino":
        r = runners[0]
        notes = [f"OpenVINO {r.version}, {r.threads} threads, LATENCY hint, INFERENCE_PRECISION_HINT={r.precision}"]
        if r.fallback_note:
            notes.append(r.fallback_note)
    return runners, notes, sync


def bench(arch: Arch | None = None, *, weights: Any = None, onnx_dir: str | os.PathLike[str] | None = None,
          engines: Sequence[str | os.PathLike[str]] | None = None, backends: Sequence[str] = ("torch", "ort"),
          device: str = "cpu", input_shape: Sequence[int] = (1, 3, 800, 1216), batches: Sequence[int] = (),
          fp16: bool = False, threads: int | None = None, warmup_s: float = 2.0, duration_s: float | None = None,
          runs: int = 20, seed: int = 0, openvino_precision: str = "f32",
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time baseline and transformed on each backend (interleaved pairs) and return the JSON report.

    `openvino_precision` (f32, bf16 or f16) is pinned as OpenVINO's inference precision."""
    from natsdeploy.timing.machine import machine_info

    if arch is None and onnx_dir is None and engines is None:
        raise UsageError("bench: got neither an arch file nor --onnx/--engines, expected one of them")
    if "torch" in backends and arch is None:
        raise UsageError("--backend torch: got no arch file, expected one as the first argument (torch builds "
                         "the modules)")
    if "openvino" in backends and device != "cpu":
        raise UsageError(f"--backend openvino: got --device {device}, expected cpu (OpenVINO's CPU plugin)")
    shapes = [tuple(input_shape)] + [(b, *tuple(input_shape)[1:]) for b in batches if b != input_shape[0]]
    threads = int(threads or os.cpu_count() or 1)
    if device == "cpu":
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
    cases: list[BenchCase] = []
    with tempfile.TemporaryDirectory(prefix="natsdeploy-bench-") as tmpdir:
        files = None
        for backend in backends:
            for shape in shapes:
                x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
                feed = {"images": x}
                if backend == "torch":
                    assert arch is not None
                    models = _torch_modules(arch, weights, seed)
                else:
                    if files is None and engines is None:
                        files = _onnx_files(arch, Path(onnx_dir) if onnx_dir else None, weights, shape, seed,
                                            Path(tmpdir))
                    models = (_trt_engines(files, [Path(e) for e in engines] if engines else None, fp16, shape)
                              if backend == "trt" else files)
                runners, notes, sync = _runner_pair(backend, models, device=device, fp16=fp16, threads=threads,
                                                    openvino_precision=openvino_precision)
                precision = runners[1].describe()["precision"]
                asked = runners[0].precision_record() if backend == "openvino" else None
                if backend == "openvino" and runners[0].fallback_note:
                    log(runners[0].fallback_note)
                log(f"timing {backend} on {device}, {precision}, input {format_shape(shape)}")
                b, t = runners
                timing = time_interleaved(lambda: b.run(feed), lambda: t.run(feed), pairs=runs, warmup_s=warmup_s,
                                          duration_s=duration_s, sync=sync)
                cases.append(BenchCase(backend, device, precision, shape, timing, tuple(notes), asked))
    return {
        "schema": SCHEMA,
        "arch": None if arch is None else {"backbone": arch.backbone, "transformed_convs": len(arch.convs)},
        "settings": {"backends": list(backends), "device": device, "threads": threads, "warmup_s": warmup_s,
                     "duration_s": duration_s, "runs": runs, "fp16": fp16, "seed": seed,
                     "openvino_precision": openvino_precision if "openvino" in backends else None,
                     "method": "warm-up by time, then interleaved pairs (order alternates); ratio = median of "
                               "per-pair ratios transformed/baseline with a 95% percentile bootstrap interval"},
        "machine": machine_info(),
        "results": [c.to_dict() for c in cases],
    }


def format_bench(report: dict[str, Any]) -> str:
    lines = [f"{'backend':<10}{'device':<7}{'prec':<6}{'input':<16}{'model':<12}{'p50 ms':>9}{'p90 ms':>9}"
             f"{'p99 ms':>9}{'mean ms':>9}{'cv':>7}"]
    warnings = []
    for r in report["results"]:
        for key, label in (("baseline_ms", "baseline"), ("transformed_ms", "transformed")):
            s = r[key]
            lines.append(f"{r['backend']:<10}{r['device']:<7}{r['precision']:<6}{format_shape(tuple(r['input_shape'])):<16}"
                         f"{label:<12}{s['p50']:>9.2f}{s['p90']:>9.2f}{s['p99']:>9.2f}{s['mean']:>9.2f}{s['cv']:>7.1%}")
            if s["cv"] > CV_WARN:
                warnings.append(f"warning: {r['backend']} {label} CV {s['cv']:.1%} > {CV_WARN:.1%}: noisy; "
                                "use a longer --duration-s or a quieter machine")
    lines.append("")
    for r in report["results"]:
        lines.append(f"{r['backend']} {r['device']} {r['precision']} {format_shape(tuple(r['input_shape']))}: "
                     f"{r['verdict']}")
    return "\n".join(lines + warnings)


def plot_bench(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Box plots of baseline vs transformed latency per case, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from natsdeploy.files import atomic_write

    results = report["results"]
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results) + 1, 3.6), squeeze=False)
    for ax, r in zip(axes[0], results):
        data = [r["raw"]["baseline_ms"], r["raw"]["transformed_ms"]]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks([1, 2], ["baseline", "transformed"])
        ratio = r["ratio_transformed_over_baseline"]
        ax.set_title(f"{r['backend']} {r['device']} {r['precision']}\n{format_shape(tuple(r['input_shape']))}: "
                     f"{ratio['median']:.3f}x", fontsize=9)
        ax.set_ylabel("latency (ms)")
    arch = report.get("arch") or {}
    fig.suptitle(f"natsdeploy bench {arch.get('backbone', '')} — {report['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
