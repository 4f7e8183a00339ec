"""`natsdeploy export` as a library call: transformed + baseline ONNX, proven equal in cost and numerics, timed.

`export_arch(arch, out_dir, ExportOptions(...))` computes everything in memory first (build, fold, rewrite,
check, count, parity, latency, int8), then writes: the two graphs (through a staging folder and atomic
renames), the TensorRT engines where asked (built from the written graphs), and report.json last, once,
after the verdict. A bad input fails before any output (`ExportOptions` checks every field); an
interrupted run leaves no report.json, so a folder with one holds a finished export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from natsdeploy.arch import Arch
from natsdeploy.errors import UsageError
from natsdeploy.export.int8 import ACTIVATIONS, DEFAULT_CALIBRATION_IMAGES
from natsdeploy.export.onnx import EXPORT_FORMS, FEATURE_OUTPUTS
from natsdeploy.export.report import ExportReport
from natsdeploy.export.tensorrt import TRT_CHOICES, Profile
from natsdeploy.extras import available, skipped_line
from natsdeploy.files import atomic_write_text

__all__ = ["DEFAULT_FORM", "PRECISIONS", "OPENVINO_PRECISIONS", "ExportOptions", "ExportResult", "export_arch",
           "format_profile"]

DEFAULT_FORM = "branches"
PRECISIONS = ("fp32", "fp16", "int8")
OPENVINO_PRECISIONS = ("f32", "bf16", "f16")
MIN_OPSET = 13


@dataclass(frozen=True)
class ExportOptions:
    """How `export_arch` exports, checks and times: the `natsdeploy export` flags as typed fields, with
    the same defaults. Every field is checked on construction (a one-line `UsageError`:
    `field: got X, expected Y`), so a bad option fails before any work."""

    weights: Any = None
    """A torchvision-layout .pth path, 'imagenet', a state dict, or None (seeded init)."""
    input_shape: tuple[int, ...] = (1, 3, 800, 1216)
    """N x 3 x H x W (H, W >= 32); with `dynamic`, the shape parity and latency run at."""
    dynamic: bool = False
    """Dynamic batch, height and width."""
    opset: int | None = None
    """ONNX opset; None: 17, or 18 for the forms that emit Col2Im (rows, auto)."""
    form: str = DEFAULT_FORM
    """The transformed convs' form: one of `natsdeploy.export.onnx.EXPORT_FORMS`."""
    logits: bool = False
    """Also output `logits` (after c2..c5)."""
    tolerance: float | None = None
    """Parity bound on max|err|/max|ref|; None: `verify.parity.DEFAULT_TOLERANCE` for `precision`."""
    latency_pairs: int = 20
    """Interleaved timing pairs on ONNX Runtime CPU (and OpenVINO); 0 skips timing."""
    warmup_s: float = 2.0
    """Warm-up seconds before timing."""
    threads: int | None = None
    """Runtime threads; None: every logical CPU."""
    seed: int = 0
    """Seed of the init (without `weights`) and of the parity input."""
    precision: str = "fp32"
    """fp32; fp16: fp16 graphs behind fp32 casts (and fp16 engines); int8: static QDQ graphs (needs `calibration`)."""
    openvino: str | None = "f32"
    """OpenVINO CPU rows (parity, latency, int8) at f32, bf16 or f16; None leaves OpenVINO out."""
    target: Any = None
    """The alignment entry's target: a `natsdeploy.targets.Target`, its name, or None (this CPU's ort-cpu)."""
    engine: bool = False
    """Also build and audit TensorRT engines."""
    trt: str = "auto"
    """TensorRT API for `engine`: auto, tensorrt or rtx."""
    trt_aux_streams: int | None = None
    """TensorRT max_aux_streams (None: TensorRT's default)."""
    calibration: str | None = None
    """int8: a COCO-format folder or 'synthetic'."""
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    """int8: images to calibrate on."""
    int8_activations: str = "s8"
    """int8: s8 (symmetric, what TensorRT accepts) or u8 (asymmetric, ONNX Runtime CPU's fast path)."""
    int8_reduce_range: bool = False
    """int8: 7-bit weights (`quantize_static(reduce_range=True)`), for CPUs whose int8 kernels saturate pair
    sums (no VNNI/AMX: `natsdeploy.targets.int8_pairs_saturate`)."""
    trt_shapes: tuple[Profile, ...] = ()
    """With `engine` and `dynamic`: the engines' optimization profiles, each (min, opt, max) N x 3 x H x W with
    H and W multiples of 32 and min <= opt <= max, `input_shape` inside one; () builds one profile, min
    1x3x64x64, opt `input_shape`, max twice its batch, height and width."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", _shape(self.input_shape))
        for name in ("dynamic", "logits", "engine", "int8_reduce_range"):
            _bool(name, getattr(self, name))
        _choice("form", self.form, EXPORT_FORMS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("openvino", self.openvino, OPENVINO_PRECISIONS, optional=True)
        _choice("trt", self.trt, TRT_CHOICES)
        _choice("int8_activations", self.int8_activations, ACTIVATIONS)
        _integer("latency_pairs", self.latency_pairs, 0)
        _integer("seed", self.seed, 0)
        _integer("calibration_images", self.calibration_images, 1)
        _integer("threads", self.threads, 1, optional=True)
        _integer("trt_aux_streams", self.trt_aux_streams, 0, optional=True)
        _number("warmup_s", self.warmup_s)
        _number("tolerance", self.tolerance, optional=True)
        self._check_opset()
        self._check_sources()
        self._check_int8()
        object.__setattr__(self, "trt_shapes", _profiles(self.trt_shapes))
        self._check_trt_shapes()

    def _check_opset(self) -> None:
        if self.opset is None:
            return
        import onnx

        _integer("opset", self.opset, MIN_OPSET, onnx.defs.onnx_opset_version())
        if self.form in ("rows", "auto") and self.opset < 18:
            raise UsageError(f"opset: got {self.opset}, expected 18 or newer for form {self.form!r} (Col2Im)")

    def _check_sources(self) -> None:
        if not (self.weights is None or isinstance(self.weights, (str, os.PathLike, Mapping))):
            raise UsageError(f"weights: got {_short(self.weights)}, expected a .pth path, 'imagenet', a state dict "
                             "or None")
        if not (self.calibration is None or isinstance(self.calibration, (str, os.PathLike))):
            raise UsageError(f"calibration: got {_short(self.calibration)}, expected a COCO-format folder, "
                             "'synthetic' or None")
        if isinstance(self.target, str):
            from natsdeploy.targets import TARGET_NAMES

            _choice("target", self.target, TARGET_NAMES)
        elif self.target is not None and not all(hasattr(self.target, a) for a in ("name", "block")):
            raise UsageError(f"target: got {_short(self.target)}, expected a natsdeploy.targets.Target, its name "
                             "or None")

    def _check_int8(self) -> None:
        if self.int8_reduce_range and self.precision != "int8":
            raise UsageError(f"int8_reduce_range: got True with precision {self.precision!r}, expected it only with "
                             "precision 'int8'")
        if self.precision != "int8":
            return
        for bad, why in (
                (self.calibration is None, "calibration: got None with precision 'int8', expected a COCO-format "
                                           "folder or 'synthetic'"),
                (self.form != "branches", f"form: got {self.form!r} with precision 'int8', expected 'branches'"),
                (self.engine and self.int8_activations != "s8",
                 f"int8_activations: got {self.int8_activations!r} with engine, expected 's8' (TensorRT takes "
                 "symmetric int8 only, zero point 0)")):
            if bad:
                raise UsageError(why)

    def _check_trt_shapes(self) -> None:
        if not self.trt_shapes:
            return
        given = ", ".join(format_profile(p) for p in self.trt_shapes)
        if not (self.engine and self.dynamic):
            missing = " and ".join(n for n, v in (("engine", self.engine), ("dynamic", self.dynamic)) if not v)
            raise UsageError(f"trt_shapes: got {given} without {missing}, expected it only with engine and dynamic "
                             "(the optimization profiles of a dynamic engine)")
        for p in self.trt_shapes:
            text = format_profile(p)
            if any(s[1] != 3 for s in p):
                raise UsageError(f"trt_shapes: got {text}, expected C = 3 in min, opt and max")
            if any(d % 32 for s in p for d in s[2:]):
                raise UsageError(f"trt_shapes: got {text}, expected H and W multiples of 32 (the trunk's stride)")
            if not all(a <= b <= c for a, b, c in zip(*p)):
                raise UsageError(f"trt_shapes: got {text}, expected min <= opt <= max in every dimension")
        if not any(all(a <= x <= c for a, x, c in zip(p[0], self.input_shape, p[2])) for p in self.trt_shapes):
            raise UsageError(f"trt_shapes: got {given}, expected input_shape {'x'.join(map(str, self.input_shape))} "
                             "(where parity runs) inside one profile's min..max")


def format_profile(profile: Profile) -> str:
    """A profile as `--trt-shapes` writes it: MIN:OPT:MAX, each NxCxHxW."""
    return ":".join("x".join(str(d) for d in s) for s in profile)


def _profiles(value: Any) -> tuple[Profile, ...]:
    """`trt_shapes` as a tuple of (min, opt, max) tuples of 4 positive integers, or a one-line `UsageError`."""
    def ints(shape: Any) -> bool:
        return (isinstance(shape, Sequence) and not isinstance(shape, str) and len(shape) == 4
                and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in shape))

    ok = isinstance(value, Sequence) and not isinstance(value, str) and all(
        isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 3 and all(ints(s) for s in p) for p in value)
    if not ok:
        raise UsageError(f"trt_shapes: got {_short(value)}, expected a tuple of (min, opt, max) profiles, each shape "
                         "4 positive integers N, C, H, W")
    return tuple(tuple(tuple(int(d) for d in s) for s in p) for p in value)


def _short(value: Any) -> str:
    """A value for a one-line message: its repr, cut short."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _shape(value: Any) -> tuple[int, ...]:
    try:
        shape = tuple(value)
    except TypeError:
        shape = ()
    ok = (len(shape) == 4 and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape)
          and shape[0] >= 1 and shape[1] == 3 and shape[2] >= 32 and shape[3] >= 32)
    if not ok:
        raise UsageError(f"input_shape: got {_short(value)}, expected (N, 3, H, W) integers with N >= 1, H and W >= 32")
    return tuple(int(d) for d in shape)


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise UsageError(f"{name}: got {_short(value)}, expected True or False")


