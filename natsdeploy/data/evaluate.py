"""COCO evaluation (pycocotools COCOeval, quiet), conversion of torchvision outputs to COCO results,
ground-truth subsets, and one-to-one matching of two detectors' outputs (parity)."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from natsdeploy.errors import DatasetError, InputError

__all__ = ["METRICS", "MATCH_IOU", "TIE_IOU", "TIE_SCORE", "CocoEvaluator", "DetectionMatch", "ap_points",
           "coco_evaluate", "match_detections", "run_cocoeval", "subset_coco", "to_coco_results"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MATCH_IOU = 0.99
TIE_IOU = 0.5
"""Two detections of one class overlapping at least this much compete in NMS (torchvision's default
nms_thresh / box_nms_thresh); one survives, and a near-tie in score decides which."""
TIE_SCORE = 1e-5
"""Scores this close count as an NMS tie. Measured: fp32 backends give the same detection scores that differ
by at most 1.6e-7 (RetinaNet, AVX2 and AVX-512); a flip propagates through NMS (a survivor suppresses
its neighbours), so pairs of swapped survivors differ by up to ~6e-6. 1e-5 covers that, and stays
far below any score gap a trained detector's ranking rests on."""
"""IoU at which a runtime detection counts as the same as a PyTorch one (parity matching)."""


def ap_points(metrics: Mapping[str, float]) -> dict[str, float]:
    """pycocotools' 0-1 values as AP points (0-100), -1 (undefined) kept."""
    return {k: (round(100.0 * v, 6) if v >= 0 else -1.0) for k, v in metrics.items()}


def _empty_results(coco_gt):
    from pycocotools.coco import COCO

    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                   "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
                   "annotations": []}
    res.createIndex()
    return res


def run_cocoeval(coco_gt, detections: Sequence[Mapping[str, Any]], *, iou_type: str = "bbox") -> Any:
    """pycocotools' COCOeval of `detections` against every image of `coco_gt`, quiet, after `evaluate()`,
    `accumulate()` and `summarize()`: its `stats` are the metrics, its `evalImgs` the per-image matches
    (`natsdeploy.data.per_image_ap` re-accumulates those over resamples of the images).

    `detections` are checked (`image_id`, `category_id` known to `coco_gt`) and not modified; see
    `coco_evaluate` for the conventions.
    """
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise InputError(f"iou_type: got {iou_type!r}, expected 'bbox' or 'segm'")
    known_images, known_cats = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    dets = []
    for i, d in enumerate(detections):
        if d.get("image_id") not in known_images:
            raise DatasetError(f"detections[{i}].image_id: got {d.get('image_id')!r}, "
                               "expected an image id of the ground truth")
        if d.get("category_id") not in known_cats:
            raise DatasetError(f"detections[{i}].category_id: got {d.get('category_id')!r}, "
                               f"expected one of {sorted(known_cats)}")
        dets.append(copy.deepcopy(dict(d)))  # loadRes adds fields (area, id, segmentation) in place
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets) if dets else _empty_results(coco_gt)
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def coco_evaluate(coco_gt, detections: Sequence[Mapping[str, Any]], *, iou_type: str = "bbox") -> dict[str, float]:
    """COCO AP of `detections` against `coco_gt` (a pycocotools COCO, e.g. `CocoDetection.coco`).

    `detections`: COCO result dicts (`image_id`, `category_id`, `bbox` [x, y, w, h], `score`; plus
    `segmentation` for `iou_type="segm"`). They are not modified. Returns floats for METRICS
    (AP@[.5:.95], AP50, AP75, AP small/medium/large, maxDets=100, every image of `coco_gt`).

    A value of -1.0 means "not defined": pycocotools' convention when no ground truth falls into
    that size range (e.g. APl on a set with no object larger than 96x96 px). Empty `detections`
    give 0.0 for every metric that has ground truth (and -1.0 where it has none), like any other
    detections would; pycocotools' own `loadRes([])` cannot do this, so it is side-stepped.
    """
    ev = run_cocoeval(coco_gt, detections, iou_type=iou_type)
    return {name: float(v) for name, v in zip(METRICS, ev.stats[:6])}


