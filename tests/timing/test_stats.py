"""Latency statistics on synthetic series with known answers."""

import numpy as np
import pytest

from natsdeploy.timing.latency import time_interleaved
from natsdeploy.timing.stats import paired_ratio, summarize


def test_percentiles_and_cv():
    s = summarize(list(range(1, 101)))
    assert s.p50 == pytest.approx(50.5) and s.p90 == pytest.approx(90.1) and s.p99 == pytest.approx(99.01)
    assert s.mean == pytest.approx(50.5)
    assert s.cv == pytest.approx(np.std(np.arange(1, 101), ddof=1) / 50.5)
    assert summarize([3.0]).cv == 0.0
    with pytest.raises(ValueError):
        summarize([])


def test_paired_ratio_cancels_drift():
    # both series drift by the same factor; every pair's ratio is exactly 1.1
    drift = np.linspace(1.0, 3.0, 50)
    base = 10 * drift
    r = paired_ratio(base, 1.1 * base)
    assert r.median == pytest.approx(1.1) and r.ci_low == pytest.approx(1.1) and r.ci_high == pytest.approx(1.1)
    assert "10.0% slower" in r.verdict()
    assert "faster" in paired_ratio(base, 0.8 * base).verdict()


def test_bootstrap_interval_covers_truth():
    rng = np.random.default_rng(0)
    base = rng.normal(100, 2, 200)
    sub = base * rng.normal(1.05, 0.01, 200)
    r = paired_ratio(base, sub)
    assert r.ci_low < 1.05 < r.ci_high and r.ci_high - r.ci_low < 0.01
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


def test_interleaving_alternates_order():
    calls = []
    t = time_interleaved(lambda: calls.append("b"), lambda: calls.append("t"), pairs=4, warmup_s=0.0)
    timed = calls[2 * t.warmup_runs:]
    assert timed == ["b", "t", "t", "b", "b", "t", "t", "b"]
    assert len(t.baseline_ms) == len(t.transformed_ms) == 4


def test_fake_clock_gives_known_ratio():
    now = [0.0]

    def clock():
        return now[0]

    def step(ms):
        def fn():
            now[0] += ms / 1e3
        return fn

    t = time_interleaved(step(10), step(12), pairs=6, warmup_s=0.0, clock=clock)
    assert t.ratio.median == pytest.approx(1.2)
    assert t.baseline.p50 == pytest.approx(10) and t.transformed.p90 == pytest.approx(12)
