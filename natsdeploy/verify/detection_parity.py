"""Detector-level parity: COCO AP with the PyTorch backbone vs the exported backbone on a runtime.

The trained detector (from `natsdeploy train`'s checkpoint) runs on the val split twice with the
same transform, FPN, heads, score thresholds and NMS: once as trained, once with
`detector.backbone.body` swapped for a `RuntimeBody` that feeds the (already normalised, padded)
batch tensor to the exported backbone (ONNX Runtime, or a TensorRT engine) and returns the same
OrderedDict of feature maps. The exported graph is built from the detector's own backbone weights:
`build_backbone(arch)` with the `backbone.body.*` weights loaded (FrozenBatchNorm2d buffers ->
BatchNorm2d), then the exporter's fold + rewrites + `trunk_to_onnx(dynamic=True)`.

With `whole=True` (`--whole`, ONNX Runtime) the runtime side is instead the whole detector exported
as one ONNX graph (transform, backbone, FPN, heads, NMS; `export_whole_detector`), run per image.

The stages live where they belong: the trunk in `natsdeploy.models.trunk`, the exports in
`natsdeploy.export.detector`, the runners (`natsdeploy.runners.create`) and the runtime body
(`natsdeploy.runners.detector`) in `natsdeploy.runners`, the checkpoint opened for evaluation in
`natsdeploy.models.trained`, matching and COCO subsets in `natsdeploy.data.evaluate`, the CLI in
`natsdeploy.verify.cli`.

Reported: the six COCO metrics of both runs (AP points, 0-100) and their differences; the share
of PyTorch detections matched by a runtime detection of the same class at IoU >= 0.99 and the max
score difference over matches; the backbone feature parity on a seeded input (the one comparator,
`natsdeploy.verify.parity.compare`). Verdict: |runtime - PyTorch| <= tolerance AP points for each
of the six metrics (default 0.1 for fp32, 0.5 for fp16).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from natsdeploy.data.evaluate import DetectionMatch, match_detections
from natsdeploy.errors import UsageError
from natsdeploy.models.trained import check_same_arch, open_for_evaluation

__all__ = ["DEFAULT_AP_TOLERANCE", "DetectionParityResult", "detection_parity", "format_detection_parity",
           "check_same_arch"]

DEFAULT_AP_TOLERANCE = {"fp32": 0.1, "fp16": 0.5}
"""Default bound on |runtime AP - PyTorch AP| in AP points (0-100 scale), per metric, by precision."""
FORMAT = "natsdeploy-detection-parity/1"


@dataclass(kw_only=True)
class DetectionParityResult:
    """Both runs' COCO metrics, their matching and the backbone feature parity; built from keywords."""

    reference: dict[str, float]
    runtime: dict[str, float]
    tolerance: float
    match: DetectionMatch
    images: int
    backend: str
    precision: str
    runtime_calls: int
    features: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    segm_reference: dict[str, float] | None = None  # Mask R-CNN: mask AP rows as well
    segm_runtime: dict[str, float] | None = None

    @property
    def delta(self) -> dict[str, float]:
        return {k: self.runtime[k] - self.reference[k] for k in self.reference}

    @property
    def segm_delta(self) -> dict[str, float] | None:
        if self.segm_reference is None or self.segm_runtime is None:
            return None
        return {k: self.segm_runtime[k] - self.segm_reference[k] for k in self.segm_reference}

    @property
    def passed(self) -> bool:
        deltas = list(self.delta.values()) + list((self.segm_delta or {}).values())
        return all(math.isfinite(d) and abs(d) <= self.tolerance + 1e-9 for d in deltas)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "passed": self.passed, "backend": self.backend, "precision": self.precision,
                "images": self.images, "runtime_calls": self.runtime_calls,
                "metric_scale": "AP points (0-100); -1 = undefined (no ground truth in that size range)",
                "tolerance_ap_points": self.tolerance, "pytorch": self.reference, "runtime": self.runtime,
                "delta": self.delta,
                **({"segm": {"pytorch": self.segm_reference, "runtime": self.segm_runtime, "delta": self.segm_delta}}
                   if self.segm_delta is not None else {}),
                "matching": self.match.to_dict(), "backbone_features": self.features, **self.info}


def _tensorrt_or_exit():
    from natsdeploy.export.tensorrt import require_trt_runtime

    return require_trt_runtime(field="--backend trt")


def _check_options(backend: str, fp16: bool, whole: bool) -> None:
    if backend not in ("ort", "openvino", "trt"):
        raise UsageError(f"--backend: got {backend!r}, expected 'ort', 'openvino' or 'trt'")
    if whole and backend != "ort":
        raise UsageError(f"--whole: got it with --backend {backend}, expected --backend ort (the whole detector's "
                         "NMS, RoIAlign and TopK need TensorRT plugins; for TensorRT compare the backbone)")
    if fp16 and backend != "trt":
        raise UsageError(f"--fp16: got it with --backend {backend}, expected --backend trt (fp16 applies to TensorRT "
                         "engines)")
    if backend == "trt":
        _tensorrt_or_exit()


