"""COCO box/mask AP of any multiset of images from one COCOeval `evaluate()`: its per-image matches as arrays,
re-accumulated without running COCOeval again (what a bootstrap over images needs: one evaluate per
detector, then a cheap AP per resample).

`PerImageMatches.from_cocoeval(ev)` reads `ev.evalImgs` (per category, area range and image: the
detections' scores, which ground truth each matched at each IoU threshold, which are ignored) into flat
arrays. `PerImageMatches.metrics(counts)` is pycocotools' `COCOeval.accumulate` + `summarize` for the six
AP metrics (maxDets=100) over the images drawn `counts[i]` times each, vectorised: one ranking of all
detections per category, cumulative true/false positives, precision's monotone envelope at the 101
recall thresholds, the mean over (IoU, recall, category) where a category has ground truth. With every
count 1 it equals pycocotools on the full set; with a 0/1 count it equals pycocotools on that subset;
an image drawn c times counts as c copies of it listed next to each other (exactly what pycocotools
gives when the copies are new images whose ids sort right after the original's). Tested against
pycocotools' own accumulate/summarize (tests/data/test_per_image_ap.py), equal bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from natsdeploy.data.evaluate import METRICS, run_cocoeval
from natsdeploy.errors import InputError

__all__ = ["AREAS", "PerImageMatches", "coco_evaluate_per_image"]

AREAS = ("all", "small", "medium", "large")
"""pycocotools' default area ranges, in its order; APs/APm/APl read the last three."""
MAX_DETS = 100


