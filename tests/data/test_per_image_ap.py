"""AP re-accumulated from COCOeval's per-image matches, against pycocotools' own accumulate/summarize."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO

from natsdeploy.data.evaluate import METRICS, coco_evaluate, run_cocoeval, subset_coco
from natsdeploy.data.per_image_ap import PerImageMatches, coco_evaluate_per_image
from natsdeploy.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

CATS = (1, 3, 7)  # not contiguous: indices and ids differ


def _coco(images, annotations) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": [{"id": c, "name": f"c{c}"} for c in CATS],
                    "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def random_set(seed: int, images: int = 14):
    """Ground truth over every size range (crowds included) and detections: jittered hits, misses, wrong classes,
    false positives, scores on a 0.05 grid (ties within and across images), one image with 130 detections of one
    class (past maxDets=100), images with no ground truth or no detection."""
    rng = np.random.default_rng(seed)
    imgs, anns, dets = [], [], []
    for i in range(1, images + 1):
        imgs.append({"id": i, "file_name": f"{i}.png", "height": 256, "width": 256})
        for _ in range(int(rng.integers(0, 7)) if i != 2 else 0):
            side = float(rng.choice([12.0, 24.0, 50.0, 80.0, 120.0, 200.0]) * rng.uniform(0.8, 1.2))
            x, y = rng.uniform(0, 256 - side, 2)
            w, h = side, side * rng.uniform(0.6, 1.0)
            cat = int(rng.choice(CATS))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": int(rng.random() < 0.08)})
            if i != 3 and rng.random() < 0.8:
                jit = rng.normal(0, 0.08 * side, 4)
                dets.append({"image_id": i, "category_id": cat if rng.random() < 0.9 else int(rng.choice(CATS)),
                             "bbox": [x + jit[0], y + jit[1], max(w + jit[2], 2.0), max(h + jit[3], 2.0)],
                             "score": round(float(rng.integers(1, 20)) * 0.05, 2)})
        for _ in range(int(rng.integers(0, 4)) if i != 3 else 0):
            x, y = rng.uniform(0, 200, 2)
            dets.append({"image_id": i, "category_id": int(rng.choice(CATS)), "bbox": [x, y, *rng.uniform(5, 56, 2)],
                         "score": round(float(rng.integers(1, 20)) * 0.05, 2)})
    for j in range(130):  # image 4: many low-confidence boxes of one class, some on its objects
        x, y = rng.uniform(0, 220, 2)
        dets.append({"image_id": 4, "category_id": CATS[0], "bbox": [x, y, 30.0, 30.0],
                     "score": 0.01 + 0.001 * (j % 7)})
    return _coco(imgs, anns), dets


def duplicated(gt: COCO, dets, draws):
    """The images `draws` (indices into gt's sorted ids, with repeats) as a new set: copy j of the sorted draws gets
    id j + 1, so copies of an image sit next to each other in id order."""
    ids = sorted(gt.getImgIds())
    imgs, anns, out = [], [], []
    for new, i in enumerate(sorted(draws), 1):
        old = ids[i]
        imgs.append({**gt.imgs[old], "id": new})
        anns += [{**a, "id": len(anns) + n + 1, "image_id": new} for n, a in enumerate(gt.imgToAnns[old])]
        out += [{**d, "image_id": new} for d in dets if d["image_id"] == old]
    return _coco(imgs, anns), out


def reference_precision(ev) -> np.ndarray:
    """pycocotools' precision (T, R, K, A, M) at maxDets=100, as (A, T, R, K)."""
    return ev.eval["precision"][..., list(ev.params.maxDets).index(100)].transpose(3, 0, 1, 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_full_set_equals_pycocotools(seed):
    gt, dets = random_set(seed)
    ev = run_cocoeval(gt, dets)
    m = PerImageMatches.from_cocoeval(ev)
    assert len(m.score) > 100 and m.true_positive.any() and m.false_positive.any()
    assert np.array_equal(m.precision(), reference_precision(ev))
    assert m.metrics() == {k: float(v) for k, v in zip(METRICS, ev.stats[:6])}
    assert all(0.0 < v < 1.0 for v in m.metrics().values())  # a set where every metric is a real number
    assert np.array_equal(m.precision(np.ones(len(m.image_ids))), m.precision())


def test_subset_equals_pycocotools_on_that_subset():
    gt, dets = random_set(2)
    m = coco_evaluate_per_image(gt, dets)[1]
    ids = sorted(gt.getImgIds())
    for keep in ([0, 1, 3, 4, 9, 12], [5], [1, 2]):  # [1, 2]: no ground truth in image 2 at all
        sub_ids = [ids[i] for i in keep]
        sub_dets = [d for d in dets if d["image_id"] in sub_ids]
        counts = np.bincount(keep, minlength=len(ids))
        ev = run_cocoeval(subset_coco(gt, sub_ids), sub_dets)
        assert np.array_equal(m.precision(counts), reference_precision(ev))
        assert m.metrics(counts) == coco_evaluate(subset_coco(gt, sub_ids), sub_dets)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_resample_with_repeats_equals_pycocotools_on_the_copies(seed):
    """An image drawn c times counts as c copies (ties between equal scores ranked as pycocotools ranks copies)."""
    gt, dets = random_set(seed, images=10)
    metrics, m = coco_evaluate_per_image(gt, dets)
    assert metrics == coco_evaluate(gt, dets)
    draws = np.random.default_rng(seed).integers(0, 10, 10)
    assert np.bincount(draws).max() >= 2
    gt2, dets2 = duplicated(gt, dets, draws)
    ev = run_cocoeval(gt2, dets2)
    counts = np.bincount(draws, minlength=10)
    assert np.array_equal(m.precision(counts), reference_precision(ev))
    assert m.metrics(counts) == {k: float(v) for k, v in zip(METRICS, ev.stats[:6])}


def test_undefined_and_empty_cases_match_pycocotools():
    """A size range with no ground truth is -1; a set with no detections is 0 where ground truth exists."""
    gt, dets = random_set(6, images=6)
    small = [a["id"] for a in gt.dataset["annotations"] if a["area"] < 32 ** 2]
    gt_no_small = _coco(gt.dataset["images"], [a for a in gt.dataset["annotations"] if a["id"] not in small])
    for g, d in ((gt_no_small, dets), (gt, [])):
        metrics, m = coco_evaluate_per_image(g, d)
        assert m.metrics() == metrics
    assert coco_evaluate_per_image(gt_no_small, dets)[0]["APs"] == -1.0
    _, m = coco_evaluate_per_image(gt, dets)
    assert m.metrics(np.zeros(6, dtype=int)) == {k: -1.0 for k in METRICS}  # nothing drawn: nothing defined


def test_bad_counts_and_cocoeval_raise():
    gt, dets = random_set(7, images=4)
    ev = run_cocoeval(gt, dets)
    m = PerImageMatches.from_cocoeval(ev)
    with pytest.raises(InputError, match=r"^counts: got shape \(3,\) .*expected 4 non-negative integers"):
        m.precision([1, 1, 1])
    with pytest.raises(InputError, match=r"^counts: got shape \(4,\) \(min -1\)"):
        m.precision([1, -1, 1, 1])
    from pycocotools.cocoeval import COCOeval

    with pytest.raises(InputError, match=r"^ev.evalImgs: got defaultdict, expected the list a COCOeval's evaluate"):
        PerImageMatches.from_cocoeval(COCOeval(gt, gt, iouType="bbox"))
    ev.params.maxDets = [1, 10, 50]
    with pytest.raises(InputError, match=r"^ev.params: got useCats=1, maxDets=\[1, 10, 50\]"):
        PerImageMatches.from_cocoeval(ev)
