"""Per-conv micro-benchmarks: each transformed conv against its baseline conv, at its in-network shape."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from natsdeploy.align import format_dilation
from natsdeploy.arch import Arch
from natsdeploy.targets import detect_target
from natsdeploy.timing.latency import time_interleaved

__all__ = ["conv_input_shapes", "per_conv_bench", "format_per_conv_row", "per_conv_legend"]


def conv_input_shapes(arch: Arch, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """The input shape each listed conv sees in the network (computed on the meta device)."""
    import torch

    from natsdeploy.models.build import build_baseline

    with torch.device("meta"):
        model = build_baseline(arch.backbone)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: shapes.__setitem__(n, tuple(a[0].shape))) for n in arch.convs]
    with torch.no_grad():
        model(torch.zeros(tuple(input_shape), device="meta"))
    for h in handles:
        h.remove()
    return shapes


def _ort_single(conv_module, shape, name: str, threads: int):
    """A one-conv ONNX graph (branch form for a MixedDilationConv) on ORT CPU."""
    from natsdeploy.export.fold import ConvOp, SplitConv
    from natsdeploy.export.graph import GraphBuilder, emit_split
    from natsdeploy.models.mixed_conv import MixedDilationConv
    from natsdeploy.runners import OrtRunner

    def op(c, n):
        w = c.weight.detach().float().numpy()
        return ConvOp(n, w, np.zeros(w.shape[0], np.float32), int(c.stride[0]), tuple(c.padding), tuple(c.dilation),
                      int(c.groups))

    g = GraphBuilder(opset=17)
    if isinstance(conv_module, MixedDilationConv):
        split = SplitConv(name, tuple(op(c, f"{name}/b{i}") for i, c in enumerate(conv_module.branches)),
                          grouped=conv_module.groups > 1)
        y = emit_split(g, "x", split)
    else:
        y = g.conv("x", op(conv_module, name))
    g.node("Identity", [y], "y", "out")
    model = g.model([("x", shape)], ["y"], name=name)
    runner = OrtRunner(model, threads=threads)
    return lambda x: runner.run({"x": x})


def per_conv_bench(arch: Arch, *, backends: Sequence[str], input_shape: Sequence[int], threads: int,
                   runs: int = 10, warmup_s: float = 0.5, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time every transformed conv against its baseline conv (random weights: timing only)."""
    import torch

    from natsdeploy.models.build import build_backbone, build_baseline

    torch.manual_seed(0)
    transformed, baseline = build_backbone(arch), build_baseline(arch.backbone)
    rows = []
    block = detect_target().block  # torch's oneDNN and ORT's MLAS CPU kernels share this machine's vector block
    log(per_conv_legend(block))
    for name, shape in conv_input_shapes(arch, input_shape).items():
        x_np = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        t_mod, b_mod = transformed.get_submodule(name), baseline.get_submodule(name)
        for backend in backends:
            if backend == "torch":
                x = torch.from_numpy(x_np)

                def run(m, x=x):
                    with torch.inference_mode():
                        return m(x)

                fb, ft = (lambda: run(b_mod)), (lambda: run(t_mod))
            elif backend == "ort":
                rb, rt = _ort_single(b_mod, shape, name, threads), _ort_single(t_mod, shape, name, threads)
                fb, ft = (lambda: rb(x_np)), (lambda: rt(x_np))
            else:
                continue  # TensorRT per-conv engines are not built (too slow to build per conv)
            timing = time_interleaved(fb, ft, pairs=runs, warmup_s=warmup_s)
            ratio = timing.ratio
            ct = arch.convs[name]
            rows.append({"conv": name, "backend": backend, "input_shape": list(shape),
                         "branches": [[list(b.dilation), b.channels] for b in ct.branches],
                         "baseline_p50_ms": timing.baseline.p50, "transformed_p50_ms": timing.transformed.p50,
                         "ratio": ratio.median, "ci95": [ratio.ci_low, ratio.ci_high], "pairs": runs,
                         "warmup_s": warmup_s})
            log(format_per_conv_row(rows[-1], block=block))
    return rows


def per_conv_legend(block: int) -> str:
    """The table's column legend, naming the channel block its `*` marks are against."""
    return (f"  {'conv':<16} {'backend':<7} {'baseline':>11}    {'transformed':>11}  ratio [95% interval]  branches "
            f"(dilation:channels; * not a multiple of this CPU's {block}-channel block)")


def format_per_conv_row(row: dict[str, Any], *, block: int) -> str:
    """One table line of a `per_conv_bench` row: both p50s, the ratio and its 95% interval, and every
    branch's width, marked `*` where it is not a multiple of `block` (it leaves the blocked kernels)."""
    lo, hi = row["ci95"]
    widths = " ".join(f"{format_dilation(tuple(d))}:{c}{'' if c % block == 0 else '*'}" for d, c in row["branches"])
    return (f"  {row['conv']:<16} {row['backend']:<7} {row['baseline_p50_ms']:8.3f} ms -> "
            f"{row['transformed_p50_ms']:8.3f} ms  {row['ratio']:.3f}x [{lo:.3f}, {hi:.3f}]  {widths}")
