"""The one comparator behind every parity check (ONNX Runtime, TensorRT, fp16, detectors)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_TOLERANCE", "OutputParity", "ParityResult", "compare"]

DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
"""Default bound on max|actual - expected| / max|expected| per output, by precision (bf16 keeps 8
significant bits against fp16's 11: OpenVINO CPU in bf16 measures about 1e-2 on a ResNet-50)."""


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs_err: float
    max_abs_ref: float
    rel_err: float
    tolerance: float
    has_nan: bool

    @property
    def passed(self) -> bool:
        return (not self.has_nan) and self.rel_err <= self.tolerance

    def to_dict(self) -> dict:
        return {"max_abs_err": self.max_abs_err, "max_abs_ref": self.max_abs_ref, "rel_err": self.rel_err,
                "tolerance": self.tolerance, "nan": self.has_nan, "passed": self.passed}


@dataclass(frozen=True)
class ParityResult:
    outputs: tuple[OutputParity, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "outputs": {o.name: o.to_dict() for o in self.outputs}}


def compare(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], *,
            tolerance: float | Mapping[str, float] = DEFAULT_TOLERANCE["fp32"]) -> ParityResult:
    """Compare every expected output: max abs error, and that error relative to max |expected|.

    NaN anywhere in either side fails. A missing output or a shape mismatch raises ValueError.
    """
    results = []
    for name, ref in expected.items():
        if name not in actual:
            raise ValueError(f"output {name!r}: missing from actual outputs {sorted(actual)}")
        a = np.asarray(actual[name], dtype=np.float64)
        r = np.asarray(ref, dtype=np.float64)
        if a.shape != r.shape:
            raise ValueError(f"output {name!r}: got shape {a.shape}, expected {r.shape}")
        tol = tolerance[name] if isinstance(tolerance, Mapping) else tolerance
        nan = bool(np.isnan(a).any() or np.isnan(r).any())
        if nan or a.size == 0:
            err, scale = math.nan if nan else 0.0, 0.0
        else:
            err, scale = float(np.max(np.abs(a - r))), float(np.max(np.abs(r)))
        rel = math.nan if nan else (err / scale if scale > 0 else (0.0 if err == 0 else math.inf))
        results.append(OutputParity(name, err, scale, rel, float(tol), nan))
    return ParityResult(tuple(results))
