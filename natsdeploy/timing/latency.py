"""Interleaved A/B timing: warm-up by time, then pairs in alternating order so drift cancels."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from natsdeploy.timing.stats import PairedRatio, Summary, paired_ratio, summarize

__all__ = ["PairedTiming", "time_interleaved"]


@dataclass(frozen=True)
class PairedTiming:
    baseline_ms: tuple[float, ...]
    transformed_ms: tuple[float, ...]
    warmup_runs: int
    settings: dict = field(default_factory=dict)

    @property
    def baseline(self) -> Summary:
        return summarize(self.baseline_ms)

    @property
    def transformed(self) -> Summary:
        return summarize(self.transformed_ms)

    @property
    def ratio(self) -> PairedRatio:
        return paired_ratio(self.baseline_ms, self.transformed_ms)

    def to_dict(self) -> dict:
        return {"baseline_ms": self.baseline.to_dict(), "transformed_ms": self.transformed.to_dict(),
                "ratio_transformed_over_baseline": self.ratio.to_dict(), "verdict": self.ratio.verdict(),
                "pairs": len(self.baseline_ms), "warmup_runs": self.warmup_runs, **self.settings,
                "raw": {"baseline_ms": list(self.baseline_ms), "transformed_ms": list(self.transformed_ms)}}


def time_interleaved(run_baseline: Callable[[], object], run_transformed: Callable[[], object], *,
                     pairs: int = 20, warmup_s: float = 2.0, duration_s: float | None = None,
                     sync: Callable[[], None] | None = None,
                     clock: Callable[[], float] = time.perf_counter) -> PairedTiming:
    """Time pairs of runs; pair i runs baseline first when i is even, transformed first when odd.

    With `duration_s`, pairs continue until that much time has passed (at least `pairs` of them);
    otherwise exactly `pairs` are timed. `sync` (e.g. torch.cuda.synchronize) is called before
    reading the clock on both ends.
    """
    if pairs < 1:
        raise ValueError(f"pairs: got {pairs}, expected >= 1")
    sync = sync or (lambda: None)

    def timed(fn: Callable[[], object]) -> float:
        sync()
        t0 = clock()
        fn()
        sync()
        return (clock() - t0) * 1e3

    warm, t_end = 0, clock() + warmup_s
    while warm == 0 or clock() < t_end:
        timed(run_baseline)
        timed(run_transformed)
        warm += 1
    base, trans = [], []
    t_stop = clock() + duration_s if duration_s else None
    i = 0
    while i < pairs or (t_stop is not None and clock() < t_stop):
        if i % 2 == 0:
            base.append(timed(run_baseline))
            trans.append(timed(run_transformed))
        else:
            trans.append(timed(run_transformed))
            base.append(timed(run_baseline))
        i += 1
    return PairedTiming(tuple(base), tuple(trans), warm)