def _choice(name: str, value: Any, choices: Sequence[str], *, optional: bool = False) -> None:
    if not (value in choices or (optional and value is None)):
        raise UsageError(f"{name}: got {_short(value)}, expected one of {list(choices)}{' or None' if optional else ''}")


def _integer(name: str, value: Any, lo: int, hi: int | None = None, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        expected = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"
        raise UsageError(f"{name}: got {_short(value)}, expected {expected}{' or None' if optional else ''}")


def _number(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not value >= 0:  # NaN fails too
        raise UsageError(f"{name}: got {_short(value)}, expected a number >= 0{' or None' if optional else ''}")


@dataclass
class ExportResult:
    """What `export_arch` wrote (`files`: key -> path) and its report: `report` is the dict report.json
    holds, `sections` the typed `ExportReport` it comes from."""

    out_dir: Path
    files: dict[str, Path]
    report: dict[str, Any] = field(default_factory=dict)
    sections: ExportReport | None = None

    @property
    def passed(self) -> bool:
        return bool(self.report["verdict"]["passed"])


def export_arch(arch: Arch, out_dir: str | os.PathLike[str], options: ExportOptions | None = None, *,
                log: Callable[[str], None] = print, **kwargs: Any) -> ExportResult:
    """Export `arch` (and its baseline) to ONNX in `out_dir` and verify cost, numerics and latency.

    `options` (default `ExportOptions()`) says how; see its fields. The old keyword arguments
    (`export_arch(arch, out_dir=..., latency_pairs=0)`) still work, with a DeprecationWarning: each
    replaces that field of `options`. `log` receives the progress lines.
    """
    opts = _resolve_options(options, kwargs)
    trt_api = None
    if opts.engine:  # refuse rows/auto and a missing TensorRT before any work
        from natsdeploy.export.tensorrt import check_engine_request

        trt_api = check_engine_request(opts.form, opts.trt, opts.trt_aux_streams)
    report, blobs, split_names = _measure(arch, opts, log=log)
    out = Path(out_dir)
    files = _write_graphs(out, blobs)
    engines = {}
    if trt_api is not None:
        from natsdeploy.export.tensorrt import build_engines_for_export, default_profile

        profiles = (opts.trt_shapes or (default_profile(opts.input_shape),)) if opts.dynamic else ()
        log(f"TensorRT ({trt_api.trt.__name__} {trt_api.version}): building {opts.precision} engines for model and "
            "baseline" + (f", optimization profiles (MIN:OPT:MAX) {', '.join(map(format_profile, profiles))}"
                          if profiles else ", static shape"))
        tensorrt = build_engines_for_export(out, trt_api, precision=opts.precision, dynamic=opts.dynamic,
                                            input_shape=opts.input_shape, aux_streams=opts.trt_aux_streams,
                                            split_names=split_names, profiles=profiles)
        report = replace(report, tensorrt=tensorrt)
        engines = {f"{k}_engine": Path(getattr(tensorrt, k)["engine"]) for k in ("model", "baseline")}
    as_dict = report.to_dict()
    files["report"] = atomic_write_text(out / "report.json", json.dumps(as_dict, indent=2, default=_json_default) + "\n")
    return ExportResult(out, {**files, **engines}, as_dict, report)


def _resolve_options(options: ExportOptions | None, kwargs: dict[str, Any]) -> ExportOptions:
    """`options`, with the deprecated keyword arguments applied (each warns once per call site)."""
    if options is not None and not isinstance(options, ExportOptions):
        raise UsageError(f"options: got {_short(options)}, expected an ExportOptions or None")
    if not kwargs:
        return options or ExportOptions()
    known = {f.name for f in fields(ExportOptions)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"export_arch() got an unexpected keyword argument {unknown[0]!r}")
    warnings.warn(f"export_arch({', '.join(f'{k}=...' for k in kwargs)}) is deprecated; pass "
                  "options=natsdeploy.ExportOptions(...) with those fields", DeprecationWarning, stacklevel=3)
    return replace(options or ExportOptions(), **kwargs)


def _measure(arch: Arch, opts: ExportOptions, *,
             log: Callable[[str], None]) -> tuple[ExportReport, dict[str, bytes], list[str]]:
    """Everything in memory: the report without its TensorRT section, the graphs to write (bytes), and
    the model's transformed convs with more than one branch (what the engine's Concat audit checks)."""
    import onnxruntime as ort

    from natsdeploy.align import alignment_entry
    from natsdeploy.export.onnx import check_onnx, to_onnx
    from natsdeploy.export.report import CostSection, LatencySection, ParitySection
    from natsdeploy.models.build import build_trunks
    from natsdeploy.onnx_utils import inline_functions, to_fp16
    from natsdeploy.runners import OrtRunner, TorchRunner
    from natsdeploy.timing.latency import time_interleaved
    from natsdeploy.timing.machine import machine_info
    from natsdeploy.verify.count import count_onnx
    from natsdeploy.verify.parity import DEFAULT_TOLERANCE, compare

    shape, dynamic, precision, pairs = opts.input_shape, opts.dynamic, opts.precision, opts.latency_pairs
    threads = int(opts.threads or os.cpu_count() or 1)
    tol = float(opts.tolerance if opts.tolerance is not None else DEFAULT_TOLERANCE.get(precision, DEFAULT_TOLERANCE["fp32"]))
    out_names = FEATURE_OUTPUTS + (("logits",) if opts.logits else ())

    transformed, baseline, weight_source = build_trunks(arch, opts.weights, opts.seed)
    model = to_onnx(transformed, input_shape=shape, dynamic=dynamic, opset=opts.opset, form=opts.form,
                    logits=opts.logits, graph_name=f"{arch.backbone}-model", threads=threads, log=log)
    base = to_onnx(baseline, input_shape=shape, dynamic=dynamic, opset=model.opset, form=model.emitted_form,
                   logits=opts.logits, graph_name=f"{arch.backbone}-baseline", rows_only=model.rows_only)
    protos = {"model": model.model, "baseline": base.model}
    if precision == "fp16":
        protos = {k: to_fp16(p) for k, p in protos.items()}
    blobs = {k: p.SerializeToString(deterministic=True) for k, p in protos.items()}
    for b in blobs.values():
        check_onnx(b)  # the bytes: serialising a large graph once, not twice, is 0.2 s a model

    counts = {k: count_onnx(p, shape if dynamic else None) for k, p in protos.items()}
    sessions = {k: OrtRunner(b, threads=threads).session for k, b in blobs.items()}  # the ORT runner makes them
    x = np.random.default_rng(opts.seed).standard_normal(shape, dtype=np.float32)
    parity, refs = {}, {}
    for key, module in (("model", transformed), ("baseline", baseline)):
        refs[key] = ref = TorchRunner(module, output_names=out_names).run({"images": x})
        got = dict(zip(out_names, sessions[key].run(list(out_names), {"images": x})))
        parity[key] = compare(got, ref, tolerance=tol)

    timing = None
    if pairs > 0 and precision != "int8":  # int8: the int8 section times int8 against fp32
        feed = {"images": x}
        log(f"timing ONNX Runtime CPU, {threads} threads: {pairs} interleaved pairs after {opts.warmup_s:g}s warm-up")
        timing = time_interleaved(lambda: sessions["baseline"].run(None, feed), lambda: sessions["model"].run(None, feed),
                                  pairs=pairs, warmup_s=opts.warmup_s)
    ov_parity = ov_latency = None
    if opts.openvino is not None and precision != "int8" and not available("openvino"):  # on by default: one line
        ov_parity = {"skipped": skipped_line("OpenVINO", "openvino")}
    elif opts.openvino is not None and precision != "int8":
        from natsdeploy.export.openvino_rows import openvino_entries

        ov_parity, ov_latency = openvino_entries(protos, refs, x, precision=opts.openvino, threads=threads,
                                                 tolerance=tol, latency_pairs=pairs, warmup_s=opts.warmup_s, log=log)
    int8 = None
    if precision == "int8":  # the files are the int8 graphs; the fp32 ones they come from pass parity above
        from natsdeploy.export.int8 import int8_export

        int8_protos, int8 = int8_export(protos, calibration=str(opts.calibration),
                                        calibration_images=opts.calibration_images, shape=shape, threads=threads,
                                        latency_pairs=pairs, warmup_s=opts.warmup_s,
                                        activations=opts.int8_activations, reduce_range=opts.int8_reduce_range,
                                        openvino=opts.openvino is not None, log=log)
        blobs = {k: p.SerializeToString(deterministic=True) for k, p in int8_protos.items()}

    splits = model.splits
    io_dtype = {"fp16": "float32 (Cast to/from float16 in the graph)",
                "int8": "float32 (int8 QuantizeLinear/DequantizeLinear inside)"}.get(precision, "float32")
    report = ExportReport(
        arch={"backbone": arch.backbone, "transformed_convs": len(arch.convs), "provenance": arch.provenance},
        weights=weight_source,
        export={"form": opts.form, "precision": precision, "opset": model.opset, "dynamic": dynamic,
                "input_shape": list(shape), "io_dtype": io_dtype, "outputs": list(out_names),
                "rewrites": ["fold BatchNorm into conv (per branch)", "ReLU into branches",
                             "permutation folded into weights", "merge branches sharing a dilation"],
                "transformed_convs_in_graph": len(splits),
                "branches_in_graph": sum(len(s.branches) for s in splits),
                "conv_nodes": {k: sum(n.op_type == "Conv" for n in inline_functions(p).graph.node)
                               for k, p in protos.items()},
                "function_nodes": sum(n.domain == "natsdeploy" for n in protos["model"].graph.node),
                "autotune": model.autotune},
        cost=CostSection(counts["model"], counts["baseline"]),
        parity=ParitySection(runtime=f"onnxruntime {ort.__version__} CPUExecutionProvider", model=parity["model"],
                             baseline=parity["baseline"], openvino=ov_parity),
        latency=None if timing is None else LatencySection(timing, runtime=f"onnxruntime {ort.__version__}",
                                                           intra_op_threads=threads, input_shape=shape,
                                                           openvino=ov_latency),
        alignment=alignment_entry(arch, opts.target, shape, counts["model"].macs),
        machine=machine_info(),
        int8=int8)
    return report, blobs, [s.name for s in splits if len(s.branches) > 1]


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def _write_graphs(out_dir: Path, blobs: dict[str, bytes]) -> dict[str, Path]:
    """model.onnx and baseline.onnx, written into a staging folder and renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".natsdeploy-staging-", dir=out_dir))
    try:
        files = {}
        for key in ("model", "baseline"):
            name = f"{key}.onnx"
            (stage / name).write_bytes(blobs[key])
            os.replace(stage / name, out_dir / name)
            files[key] = out_dir / name
        return files
    finally:
        shutil.rmtree(stage, ignore_errors=True)
