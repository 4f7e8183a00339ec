"""COCO evaluation on tiny inline fixtures with answers derived by hand."""

from __future__ import annotations

import contextlib
import copy
import io

import pytest
import torch
from pycocotools.coco import COCO

from natsdeploy.data.evaluate import METRICS, CocoEvaluator, ap_points, coco_evaluate, subset_coco, to_coco_results
from natsdeploy.errors import DatasetError, InputError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools


def make_gt(annotations, images=((1, 100, 100),), categories=(1, 2)) -> COCO:
    anns = []
    for i, (image_id, cat, (x, y, w, h)) in enumerate(annotations, 1):
        anns.append({"id": i, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "area": w * h,
                     "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i, h, w in images],
                    "categories": [{"id": c, "name": f"c{c}"} for c in categories], "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# small (area < 32^2), medium (< 96^2) and large objects over two images and two categories
ALL_SIZES = [(1, 1, (0, 0, 10, 10)), (1, 2, (20, 20, 50, 40)), (2, 1, (10, 10, 150, 120)), (2, 2, (170, 170, 20, 20))]
ALL_SIZES_IMAGES = ((1, 100, 100), (2, 200, 200))


def exactly(expected):
    """The hand-derived value, up to pycocotools' guard: precision = tp / (tp + fp + np.spacing(1)),
    so a precision of 1 comes out as 1 - 2.2e-16; 1e-12 is far below any real difference (1/1010)."""
    return pytest.approx(expected, rel=0, abs=1e-12)


def perfect(gt: COCO, score=0.9):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": score}
            for a in gt.dataset["annotations"]]


def test_perfect_detections_give_1():
    gt = make_gt(ALL_SIZES, ALL_SIZES_IMAGES)
    dets = perfect(gt)
    before = copy.deepcopy(dets)
    assert coco_evaluate(gt, dets) == exactly({m: 1.0 for m in METRICS})
    assert dets == before  # loadRes's in-place additions did not reach the caller's dicts


def test_empty_detections_give_0_without_crashing():
    gt = make_gt(ALL_SIZES, ALL_SIZES_IMAGES)
    assert coco_evaluate(gt, []) == exactly({m: 0.0 for m in METRICS})


def test_empty_size_range_is_minus_1_with_or_without_detections():
    gt = make_gt([(1, 1, (0, 0, 10, 10))])
    assert coco_evaluate(gt, []) == exactly({"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0,
                                             "APm": -1.0, "APl": -1.0})
    assert coco_evaluate(gt, perfect(gt)) == exactly({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "APs": 1.0,
                                                      "APm": -1.0, "APl": -1.0})


def test_shifted_box_passes_4_of_10_iou_thresholds():
    # GT [0,0,10,10], detection shifted right by 2 px: intersection 8x10 = 80, union 200 - 80 = 120,
    # IoU = 2/3. It matches at IoU thresholds 0.50, 0.55, 0.60, 0.65 and misses 0.70 ... 0.95.
    # With a single GT, a match gives precision 1 at every one of the 101 recall points and a miss
    # gives 0 at every one, so AP = (4 * 101) / (10 * 101) = 0.4; AP50 = 1, AP75 = 0 (up to the eps of
    # `exactly`). The object is small (area 100 < 32^2), so APs = AP and APm/APl are -1 (no GT there).
    gt = make_gt([(1, 1, (0, 0, 10, 10))])
    det = [{"image_id": 1, "category_id": 1, "bbox": [2, 0, 10, 10], "score": 0.5}]
    assert coco_evaluate(gt, det) == exactly({"AP": 0.4, "AP50": 1.0, "AP75": 0.0, "APs": 0.4,
                                              "APm": -1.0, "APl": -1.0})


def test_false_positive_ranked_first_halves_precision():
    # Detections by score: a miss (precision 0/1 at recall 0), then the exact box (1/2 at recall 1).
    # pycocotools makes precision non-increasing from the right -> 0.5 at every recall point: AP = 0.5.
    gt = make_gt([(1, 1, (0, 0, 10, 10))])
    dets = [{"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8}]
    assert coco_evaluate(gt, dets)["AP"] == exactly(0.5)
    # ranked last instead, the false positive costs nothing
    dets[0]["score"] = 0.1
    assert coco_evaluate(gt, dets)["AP"] == exactly(1.0)


def test_wrong_category_is_a_miss():
    gt = make_gt([(1, 1, (0, 0, 10, 10))])
    det = {"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 1.0}
    assert coco_evaluate(gt, [det])["AP"] == exactly(0.0)


def test_segm_perfect():
    gt = make_gt(ALL_SIZES, ALL_SIZES_IMAGES)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": gt.annToRLE(a), "score": 1.0}
            for a in gt.dataset["annotations"]]
    assert coco_evaluate(gt, dets, iou_type="segm") == exactly({m: 1.0 for m in METRICS})


@pytest.mark.parametrize("det, expected", [
    ({"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0},
     r"^detections\[0\]\.image_id: got 9, expected an image id of the ground truth$"),
    ({"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0},
     r"^detections\[0\]\.category_id: got 3, expected one of \[1, 2\]$"),
])
def test_unknown_ids_raise(det, expected):
    with pytest.raises(DatasetError, match=expected):
        coco_evaluate(make_gt([(1, 1, (0, 0, 10, 10))]), [det])


def test_bad_iou_type():
    with pytest.raises(InputError, match=r"^iou_type: got 'keypoints', expected 'bbox' or 'segm'$"):
        coco_evaluate(make_gt([(1, 1, (0, 0, 10, 10))]), [], iou_type="keypoints")


def test_to_coco_results_roundtrip():
    gt = make_gt([(1, 7, (0, 0, 10, 10)), (1, 3, (20, 20, 50, 40)), (2, 7, (10, 10, 150, 120))],
                 ALL_SIZES_IMAGES, categories=(3, 7))
    label_to_cat_id = {1: 3, 2: 7}
    outputs = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 70.0, 60.0]]),
         "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([2, 1])},
        {"boxes": torch.tensor([[10.0, 10.0, 160.0, 130.0]]), "scores": torch.tensor([0.7]),
         "labels": torch.tensor([2])},
    ]
    results = to_coco_results(outputs, [1, 2], label_to_cat_id)
    assert results[1] == {"image_id": 1, "category_id": 3, "bbox": [20.0, 20.0, 50.0, 40.0],
                          "score": pytest.approx(0.8)}
    assert all(type(v) in (int, float, list) for r in results for v in r.values())
    assert coco_evaluate(gt, results) == exactly({m: 1.0 for m in METRICS})
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    assert to_coco_results([empty], [1], label_to_cat_id) == []
    with pytest.raises(InputError, match=r"^outputs: got 2 outputs for 1 image ids, expected one per image id$"):
        to_coco_results(outputs, [1], label_to_cat_id)
    with pytest.raises(DatasetError, match=r"^outputs\[0\]\.labels: got 5 \(image 1\), expected one of \[1, 2\]$"):
        to_coco_results([{**empty, "boxes": torch.zeros(1, 4), "scores": torch.ones(1),
                          "labels": torch.tensor([5])}], [1], label_to_cat_id)


def _soft_mask(h, w, box, inside=0.9, outside=0.1):
    m = torch.full((1, h, w), outside)
    x0, y0, x1, y1 = box
    m[0, y0:y1, x0:x1] = inside
    return m


def test_to_coco_results_masks_score_segm():
    """Mask R-CNN soft masks -> RLEs thresholded at 0.5: exact rectangles score segm AP 1; shifted ones less."""
    gt = make_gt([(1, 1, (10, 10, 40, 30)), (1, 2, (60, 50, 30, 40))])
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0], [60.0, 50.0, 90.0, 90.0]])
    good = [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2]),
             "masks": torch.stack([_soft_mask(100, 100, (10, 10, 50, 40)), _soft_mask(100, 100, (60, 50, 90, 90))])}]
    res = to_coco_results(good, [1], {1: 1, 2: 2}, masks=True)
    assert all(isinstance(r["segmentation"]["counts"], str) for r in res)  # JSON-able RLE
    segm = coco_evaluate(gt, res, iou_type="segm")
    assert segm["AP"] == exactly(1.0)
    # second mask shifted right by 20 px and clipped at the border: IoU 10/40 = 0.25, a miss at every threshold
    bad = [dict(good[0], masks=torch.stack([good[0]["masks"][0], _soft_mask(100, 100, (80, 50, 110, 90))]))]
    segm_bad = coco_evaluate(gt, to_coco_results(bad, [1], {1: 1, 2: 2}, masks=True), iou_type="segm")
    assert segm_bad["AP"] == exactly(0.5)  # one category perfect, the other 0
    assert coco_evaluate(gt, to_coco_results(bad, [1], {1: 1, 2: 2}))["AP"] == exactly(1.0)  # boxes untouched


