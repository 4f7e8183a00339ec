"""Statistics for latency series: percentiles, dispersion, paired ratios with a bootstrap interval."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Summary", "summarize", "PairedRatio", "paired_ratio"]


@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    cv: float
    """Coefficient of variation: std / mean (sample std, ddof=1)."""

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean, "cv": self.cv}


def summarize(samples: Sequence[float]) -> Summary:
    """Percentiles by linear interpolation (numpy's default)."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        raise ValueError("summarize: got no samples, expected at least one")
    mean = float(a.mean())
    cv = float(a.std(ddof=1) / mean) if a.size > 1 and mean > 0 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return Summary(int(a.size), p50, p90, p99, mean, cv)


@dataclass(frozen=True)
class PairedRatio:
    median: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "ci95": [self.ci_low, self.ci_high], "n": self.n}

    def verdict(self, subject: str = "transformed", reference: str = "baseline") -> str:
        pct = (self.median - 1.0) * 100
        word = "slower" if pct > 0 else "faster"
        ci = f"95% CI {self.ci_low:.3f}x-{self.ci_high:.3f}x"
        if abs(pct) < 0.05:
            return f"{subject} runs as fast as {reference} (ratio {self.median:.3f}x, {ci})"
        return f"{subject} is {abs(pct):.1f}% {word} than {reference} (ratio {self.median:.3f}x, {ci})"


def paired_ratio(reference: Sequence[float], subject: Sequence[float], *, n_boot: int = 2000,
                 seed: int = 0) -> PairedRatio:
    """Median of per-pair ratios subject/reference, with a percentile-bootstrap 95% interval."""
    r = np.asarray(reference, dtype=np.float64)
    s = np.asarray(subject, dtype=np.float64)
    if r.shape != s.shape or r.size == 0:
        raise ValueError(f"paired_ratio: got {r.size} and {s.size} samples, expected equal non-zero counts")
    ratios = s / r
    med = float(np.median(ratios))
    if ratios.size == 1:
        return PairedRatio(med, med, med, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, ratios.size, size=(n_boot, ratios.size))
    boots = np.median(ratios[idx], axis=1)
    lo, hi = (float(v) for v in np.percentile(boots, [2.5, 97.5]))
    return PairedRatio(med, lo, hi, int(ratios.size))