def _pad32(v: int) -> int:
    return int(math.ceil(v / 32) * 32)


def _backbone_runner(backend: str, onnx_path: Path, tmp: Path, *, shape: tuple[int, ...], max_side: int,
                     fp16: bool, threads: int | None) -> tuple[Any, str]:
    """The exported backbone on `backend` (made by `runners.create`), and what ran it in one line for the report."""
    from natsdeploy.runners import create, describe_line

    model: Any = onnx_path
    options: dict[str, Any] = {"threads": threads or os.cpu_count()}
    if backend == "openvino":
        options["precision"] = "f32"
    elif backend == "trt":
        from natsdeploy.export.tensorrt import build_engine

        model = build_engine(onnx_path, tmp / "backbone.engine", fp16=fp16, dynamic=True,
                             input_shape=shape, max_shape=(1, 3, max_side, max_side))
        options = {"precision": "fp16" if fp16 else "fp32"}
    runner = create(backend, model, **options)
    return runner, describe_line(runner)


def _feature_parity(body: Any, runner: Any, *, shape: tuple[int, ...], device: str, precision: str) -> dict:
    """The backbone alone on a seeded input at the largest padded size vs PyTorch (the one comparator)."""
    import torch

    from natsdeploy.runners.detector import feature_name
    from natsdeploy.verify.parity import DEFAULT_TOLERANCE, compare

    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    with torch.no_grad():
        ref_feats = body(torch.from_numpy(x).to(device))
    got_feats = runner.run({"images": x})
    ref_np = {feature_name(layer): ref_feats[name].float().cpu().numpy() for layer, name in body.return_layers.items()}
    return compare({k: got_feats[k] for k in ref_np}, ref_np, tolerance=DEFAULT_TOLERANCE[precision]).to_dict()


def detection_parity(arch, checkpoint: str | os.PathLike, data: str = "synthetic", *, backend: str = "ort",
                     fp16: bool = False, limit: int | None = None, tolerance: float | None = None,
                     threads: int | None = None, whole: bool = False, log=print) -> DetectionParityResult:
    """Run the checkpoint's detector on the val split with the PyTorch and the exported backbone.

    `whole=True` (ONNX Runtime only): the runtime side is the whole detector exported as one graph
    (`export_whole_detector`) instead of the backbone under the PyTorch neck and heads.
    """
    import torch

    from natsdeploy.data.evaluate import ap_points, coco_evaluate, subset_coco, to_coco_results
    from natsdeploy.export.detector import export_detector_backbone, export_whole_detector
    from natsdeploy.runners import create
    from natsdeploy.runners.detector import RuntimeBody

    _check_options(backend, fp16, whole)
    precision = "fp16" if fp16 else "fp32"
    tol = float(DEFAULT_AP_TOLERANCE[precision] if tolerance is None else tolerance)

    checkpoint = str(checkpoint)
    device = "cuda" if backend == "trt" and torch.cuda.is_available() else "cpu"
    setup = open_for_evaluation(checkpoint, arch, data, device=device)
    detector, meta, dataset = setup.detector, setup.meta, setup.dataset
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    image_ids = dataset.ids[:n]
    body = detector.backbone.body
    return_layers = dict(body.return_layers)

    shape = (1, 3, _pad32(meta["min_size"]), _pad32(meta["max_size"]))
    with tempfile.TemporaryDirectory(prefix="natsdeploy-parity-") as tmp:
        onnx_path = export_detector_backbone(detector, arch, Path(tmp) / "backbone.onnx", input_shape=shape)
        runner, runtime_name = _backbone_runner(backend, onnx_path, Path(tmp), shape=shape,
                                                max_side=_pad32(meta["max_size"]), fp16=fp16, threads=threads)
        log(f"exported the checkpoint's backbone ({arch.backbone}, {len(arch.convs)} transformed convs) to ONNX "
            f"with dynamic shapes; runtime: {runtime_name}")
        features = _feature_parity(body, runner, shape=shape, device=device, precision=precision)

        swapped = RuntimeBody(runner, return_layers)
        with_masks = meta["detector"] == "mask_rcnn"
        out = {"reference": [], "runtime": []}  # per image: boxes/scores/labels (for matching)
        results = {"reference": [], "runtime": []}  # COCO results; masks as RLEs, so no full-size masks are kept

        def keep(key: str, raw: dict, image_id: int) -> None:
            o = {k: v.cpu() for k, v in raw.items()}
            results[key] += to_coco_results([o], [image_id], dataset.label_to_cat_id, masks=with_masks)
            o.pop("masks", None)
            out[key].append(o)

        whole_runner = None
        if whole:
            whole_path = export_whole_detector(detector, Path(tmp) / "detector.onnx", sample=dataset[0][0].to(device))
            whole_runner = create("ort", whole_path, threads=threads or os.cpu_count())
            runtime_name += " (whole detector in one graph)"
            log(f"exported the whole {meta['detector']} to ONNX (dynamic H, W); it runs on {runtime_name}")
        whole_calls = 0
        for i in range(n):
            image, _ = dataset[i]
            image = image.to(device)
            with torch.no_grad():
                keep("reference", detector([image])[0], image_ids[i])
                if whole_runner is not None:
                    got = whole_runner.run({"image": image.cpu().numpy()})
                    whole_calls += 1
                    keep("runtime", {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in got.items()}, image_ids[i])
                    continue
                detector.backbone.body = swapped
                try:
                    keep("runtime", detector([image])[0], image_ids[i])
                finally:
                    detector.backbone.body = body
    coco_gt = subset_coco(dataset.coco, image_ids)
    metrics, segm = {}, {}
    for key, res in results.items():
        metrics[key] = ap_points(coco_evaluate(coco_gt, res))
        if with_masks:  # the same detections scored on their masks (COCO's segm rows)
            segm[key] = ap_points(coco_evaluate(coco_gt, res, iou_type="segm"))
    info = {"checkpoint": checkpoint, "epoch": meta.get("epoch"), "detector": meta["detector"],
            "backbone": arch.backbone, "transformed_convs": len(arch.convs), "data": str(data), "split": "val",
            "runtime_name": runtime_name, "export_input_shape": list(shape),
            "mode": "whole detector" if whole else "backbone"}
    return DetectionParityResult(reference=metrics["reference"], runtime=metrics["runtime"], tolerance=tol,
                                 match=match_detections(out["reference"], out["runtime"]), images=n,
                                 backend=backend, precision=precision,
                                 runtime_calls=whole_calls if whole else swapped.calls, features=features,
                                 info=info, segm_reference=segm.get("reference"), segm_runtime=segm.get("runtime"))


