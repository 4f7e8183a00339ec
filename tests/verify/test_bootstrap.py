"""The int8 AP verdict: a paired bootstrap over images, on pycocotools per-image matches of constructed detectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from natsdeploy.data.evaluate import METRICS
from natsdeploy.errors import InputError
from natsdeploy.verify.bootstrap import (EXIT_CODES, FAIL, INCONCLUSIVE, INT8_CONTRAST, PASS, UNDEFINED, decide,
                                         format_verdict, int8_verdict, paired_bootstrap, resample_counts)
from tests.helpers import int8_arms

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

MODEL_INT8, BASE_INT8 = ("model", "int8"), ("baseline", "int8")


def matches(arms):
    return {k: m for k, (_, m) in arms.items()}


def test_resample_counts_are_seeded_draws_of_every_image_count():
    c = resample_counts(7, replicates=500, seed=3)
    assert c.shape == (500, 7) and (c >= 0).all() and (c.sum(axis=1) == 7).all()
    assert np.array_equal(c, resample_counts(7, replicates=500, seed=3))
    assert not np.array_equal(c, resample_counts(7, replicates=500, seed=4))
    assert (c == 0).any() and (c >= 2).any()  # with replacement: some images left out, some drawn twice
    assert abs(c.mean(axis=0) - 1.0).max() < 0.2  # each image drawn once on average (500 x 7 draws)


@pytest.mark.parametrize("low, high, tol, expected", [
    (-0.4, 1.0, 0.5, PASS), (-0.5, 0.0, 0.5, PASS),  # the lower end at -tolerance: the loss stays within it
    (-2.0, -0.6, 0.5, FAIL), (-0.6, 0.2, 0.5, INCONCLUSIVE), (-1.0, -0.5, 0.5, INCONCLUSIVE),
    (0.0, 0.0, 0.0, PASS), (-1e-3, 0.0, 0.0, INCONCLUSIVE), (-3.0, -1e-3, 0.0, FAIL),
])
def test_decide_is_one_sided_against_extra_loss(low, high, tol, expected):
    assert decide(low, high, tolerance=tol) == expected


def test_bootstrap_is_paired_and_matches_each_arm_resampled():
    """Both backbones lose the same image to int8 and fp32 loses another: Δ model = Δ baseline in every resample
    only when every arm sees the same draw; each replicate is the contrast of the arms' AP on that draw."""
    arms = int8_arms(images=12, missed={MODEL_INT8: [0], BASE_INT8: [0], ("model", "fp32"): [4],
                                        ("baseline", "fp32"): [4]})
    m = matches(arms)
    full, reps = paired_bootstrap(m, INT8_CONTRAST, replicates=50, seed=1)
    assert reps.shape == (50, len(METRICS)) and np.array_equal(full, np.zeros(len(METRICS)))
    assert np.isfinite(reps[:, :3]).all()  # AP, AP50, AP75: every draw has ground truth
    assert ((reps == 0) | np.isnan(reps)).all()  # APs/m/l: NaN where a draw holds no object of that size
    # one side alone varies: the same draws (seed 1) give model int8 - baseline int8 = 0, model int8 - fp32 != 0
    one = {MODEL_INT8: 1.0, ("model", "fp32"): -1.0}
    _, reps_one = paired_bootstrap(m, one, replicates=50, seed=1)
    counts = resample_counts(12, replicates=50, seed=1)
    for b in (0, 17, 49):
        ap = {k: m[k].metrics(counts[b])["AP"] for k in one}
        assert reps_one[b, 0] == pytest.approx(100 * (ap[MODEL_INT8] - ap["model", "fp32"]), abs=1e-9)
    assert np.ptp(reps_one[:, 0]) > 1.0  # AP differences that move with the draw


def test_pass_when_both_backbones_lose_alike():
    arms = int8_arms(images=12, missed={MODEL_INT8: [0], BASE_INT8: [0]})
    v = int8_verdict(matches(arms), tolerance=0.5, replicates=200, seed=0)
    assert v.outcome == PASS and all(m.outcome == PASS for m in v.metrics.values())
    assert all(m.low == m.high == m.estimate == 0.0 for m in v.metrics.values())
    assert arms[MODEL_INT8][0]["AP"] < arms["model", "fp32"][0]["AP"]  # int8 did lose, as much for both


def test_fail_when_the_transformed_backbone_loses_a_third_of_its_objects():
    arms = int8_arms(images=30, missed={MODEL_INT8: range(0, 30, 3)})  # every small object
    v = int8_verdict(matches(arms), tolerance=0.5, replicates=200, seed=0)
    assert v.outcome == FAIL
    assert [v.metrics[k].outcome for k in METRICS] == [FAIL, FAIL, FAIL, FAIL, FAIL, PASS]  # large ones all found
    ap = v.metrics["AP"]
    assert ap.low <= ap.estimate <= ap.high < -0.5 and ap.replicates == 200
    want = 100 * ((arms[MODEL_INT8][0]["AP"] - arms["model", "fp32"][0]["AP"])
                  - (arms[BASE_INT8][0]["AP"] - arms["baseline", "fp32"][0]["AP"]))
    assert ap.estimate == pytest.approx(want, abs=1e-9)  # D on all images, from pycocotools' own accumulate