def _as_list(x) -> list:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _mask_rles(masks, threshold: float) -> list[dict]:
    """Mask R-CNN soft masks (N, 1, H, W) -> COCO RLEs of `mask > threshold` (torchvision's reference: 0.5)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    m = masks.detach().cpu().numpy() if hasattr(masks, "detach") else np.asarray(masks)
    binary = np.asfortranarray((m[:, 0] > threshold).transpose(1, 2, 0).astype(np.uint8))
    rles = mask_utils.encode(binary) if len(m) else []
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")  # JSON-able, as COCO result files carry it
    return list(rles)


def to_coco_results(outputs: Sequence[Mapping[str, Any]], image_ids: Sequence[int],
                    label_to_cat_id: Mapping[int, int], *, masks: bool = False,
                    mask_threshold: float = 0.5) -> list[dict]:
    """torchvision detection outputs (`boxes` xyxy, `scores`, `labels` per image) -> COCO result dicts
    (`image_id`, `category_id`, `bbox` xywh, `score`), labels mapped through `label_to_cat_id`.

    Label 0 is background (torchvision counts it in num_classes); RetinaNet, which has no background
    suppression, can output it at low scores: such detections are dropped. `masks=True` (Mask R-CNN outputs with `masks`): each result also carries `segmentation`, the RLE
    of its mask thresholded at `mask_threshold`, for `coco_evaluate(..., iou_type="segm")`.
    """
    if len(outputs) != len(image_ids):
        raise InputError(f"outputs: got {len(outputs)} outputs for {len(image_ids)} image ids, "
                         "expected one per image id")
    results = []
    for j, (out, image_id) in enumerate(zip(outputs, image_ids)):
        boxes, scores, labels = _as_list(out["boxes"]), _as_list(out["scores"]), _as_list(out["labels"])
        if masks and "masks" not in out:
            raise InputError(f"outputs[{j}]: got keys {sorted(out)} (image {image_id}) with masks=True, "
                             "expected Mask R-CNN outputs with 'masks'")
        rles = _mask_rles(out["masks"], mask_threshold) if masks else [None] * len(boxes)
        for (x0, y0, x1, y1), score, label, rle in zip(boxes, scores, labels, rles):
            if int(label) == 0 and 0 not in label_to_cat_id:
                continue  # background: RetinaNet's head scores it like any class and can emit it; never a detection
            if int(label) not in label_to_cat_id:
                raise DatasetError(f"outputs[{j}].labels: got {label!r} (image {image_id}), "
                                   f"expected one of {sorted(label_to_cat_id)}")
            r = {"image_id": int(image_id), "category_id": int(label_to_cat_id[int(label)]),
                 "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(score)}
            if rle is not None:
                r["segmentation"] = rle
            results.append(r)
    return results


def subset_coco(coco: Any, image_ids: Sequence[int]) -> Any:
    """The ground truth restricted to `image_ids` (so a --limit run evaluates only the images it runs)."""
    from pycocotools.coco import COCO

    keep = set(image_ids)
    if keep == set(coco.getImgIds()):
        return coco
    ds = dict(coco.dataset)
    ds["images"] = [im for im in ds["images"] if im["id"] in keep]
    ds["annotations"] = [a for a in ds.get("annotations", []) if a["image_id"] in keep]
    sub = COCO()
    sub.dataset = ds
    with contextlib.redirect_stdout(io.StringIO()):
        sub.createIndex()
    return sub


@dataclass(frozen=True)
class DetectionMatch:
    """How two detectors' outputs on the same images match (reference = PyTorch)."""

    reference: int  # PyTorch detections
    runtime: int  # runtime detections
    matched: int  # PyTorch detections matched one-to-one by a same-class runtime detection at IoU >= iou
    max_score_diff: float  # over matched pairs
    iou: float = MATCH_IOU
    ties: int = 0  # unmatched PyTorch detections paired with an unmatched runtime one by an NMS tie
    tie_iou: float = TIE_IOU
    tie_score: float = TIE_SCORE
    max_box_diff: float = 0.0  # max |coordinate difference| over matched pairs, in pixels

    @property
    def share(self) -> float:
        if self.reference == 0:
            return 1.0 if self.runtime == 0 else 0.0
        return self.matched / self.reference

    @property
    def decided_share(self) -> float:
        """Matched share among the detections no NMS tie decided: parity's measure (see `match_detections`)."""
        decided = self.reference - self.ties
        return 1.0 if decided == 0 else self.matched / decided

    def to_dict(self) -> dict:
        return {"reference_detections": self.reference, "runtime_detections": self.runtime,
                "matched": self.matched, "matched_share": self.share, "iou": self.iou,
                "max_score_diff": self.max_score_diff, "max_box_diff": self.max_box_diff, "nms_ties": self.ties, "decided_share": self.decided_share,
                "tie_rule": {"iou": self.tie_iou, "score": self.tie_score}}


