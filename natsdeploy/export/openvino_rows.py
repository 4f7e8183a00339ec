"""The export report's OpenVINO rows: parity against PyTorch and interleaved latency on OpenVINO CPU.

The graphs are the ones written to disk (every form; model-local functions are inlined in memory by
`natsdeploy.runners.OpenVinoRunner`), compared with the same PyTorch outputs and the same comparator
(`natsdeploy.verify.parity.compare`) as the ONNX Runtime rows, and timed like them: interleaved
baseline/model pairs after a warm-up. The inference precision is pinned and recorded. The printed rows
are `natsdeploy.export.report`'s, the same as ONNX Runtime's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["openvino_entries"]


def openvino_entries(protos: Mapping[str, Any], refs: Mapping[str, Mapping[str, np.ndarray]], x: np.ndarray, *,
                     precision: str = "f32", threads: int, tolerance: float, latency_pairs: int, warmup_s: float,
                     log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Parity entry (`model`/`baseline` against `refs`) and latency entry (None if `latency_pairs` is 0).

    `tolerance` applies where f32 ran; bf16 and f16 use their defaults from `DEFAULT_TOLERANCE`. The
    entries keep the precision that ran (`precision`) and `inference_precision` {requested, ran}: where
    the CPU lacks the requested format (bf16 on AVX2) OpenVINO runs f32, and one line is logged.
    """
    from natsdeploy.timing.latency import time_interleaved
    from natsdeploy.runners import OPENVINO_PRECISIONS, OpenVinoRunner
    from natsdeploy.verify.parity import DEFAULT_TOLERANCE, compare

    runners = {k: OpenVinoRunner(p, threads=threads, precision=precision) for k, p in protos.items()}
    first = next(iter(runners.values()))
    runtime = f"OpenVINO {first.version} CPU"
    if first.fallback_note:
        log(first.fallback_note)
    tol = tolerance if first.precision == "f32" else DEFAULT_TOLERANCE[OPENVINO_PRECISIONS[first.precision]]
    feed = {"images": x}
    results = {k: compare({n: v for n, v in runners[k].run(feed).items() if n in refs[k]}, refs[k], tolerance=tol)
               for k in refs}
    parity = {"runtime": runtime, "precision": first.precision, "inference_precision": first.precision_record(),
              "passed": all(r.passed for r in results.values()),
              **{k: r.to_dict() for k, r in results.items()}}
    if latency_pairs <= 0:
        return parity, None
    log(f"timing OpenVINO CPU ({first.precision}), {first.threads} threads: {latency_pairs} interleaved pairs after "
        f"{warmup_s:g}s warm-up")
    timing = time_interleaved(lambda: runners["baseline"].run(feed), lambda: runners["model"].run(feed),
                              pairs=latency_pairs, warmup_s=warmup_s)
    latency = {**timing.to_dict(), "runtime": runtime, "precision": first.precision,
               "inference_precision": first.precision_record(), "threads": first.threads,
               "performance_hint": "LATENCY", "input_shape": list(x.shape)}
    return parity, latency