@dataclass(frozen=True, eq=False)
class PerImageMatches:
    """One detector's per-image COCO matches: every detection (top 100 per image and category) in
    pycocotools' ranking on the full set (category, then score descending, ties by image then rank in it)."""

    image_ids: np.ndarray  # (I,) the images, as COCOeval lists them (sorted)
    category_ids: np.ndarray  # (K,)
    iou_thresholds: np.ndarray  # (T,)
    recall_thresholds: np.ndarray  # (R,)
    category: np.ndarray  # (N,) category index of each detection
    image: np.ndarray  # (N,) image index of each detection
    score: np.ndarray  # (N,)
    true_positive: np.ndarray  # (A, T, N) bool: matched a ground truth that counts (not ignored)
    false_positive: np.ndarray  # (A, T, N) bool: matched none and is not ignored
    ground_truth: np.ndarray  # (A, K, I) int: ground truths that count, per area range, category, image

    @classmethod
    def from_cocoeval(cls, ev: Any) -> PerImageMatches:
        """Read an evaluated pycocotools `COCOeval` (default bbox/segm parameters, categories used)."""
        p = ev.params
        if not isinstance(getattr(ev, "evalImgs", None), list):  # COCOeval() starts it as a defaultdict
            raise InputError(f"ev.evalImgs: got {type(getattr(ev, 'evalImgs', None)).__name__}, expected the list "
                             "a COCOeval's evaluate() leaves")
        if p.useCats != 1 or list(p.maxDets)[-1] != MAX_DETS or list(p.areaRngLbl) != list(AREAS):
            raise InputError(f"ev.params: got useCats={p.useCats}, maxDets={list(p.maxDets)}, "
                             f"areas={list(p.areaRngLbl)}; expected pycocotools' defaults (useCats=1, "
                             f"maxDets ending in {MAX_DETS}, areas {list(AREAS)})")
        imgs, cats = list(p.imgIds), list(p.catIds)
        n_i, n_k, n_a, n_t = len(imgs), len(cats), len(AREAS), len(p.iouThrs)
        gt = np.zeros((n_a, n_k, n_i), dtype=np.int64)
        parts: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]] = []  # (k, i, scores, tp, fp)
        for k in range(n_k):
            for i in range(n_i):
                per_area = [ev.evalImgs[(k * n_a + a) * n_i + i] for a in range(n_a)]
                if per_area[0] is None:  # no ground truth and no detection of this category in this image
                    continue
                scores = np.asarray(per_area[0]["dtScores"], dtype=np.float64)
                tp = np.zeros((n_a, n_t, len(scores)), dtype=bool)
                fp = np.zeros_like(tp)
                for a, e in enumerate(per_area):
                    matched = np.asarray(e["dtMatches"]).astype(bool)
                    ignored = np.asarray(e["dtIgnore"]).astype(bool)
                    tp[a], fp[a] = matched & ~ignored, ~matched & ~ignored  # as COCOeval.accumulate
                    gt[a, k, i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
                parts.append((k, i, scores, tp, fp))
        return cls._ranked(parts, gt=gt, imgs=imgs, cats=cats, iou=p.iouThrs, rec=p.recThrs)

    @classmethod
    def _ranked(cls, parts, *, gt, imgs, cats, iou, rec) -> PerImageMatches:
        """Concatenate per category in image order and rank by score (stable, as COCOeval's mergesort)."""
        n_a, n_t = gt.shape[0], len(iou)
        cat = np.array([k for k, _, s, _, _ in parts for _ in s], dtype=np.int64)
        img = np.array([i for _, i, s, _, _ in parts for _ in s], dtype=np.int64)
        score = np.concatenate([s for *_, s, _, _ in parts]) if parts else np.zeros(0)
        tp = np.concatenate([t for *_, t, _ in parts], axis=2) if parts else np.zeros((n_a, n_t, 0), dtype=bool)
        fp = np.concatenate([f for *_, f in parts], axis=2) if parts else np.zeros((n_a, n_t, 0), dtype=bool)
        order = np.lexsort((-score, cat))  # stable: equal scores keep the image order
        return cls(image_ids=np.asarray(imgs), category_ids=np.asarray(cats),
                   iou_thresholds=np.asarray(iou, dtype=float), recall_thresholds=np.asarray(rec, dtype=float),
                   category=cat[order], image=img[order], score=score[order], true_positive=tp[:, :, order],
                   false_positive=fp[:, :, order], ground_truth=gt)

    @cached_property
    def _runs(self) -> tuple[np.ndarray, np.ndarray]:
        """Starts and lengths of the ranking's runs of one category, image and score (a tie within an image)."""
        n = len(self.score)
        new = np.ones(n, dtype=bool)
        new[1:] = ((self.category[1:] != self.category[:-1]) | (self.image[1:] != self.image[:-1])
                   | (self.score[1:] != self.score[:-1]))
        start = np.flatnonzero(new)
        return start, np.diff(np.append(start, n))

    @cached_property
    def _candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """Detections that are a true positive somewhere or change status with the IoU threshold (few: they
        overlap a ground truth), and, for all others, whether they are a false positive in each area (A, N)."""
        tp, fp = self.true_positive, self.false_positive
        varies = (tp != tp[:, :1]).any(axis=(0, 1)) | (fp != fp[:, :1]).any(axis=(0, 1))
        cand = tp.any(axis=(0, 1)) | varies
        return cand, fp[:, 0, :] & ~cand

    def _expanded(self, counts: np.ndarray) -> np.ndarray:
        """Detection indices of the resample in ranking order: a run of detections of one category, image
        and score (a tie) is repeated as a whole per copy of its image, as pycocotools ranks copies."""
        start, length = self._runs
        runs = np.repeat(np.arange(len(start)), counts[self.image[start]])
        if np.all(length == 1):
            return start[runs]
        lens = length[runs]
        first = np.cumsum(lens) - lens
        return np.repeat(start[runs], lens) + np.arange(int(lens.sum())) - np.repeat(first, lens)

    def _needed(self, gt: np.ndarray) -> np.ndarray:
        """(*gt.shape, R): the fewest true positives c with float(c / gt) >= each recall threshold (pycocotools
        compares recall = tp / npig in floating point; the first rank with tp >= c is where it searches)."""
        n = np.where(gt > 0, gt, 1).astype(np.float64)[..., None]
        thr = self.recall_thresholds
        c = np.clip(np.ceil(thr * n), 0, n)
        for _ in range(4):  # at most one step either way in practice
            down = (c > 0) & ((c - 1) / n >= thr)
            up = (c / n < thr) & (c < n)
            if not (down.any() or up.any()):
                break
            c = c - down + up
        return c.astype(np.int64)

    def precision(self, counts: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Interpolated precision (A, T, R, K) at maxDets=100 over the images drawn `counts[i]` times
        (None: each once), -1 where a category has no ground truth: `COCOeval.eval['precision']`'s values
        for maxDets=100, area first.

        pycocotools ranks the detections, takes precision tp / (tp + fp) at every rank, its running maximum
        from the last rank back, and reads it at the first rank where recall reaches each threshold. Precision
        rises only at a true positive, so only true positives are visited here: the j-th true positive of a
        category (fp false positives ranked above it) has precision j / (fp + j), and the value at a recall
        threshold needing c true positives is the maximum over the j >= c (0 where fewer are found).
        """
        w = np.ones(len(self.image_ids), dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
        if w.shape != self.image_ids.shape or (w < 0).any():
            raise InputError(f"counts: got shape {w.shape} (min {w.min() if w.size else 0}), "
                             f"expected {len(self.image_ids)} non-negative integers, one per image")
        n_a, n_k = self.ground_truth.shape[:2]
        n_t, n_r = len(self.iou_thresholds), len(self.recall_thresholds)
        rows = n_a * n_t
        idx = self._expanded(w)
        cat = self.category[idx]
        seg_start = np.cumsum(np.bincount(cat, minlength=n_k)) - np.bincount(cat, minlength=n_k)
        cand, base_fp = self._candidates
        pos = np.flatnonzero(cand[idx])  # ranks of the candidates in the resample
        det, ccat = idx[pos], cat[pos]
        # false positives among the other detections ranked above each candidate, within its category
        base = np.cumsum(base_fp[:, idx], axis=1)
        base = np.concatenate([np.zeros((n_a, 1), dtype=base.dtype), base], axis=1)
        base_above = np.repeat(base[:, pos + 1] - base[:, seg_start[ccat]], n_t, axis=0)  # (rows, C)
        ctp = self.true_positive[:, :, det].reshape(rows, len(det))
        cfp = self.false_positive[:, :, det].reshape(rows, len(det))
        c_len = np.bincount(ccat, minlength=n_k)
        c_first = np.cumsum(c_len) - c_len

        def within(x: np.ndarray) -> np.ndarray:  # cumulative count within each category's candidates
            cs = np.concatenate([np.zeros((rows, 1), dtype=np.int64), np.cumsum(x, axis=1)], axis=1)
            return cs[:, 1:] - np.repeat(cs[:, c_first], c_len, axis=1)

        tp_n, fp_n = within(ctp), within(cfp) + base_above
        ev_row, ev_c = np.nonzero(ctp)  # the true positives, by row (area, IoU), category, rank
        tp = tp_n[ev_row, ev_c].astype(np.float64)
        fp = fp_n[ev_row, ev_c].astype(np.float64)
        pr = tp / (fp + tp + np.spacing(1))  # as COCOeval.accumulate, operation for operation
        seg = ev_row * n_k + ccat[ev_c]
        found = np.bincount(seg, minlength=rows * n_k)
        first = np.cumsum(found) - found
        best = _segment_suffix_max(pr, seg, rows * n_k)
        gt = self.ground_truth @ w  # (A, K)
        sizes, which = np.unique(gt, return_inverse=True)
        need = np.maximum(self._needed(sizes)[which.reshape(gt.shape)], 1).transpose(0, 2, 1)[:, None]  # (A, 1, R, K)
        found, first = found.reshape(n_a, n_t, 1, n_k), first.reshape(n_a, n_t, 1, n_k)
        # an index into best + [0: recall never reached, -1: no ground truth], in COCOeval's (T, R, K) layout per area
        # (a category without ground truth has no true positive, so it always takes the default)
        default = np.where(gt > 0, len(best), len(best) + 1)[:, None, None, :]
        out = np.append(best, [0.0, -1.0])[np.where(need <= found, first + need - 1, default)]
        return out

    def metrics(self, counts: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
        """METRICS (0-1, -1 where undefined) over the images drawn `counts[i]` times: `coco_evaluate`'s values
        (pycocotools' summarize: the mean over IoU, recall and the categories that have ground truth)."""
        pr = self.precision(counts)
        t50, t75 = (np.where(self.iou_thresholds == v)[0] for v in (0.5, 0.75))
        parts = [pr[0], pr[0][t50], pr[0][t75], pr[1], pr[2], pr[3]]
        return {name: _mean_defined(s) for name, s in zip(METRICS, parts)}


def _segment_suffix_max(values: np.ndarray, segment: np.ndarray, segments: int) -> np.ndarray:
    """Maximum of `values[i:]` within i's segment (`segment` non-decreasing), exactly: on integer ranks, the
    segments offset so that a later one never reaches back into an earlier one."""
    if len(values) == 0:
        return values
    uniq, rank = np.unique(values, return_inverse=True)
    offset = (segments - 1 - segment) * len(uniq)
    return uniq[np.maximum.accumulate((offset + rank)[::-1])[::-1] - offset]


def _mean_defined(s: np.ndarray) -> float:
    v = s[s > -1]
    return -1.0 if v.size == 0 else float(np.mean(v))


def coco_evaluate_per_image(coco_gt: Any, detections: Sequence[Mapping[str, Any]], *,
                            iou_type: str = "bbox") -> tuple[dict[str, float], PerImageMatches]:
    """`coco_evaluate`'s metrics (pycocotools' own accumulate) and the per-image matches of the same
    `evaluate()`, for AP over resamples of the images."""
    ev = run_cocoeval(coco_gt, detections, iou_type=iou_type)
    return {name: float(v) for name, v in zip(METRICS, ev.stats[:6])}, PerImageMatches.from_cocoeval(ev)