def test_to_coco_results_masks_need_mask_outputs():
    out = [{"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]
    with pytest.raises(InputError, match=r"^outputs\[0\]: got keys \['boxes', 'labels', 'scores'\] \(image 1\) "
                                         r"with masks=True, expected Mask R-CNN outputs with 'masks'$"):
        to_coco_results(out, [1], {1: 1}, masks=True)


def test_to_coco_results_drops_background_label():
    """RetinaNet can emit label 0 (background) at low scores: not a detection; other unknown labels still raise."""
    out = [{"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 6.0, 6.0]]), "scores": torch.tensor([0.3, 0.2]),
            "labels": torch.tensor([0, 1])}]
    assert [r["category_id"] for r in to_coco_results(out, [1], {1: 7})] == [7]
    out[0]["labels"] = torch.tensor([4, 1])
    with pytest.raises(DatasetError, match=r"^outputs\[0\]\.labels: got 4 \(image 1\), expected one of \[1\]$"):
        to_coco_results(out, [1], {1: 7})


def test_coco_evaluator_reset_process_evaluate():
    """The evaluator gives what to_coco_results + coco_evaluate give, in AP points; reset forgets."""
    gt = make_gt([(1, 7, (0, 0, 10, 10)), (2, 7, (10, 10, 150, 120))], ALL_SIZES_IMAGES, categories=(3, 7))
    hit = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([2])}
    miss = {"boxes": torch.tensor([[50.0, 50.0, 60.0, 60.0]]), "scores": torch.tensor([0.9]),
            "labels": torch.tensor([2])}
    ev = CocoEvaluator(gt, {1: 3, 2: 7})
    ev.reset()
    ev.process([{"image_id": 1}], [hit])
    ev.process([{"image_id": 2}], [miss])
    want = coco_evaluate(gt, to_coco_results([hit, miss], [1, 2], {1: 3, 2: 7}))
    assert ev.evaluate() == {k: (round(100.0 * v, 6) if v >= 0 else -1.0) for k, v in want.items()}
    assert 0.0 < ev.evaluate()["AP"] < 100.0
    ev.reset()
    assert ev.evaluate() == ap_points(coco_evaluate(gt, []))


def test_subset_coco_keeps_only_those_images():
    gt = make_gt(ALL_SIZES, ALL_SIZES_IMAGES)
    sub = subset_coco(gt, [2])
    assert sub.getImgIds() == [2] and {a["image_id"] for a in sub.dataset["annotations"]} == {2}
    assert subset_coco(gt, [1, 2]) is gt



def test_match_detections_reports_the_largest_box_difference_of_a_match():
    """`max_box_diff`: max |coordinate difference| in pixels over matched pairs only (an unmatched box is not one)."""
    from natsdeploy.data.evaluate import match_detections

    ref = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0], [70.0, 70.0, 90.0, 90.0]]),
            "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.9, 0.8])}]
    moved = torch.tensor([[10.0, 10.0, 50.0, 60.0], [70.0, 70.0, 90.0, 90.0]]) + torch.tensor([[0, 0, 0.25, 0], [0] * 4])
    rt = [{"boxes": moved, "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.9, 0.8])}]
    m = match_detections(ref, rt)
    assert m.matched == 2 and m.max_box_diff == pytest.approx(0.25) and m.to_dict()["max_box_diff"] == m.max_box_diff
    far = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0], [0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([1, 1]),
            "scores": torch.tensor([0.9, 0.8])}]
    assert match_detections(ref, far).matched == 1 and match_detections(ref, far).max_box_diff == 0.0