def match_detections(reference: Sequence[Mapping[str, Any]], runtime: Sequence[Mapping[str, Any]], *,
                     iou: float = MATCH_IOU, tie_iou: float = TIE_IOU, tie_score: float = TIE_SCORE) -> DetectionMatch:
    """Greedy one-to-one matching per image, PyTorch detections in descending score order, each to the
    unmatched runtime detection of the same label with the highest IoU (>= `iou`).

    Then NMS ties: a PyTorch detection left unmatched is paired with a still unmatched runtime
    detection of the same label that overlaps it at IoU >= `tie_iou` and scores within `tie_score`
    of it. Both cover one object, NMS kept one of two near-tied candidates, and fp32 rounding (which
    differs between backends and ISAs) chose which. They count as `ties`, not as matches: parity is
    `decided_share`, the matched share of the other detections.
    """
    import torch
    from torchvision.ops import box_iou

    total = matched = rt_total = ties = 0
    max_diff = max_box = 0.0
    for r, t in zip(reference, runtime, strict=True):
        nr, nt = len(r["boxes"]), len(t["boxes"])
        total, rt_total = total + nr, rt_total + nt
        if nr == 0 or nt == 0:
            continue
        ious = box_iou(r["boxes"].double().cpu(), t["boxes"].double().cpu())
        same = r["labels"].cpu()[:, None] == t["labels"].cpu()[None, :]
        ious = torch.where(same & ~torch.isnan(ious), ious, torch.full_like(ious, -1.0))
        used = torch.zeros(nt, dtype=torch.bool)
        rs, ts = r["scores"].double().cpu(), t["scores"].double().cpu()
        order = torch.argsort(-rs, stable=True).tolist()
        left = []
        for i in order:
            cand = ious[i].masked_fill(used, -1.0)
            j = int(torch.argmax(cand))
            if cand[j] >= iou:
                used[j] = True
                matched += 1
                max_diff = max(max_diff, abs(float(rs[i] - ts[j])))
                max_box = max(max_box, float((r["boxes"][i].double().cpu() - t["boxes"][j].double().cpu()).abs().max()))
            else:
                left.append(i)
        for i in left:
            close = (ts - rs[i]).abs() <= tie_score
            cand = ious[i].masked_fill(used | ~close, -1.0)
            j = int(torch.argmax(cand))
            if cand[j] >= tie_iou:
                used[j] = True
                ties += 1
    return DetectionMatch(reference=total, runtime=rt_total, matched=matched, max_score_diff=max_diff, iou=iou,
                          ties=ties, tie_iou=tie_iou, tie_score=tie_score, max_box_diff=max_box)


class CocoEvaluator:
    """COCO AP points (0-100) of a detector over a dataset, in detectron2's evaluator shape:
    `reset()`, then `process(inputs, outputs)` per batch, then `evaluate()`.

    `inputs`: the batch's targets (dicts with `image_id`); `outputs`: torchvision detection outputs, as
    many. With `world > 1` (DDP, each rank processing its share) `evaluate()` all-gathers the results
    first, so every rank gets the metrics over all images.
    """

    def __init__(self, coco_gt: Any, label_to_cat_id: Mapping[int, int], *, iou_type: str = "bbox",
                 world: int = 1) -> None:
        self.coco_gt = coco_gt
        self.label_to_cat_id = dict(label_to_cat_id)
        self.iou_type = iou_type
        self.world = int(world)
        self._results: list[dict] = []

    def reset(self) -> None:
        """Forget everything processed so far."""
        self._results = []

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]]) -> None:
        """Convert one batch's outputs to COCO results and keep them (no full-size masks are kept)."""
        ids = [int(t["image_id"]) for t in inputs]
        self._results += to_coco_results(outputs, ids, self.label_to_cat_id, masks=self.iou_type == "segm")

    def evaluate(self) -> dict[str, float]:
        """METRICS in AP points (0-100, -1 where undefined) over everything processed (on every rank)."""
        results = self._results
        if self.world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, results)
            results = [r for part in gathered for r in part]
            results.sort(key=lambda r: r["image_id"])  # stable: the single-process order within an image
        return ap_points(coco_evaluate(self.coco_gt, results, iou_type=self.iou_type))