def test_inconclusive_until_more_images_decide():
    """One object in 30 lost: D ~ -7 AP, but a resample may hold no copy of that image: the interval reaches 0,
    so at tolerance 1 the images cannot tell. Five times the images at the same loss rate fail."""
    few_arms = matches(int8_arms(images=30, missed={MODEL_INT8: [0]}))
    few = int8_verdict(few_arms, tolerance=1.0, replicates=200, seed=0)
    assert few.outcome == INCONCLUSIVE and few.metrics["AP"].outcome == INCONCLUSIVE
    assert few.metrics["AP"].low < -1.0 <= few.metrics["AP"].high
    assert few.metrics["APl"].outcome == PASS  # the lost object was small: large ones untouched
    assert EXIT_CODES == {"pass": 0, "fail": 1, "bad input": 2, "inconclusive": 3}
    assert format_verdict(few).splitlines()[-1] == ("verdict: INCONCLUSIVE: more images needed (exit status 3; "
                                                   "0 pass, 1 fail, 2 bad input, 3 inconclusive)")
    assert int8_verdict(few_arms, tolerance=50.0, replicates=200, seed=0).outcome == PASS  # a tolerance it clears
    many = int8_verdict(matches(int8_arms(images=150, missed={MODEL_INT8: range(0, 150, 30)})), tolerance=1.0,
                        replicates=200, seed=0)
    assert many.outcome == FAIL and many.metrics["AP"].high < -1.0
    assert many.metrics["AP"].estimate == pytest.approx(few.metrics["AP"].estimate, abs=1e-9)
    assert many.metrics["AP"].high - many.metrics["AP"].low < few.metrics["AP"].high - few.metrics["AP"].low


def test_undefined_metric_takes_no_part_and_report_fields():
    """Two images (a small and a medium object): APl is undefined (-1) and takes no part; the report says what
    was drawn how."""
    arms = int8_arms(images=2, missed={})
    v = int8_verdict(matches(arms), tolerance=0.5, replicates=100, seed=7, confidence=0.9)
    assert v.metrics["APl"].outcome == UNDEFINED and v.outcome == PASS
    d = json.loads(json.dumps(v.to_dict()))  # JSON-able
    assert d["outcome"] == PASS and d["exit_status"] == 0 and d["exit_codes"] == EXIT_CODES
    assert (d["replicates"], d["seed"], d["confidence"], d["images"]) == (100, 7, 0.9, 2)
    assert d["metrics"]["APl"] == {"estimate": None, "low": None, "high": None, "replicates_defined": 0,
                                   "outcome": UNDEFINED}
    # APs is defined only in resamples that drew the small object's image
    assert 0 < d["metrics"]["APs"]["replicates_defined"] < 100
    text = format_verdict(v)
    assert "90% paired bootstrap interval over the 2 images (100 replicates, seed 7)" in text
    assert "verdict: PASS (exit status 0;" in text and "APl" in text and "n/a" in text


def test_seed_decides_the_draws():
    m = matches(int8_arms(images=30, missed={MODEL_INT8: [0, 1]}))
    a, b = (int8_verdict(m, tolerance=0.5, replicates=50, seed=0) for _ in range(2))
    assert a.to_dict() == b.to_dict()
    reps = [paired_bootstrap(m, INT8_CONTRAST, replicates=50, seed=s)[1] for s in (0, 1)]
    assert not np.array_equal(reps[0], reps[1])


def test_bad_inputs_raise_one_line():
    m = matches(int8_arms(images=3))
    other = matches(int8_arms(images=4))
    with pytest.raises(InputError, match=r"^arms: got different image ids between arms, expected the same images"):
        paired_bootstrap({**m, MODEL_INT8: other[MODEL_INT8]}, INT8_CONTRAST, replicates=10, seed=0)
    with pytest.raises(InputError, match=r"^arms: got .*expected also \[\('baseline', 'int8'\)\]$"):
        paired_bootstrap({k: v for k, v in m.items() if k != BASE_INT8}, INT8_CONTRAST, replicates=10, seed=0)
    with pytest.raises(InputError, match=r"^confidence: got 1.5, expected a number between 0 and 1$"):
        int8_verdict(m, tolerance=0.5, replicates=10, confidence=1.5)
    with pytest.raises(InputError, match=r"^images, replicates: got 3, 0, expected at least 1 each$"):
        resample_counts(3, replicates=0, seed=0)
