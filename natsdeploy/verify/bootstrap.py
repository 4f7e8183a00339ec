"""The int8 AP verdict: a paired bootstrap over images of the extra AP loss of the transformed backbone under int8.

Per COCO metric the statistic is D = Δ model - Δ baseline, Δ = int8 AP - fp32 AP of that backbone (AP points,
0-100): below 0 the transformed backbone loses more to quantization than the baseline does. Its spread over
the val images is estimated by resampling the images with replacement: each replicate draws as many images as
there are, the same draw for all four arms (paired: an image that is hard for one arm is drawn for all), and
recomputes the four APs from each arm's per-image COCO matches (`natsdeploy.data.per_image_ap`: one COCOeval
`evaluate()` per arm, no COCOeval per replicate). The interval is the bootstrap percentile interval
(`confidence`, default 95%: the 2.5th and 97.5th percentiles of D over the replicates; numpy PCG64 seeded).

The verdict is one-sided, against extra loss only (a gain never fails), with three outcomes per metric:
pass when the interval's lower end is above -tolerance (the extra loss is below the tolerance at the
interval's confidence), fail when its upper end is below -tolerance (the extra loss exceeds it), otherwise
inconclusive: the images cannot tell, more are needed. A metric pycocotools leaves undefined (-1: no ground
truth in that size range) is "undefined" and takes no part. Overall: fail if any metric fails, else
inconclusive if any is (or none is defined), else pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from natsdeploy.data.evaluate import METRICS
from natsdeploy.errors import InputError

__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_REPLICATES", "DEFAULT_SEED", "EXIT_CODES", "FAIL", "INCONCLUSIVE",
           "INT8_CONTRAST", "PASS", "UNDEFINED", "Int8Verdict", "MetricVerdict", "decide", "format_verdict",
           "int8_verdict", "paired_bootstrap", "resample_counts"]

DEFAULT_REPLICATES = 1000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95
SLACK = 1e-9
"""AP points: a bound met up to floating-point rounding counts as met (the fixed rule's slack)."""
PASS, FAIL, INCONCLUSIVE, UNDEFINED = "pass", "fail", "inconclusive", "undefined"
EXIT_CODES = {PASS: 0, FAIL: 1, "bad input": 2, INCONCLUSIVE: 3}
"""`natsdeploy parity --precision int8`'s exit status per outcome (stated in `parity --help` and the report)."""
INT8_CONTRAST = {("model", "int8"): 1.0, ("model", "fp32"): -1.0, ("baseline", "int8"): -1.0, ("baseline", "fp32"): 1.0}
"""D = (model int8 - model fp32) - (baseline int8 - baseline fp32), as weights per (backbone, precision) arm."""


def resample_counts(images: int, *, replicates: int, seed: int) -> np.ndarray:
    """(replicates, images): how often each image is drawn when `images` images are drawn with replacement."""
    if images < 1 or replicates < 1:
        raise InputError(f"images, replicates: got {images}, {replicates}, expected at least 1 each")
    draws = np.random.default_rng(seed).integers(0, images, size=(replicates, images))
    flat = (draws + images * np.arange(replicates)[:, None]).ravel()
    return np.bincount(flat, minlength=replicates * images).reshape(replicates, images)


def _contrast(arms: Mapping[Any, Any], weights: Mapping[Any, float], counts: np.ndarray | None) -> np.ndarray:
    """sum of weight x metric (AP points) per METRICS entry, exactly rounded (equal deltas give exactly 0); NaN
    where a metric is undefined (no ground truth of that size drawn)."""
    terms = []
    for key, weight in weights.items():
        m = arms[key].metrics(counts)
        terms.append([100.0 * weight * m[k] if m[k] >= 0 else math.nan for k in METRICS])
    return np.array([math.fsum(col) for col in zip(*terms)])


def paired_bootstrap(arms: Mapping[Any, Any], weights: Mapping[Any, float], *, replicates: int = DEFAULT_REPLICATES,
                     seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """sum over arms of weight x AP (AP points, per METRICS entry) on the full set (METRICS,) and on each
    replicate (replicates, METRICS), every arm on the same resample of the images.

    `arms`: `PerImageMatches` per key of `weights`, over the same images. NaN where a metric is undefined.
    """
    missing = [k for k in weights if k not in arms]
    if missing:
        raise InputError(f"arms: got {sorted(map(str, arms))}, expected also {missing}")
    ids = [np.asarray(arms[k].image_ids) for k in weights]
    if any(not np.array_equal(ids[0], i) for i in ids[1:]):
        raise InputError("arms: got different image ids between arms, expected the same images for every arm (paired)")
    counts = resample_counts(len(ids[0]), replicates=replicates, seed=seed)
    distinct, which = np.unique(counts, axis=0, return_inverse=True)  # few images: many draws coincide
    values = np.stack([_contrast(arms, weights, c) for c in distinct])
    return _contrast(arms, weights, None), values[which.reshape(-1)]


def decide(low: float, high: float, *, tolerance: float) -> str:
    """pass if `low` > -tolerance, fail if `high` < -tolerance (both up to SLACK), else inconclusive."""
    if low > -tolerance - SLACK:
        return PASS
    if high < -tolerance - SLACK:
        return FAIL
    return INCONCLUSIVE


@dataclass(frozen=True)
class MetricVerdict:
    """One metric's D (AP points): on all images, its bootstrap interval, and the outcome."""

    estimate: float
    low: float
    high: float
    replicates: int  # replicates in which the metric is defined (all but those that drew no ground truth for it)
    outcome: str

    def to_dict(self) -> dict:
        nan = lambda v: None if not np.isfinite(v) else round(float(v), 6)  # noqa: E731
        return {"estimate": nan(self.estimate), "low": nan(self.low), "high": nan(self.high),
                "replicates_defined": self.replicates, "outcome": self.outcome}


@dataclass(frozen=True)
class Int8Verdict:
    """Per metric and overall: does int8 cost the transformed backbone more AP than the baseline?"""

    metrics: dict[str, MetricVerdict]
    tolerance: float
    replicates: int
    seed: int
    confidence: float
    images: int

    @property
    def outcome(self) -> str:
        outs = [v.outcome for v in self.metrics.values() if v.outcome != UNDEFINED]
        if FAIL in outs:
            return FAIL
        return INCONCLUSIVE if INCONCLUSIVE in outs or not outs else PASS

    @property
    def rule(self) -> str:
        return (f"per metric D = (int8 - fp32 of the transformed) - (int8 - fp32 of the baseline), AP points; "
                f"{100 * self.confidence:g}% paired bootstrap percentile interval over images; pass if its lower "
                f"end > -{self.tolerance:g}, fail if its upper end < -{self.tolerance:g}, else inconclusive "
                f"(more images needed); overall: any fail fails, else any inconclusive is inconclusive")

    def to_dict(self) -> dict:
        return {"outcome": self.outcome, "exit_status": EXIT_CODES[self.outcome], "exit_codes": EXIT_CODES,
                "rule": self.rule, "tolerance_ap_points": self.tolerance,
                "method": "paired bootstrap over images (the same draw for all four arms), percentile interval",
                "replicates": self.replicates, "seed": self.seed, "rng": "numpy PCG64 (default_rng)",
                "confidence": self.confidence, "images": self.images,
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()}}


def int8_verdict(per_image: Mapping[tuple[str, str], Any], *, tolerance: float, replicates: int = DEFAULT_REPLICATES,
                 seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE) -> Int8Verdict:
    """The verdict from each arm's `PerImageMatches`, keyed ("model" | "baseline", "fp32" | "int8")."""
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence: got {confidence!r}, expected a number between 0 and 1")
    full, reps = paired_bootstrap(per_image, INT8_CONTRAST, replicates=replicates, seed=seed)
    alpha = (1.0 - confidence) / 2
    out = {}
    for j, name in enumerate(METRICS):
        vals = reps[:, j][np.isfinite(reps[:, j])]
        if not np.isfinite(full[j]):
            out[name] = MetricVerdict(estimate=float("nan"), low=float("nan"), high=float("nan"), replicates=len(vals),
                                      outcome=UNDEFINED)
            continue
        low, high = (np.quantile(vals, [alpha, 1.0 - alpha]) if len(vals) else (float("-inf"), float("inf")))
        out[name] = MetricVerdict(estimate=float(full[j]), low=float(low), high=float(high), replicates=len(vals),
                                  outcome=decide(float(low), float(high), tolerance=tolerance))
    images = len(next(iter(per_image.values())).image_ids)
    return Int8Verdict(metrics=out, tolerance=float(tolerance), replicates=int(replicates), seed=int(seed),
                       confidence=float(confidence), images=images)


def format_verdict(v: Int8Verdict) -> str:
    """The bootstrap table (D per metric, its interval, the outcome) and the overall verdict line."""
    lines = [f"D = Δ model - Δ baseline (AP points), {100 * v.confidence:g}% paired bootstrap interval over the "
             f"{v.images} images ({v.replicates} replicates, seed {v.seed}); pass: lower end > -{v.tolerance:g}, "
             f"fail: upper end < -{v.tolerance:g}"]
    for name, m in v.metrics.items():
        if m.outcome == UNDEFINED:
            lines.append(f"  {name:<5} {'n/a':>8}   (no ground truth in this size range)")
            continue
        lines.append(f"  {name:<5} {m.estimate:>+8.2f}   [{m.low:+.2f}, {m.high:+.2f}]   {m.outcome}")
    word = {PASS: "PASS", FAIL: "FAIL", INCONCLUSIVE: "INCONCLUSIVE: more images needed"}[v.outcome]
    codes = ", ".join(f"{c} {k}" for k, c in EXIT_CODES.items())
    lines.append(f"verdict: {word} (exit status {EXIT_CODES[v.outcome]}; {codes})")
    return "\n".join(lines)