def format_detection_parity(r: DetectionParityResult) -> str:
    """The human-readable parity report (both metric tables, matching, verdict)."""
    from natsdeploy.data.evaluate import METRICS

    def cell(v: float) -> str:
        return f"{v:>8.2f}" if v >= 0 else f"{'n/a':>8}"

    rt_label = f"trt-{r.precision}" if r.backend == "trt" else r.backend
    m = r.match
    feat = r.features
    feat_cells = "  ".join(f"{k} {o['rel_err']:.1e}" for k, o in feat.get("outputs", {}).items())
    lines = [f"natsdeploy parity: {r.info['detector']} on {r.info['backbone']} ({r.info['transformed_convs']} transformed "
             f"convs), checkpoint {r.info['checkpoint']} (epoch {r.info['epoch']}), {r.info['data']} val: "
             f"{r.images} images",
             f"runtime: {r.info['runtime_name']}; {'detector' if r.info.get('mode') == 'whole detector' else 'backbone'} "
             f"calls on it: {r.runtime_calls}",
             f"backbone features vs PyTorch, max|err|/max|ref|: {feat_cells} "
             f"({'pass' if feat.get('passed') else 'FAIL'})", "",
             "  " + f"{'bbox':<10}" + "".join(f"{k:>8}" for k in METRICS) + "   (AP points, 0-100 scale)",
             "  " + f"{'pytorch':<10}" + "".join(cell(r.reference[k]) for k in METRICS),
             "  " + f"{rt_label:<10}" + "".join(cell(r.runtime[k]) for k in METRICS),
             "  " + f"{'diff':<10}" + "".join(f"{r.delta[k]:>+8.2f}" for k in METRICS), ""]
    if r.segm_delta is not None:
        lines += ["  " + f"{'segm':<10}" + "".join(f"{k:>8}" for k in METRICS) + "   (mask AP, same detections)",
                  "  " + f"{'pytorch':<10}" + "".join(cell(r.segm_reference[k]) for k in METRICS),
                  "  " + f"{rt_label:<10}" + "".join(cell(r.segm_runtime[k]) for k in METRICS),
                  "  " + f"{'diff':<10}" + "".join(f"{r.segm_delta[k]:>+8.2f}" for k in METRICS), ""]
    lines.append(f"detections: {m.reference} PyTorch, {m.runtime} runtime; matched by a same-class runtime detection "
                 f"at IoU >= {m.iou:g}: {m.matched}/{m.reference} = {100 * m.share:.2f}%; max |score diff| over "
                 f"matches {m.max_score_diff:.2e}")
    if m.ties:
        lines.append(f"NMS ties (unmatched pairs of one class at IoU >= {m.tie_iou:g}, scores within {m.tie_score:g}; "
                     f"fp32 rounding chose the survivor): {m.ties}; matched share of the rest "
                     f"{100 * m.decided_share:.2f}%")
    deltas = list(r.delta.values()) + list((r.segm_delta or {}).values())
    worst = max(abs(d) for d in deltas)
    scope = "each of the six box and six mask metrics" if r.segm_delta is not None else "each of the six metrics"
    lines.append(f"verdict: {'PASS' if r.passed else 'FAIL'} (max |delta| {worst:.3f} AP points; tolerance "
                 f"{r.tolerance:g} AP points on the 0-100 scale, two-sided, for {scope})")
    return "\n".join(lines)
