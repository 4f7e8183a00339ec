"""Per-conv choice between the ``branches`` and ``rows`` forms, measured on this machine.

Which form is faster depends on branch widths, stride and shape (see benchmarks/ort_forms): the
rows form wins big on narrow, unaligned branches and can lose on stride-2 blocks or nearly
aligned splits. Like a TensorRT tactic search, `choose_rows` times each block that holds an
eligible transformed conv in both forms, at its in-network shape, with ONNX Runtime CPU, and keeps
the rows form only where it is faster. The choice is recorded in the export report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from natsdeploy.export.fold import Block, SplitConv, Trunk

__all__ = ["block_input_shapes", "choose_rows"]


def block_input_shapes(trunk: Trunk, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Each block's input shape, from shape inference on the branch-form graph."""
    from onnx import shape_inference

    from natsdeploy.export.onnx import trunk_to_onnx
    from natsdeploy.onnx_utils import shape_skeleton

    m = shape_inference.infer_shapes(shape_skeleton(trunk_to_onnx(trunk, input_shape=input_shape, opset=18)))
    shapes = {vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim) for vi in m.graph.value_info}
    out, prev = {}, "maxpool:out"
    for blk in trunk.blocks:
        out[blk.name] = shapes[prev]
        prev = f"{blk.name}:out"
    return out


def _block_runner(blk: Block, shape: tuple[int, ...], rows_form: bool, threads: int):
    """One block in the branches or rows form as its own graph on ONNX Runtime CPU."""
    from natsdeploy.export import graph, rows
    from natsdeploy.runners import OrtRunner

    g = graph.GraphBuilder(opset=18)
    if rows_form:
        g.hw = (shape[2], shape[3])
        y = rows.emit_block(g, "x", blk)
    else:
        y = graph.emit_block(g, "x", blk)
    g.node("Identity", [y], "y", "out")
    model = g.model([("x", shape)], ["y"], name=blk.name)
    return OrtRunner(model, threads=threads)


def choose_rows(trunk: Trunk, input_shape: Sequence[int], *, threads: int, pairs: int = 7, warmup_s: float = 0.3,
                log: Callable[[str], None] = print) -> tuple[list[str], list[dict[str, Any]]]:
    """Names of the transformed convs to emit in the rows form, and the per-block measurements."""
    from natsdeploy.timing.latency import time_interleaved
    from natsdeploy.export.rows import plan_split

    shapes = block_input_shapes(trunk, input_shape)
    chosen: list[str] = []
    records: list[dict[str, Any]] = []
    for blk in trunk.blocks:
        splits = [op for op in blk.path if isinstance(op, SplitConv) and plan_split(op) is not None]
        if not splits:
            continue
        shape = shapes[blk.name]
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        sb, sr = _block_runner(blk, shape, False, threads), _block_runner(blk, shape, True, threads)
        feed = {"x": x}
        t = time_interleaved(lambda: sb.run(feed), lambda: sr.run(feed), pairs=pairs, warmup_s=warmup_s)
        r = t.ratio.median
        use = r < 1.0
        if use:
            chosen.extend(s.name for s in splits)
        records.append({"block": blk.name, "convs": [s.name for s in splits], "input_shape": list(shape),
                        "branches_p50_ms": t.baseline.p50, "rows_p50_ms": t.transformed.p50,
                        "rows_over_branches": r, "form": "rows" if use else "branches"})
        log(f"  autotune {blk.name:<10} branches {t.baseline.p50:7.2f} ms  rows {t.transformed.p50:7.2f} ms  "
            f"-> {'rows' if use else 'branches'}")
    return chosen, records
