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

Reported: the six COCO metrics of both runs (AP points, 0-100) and their differences; the share
of PyTorch detections matched by a runtime detection of the same class at IoU >= 0.99 and the max
score difference over matches; the backbone feature parity on a seeded input (the one comparator,
`natsdeploy.verify.parity.compare`). Verdict: |runtime - PyTorch| <= tolerance AP points for each
of the six metrics (default 0.1 for fp32, 0.5 for fp16).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from natsdeploy.shapes import UsageError, parse_float, parse_int

__all__ = ["DEFAULT_AP_TOLERANCE", "MATCH_IOU", "DetectionMatch", "DetectionParityResult", "RuntimeBody",
           "trunk_from_detector", "export_detector_backbone", "export_whole_detector", "match_detections", "detection_parity",
           "format_detection_parity", "add_parity_arguments", "parity_cli"]

DEFAULT_AP_TOLERANCE = {"fp32": 0.1, "fp16": 0.5}
"""Default bound on |runtime AP - PyTorch AP| in AP points (0-100 scale), per metric, by precision."""
MATCH_IOU = 0.99
FORMAT = "natsdeploy-detection-parity/1"


@dataclass(frozen=True)
class DetectionMatch:
    reference: int  # PyTorch detections
    runtime: int  # runtime detections
    matched: int  # PyTorch detections matched one-to-one by a same-class runtime detection at IoU >= iou
    max_score_diff: float  # over matched pairs
    iou: float = MATCH_IOU

    @property
    def share(self) -> float:
        if self.reference == 0:
            return 1.0 if self.runtime == 0 else 0.0
        return self.matched / self.reference

    def to_dict(self) -> dict:
        return {"reference_detections": self.reference, "runtime_detections": self.runtime,
                "matched": self.matched, "matched_share": self.share, "iou": self.iou,
                "max_score_diff": self.max_score_diff}


@dataclass
class DetectionParityResult:
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


def _feature_name(layer: str) -> str:
    return f"c{int(layer[len('layer'):]) + 1}"


def _runtime_body_class():
    import torch
    from torch import nn

    class _RuntimeBody(nn.Module):
        def __init__(self, runner, return_layers: Mapping[str, str]) -> None:
            super().__init__()
            self.runner = runner
            self.return_layers = dict(return_layers)  # {"layer1": "0", ...} as IntermediateLayerGetter has it
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            outs = self.runner.run({"images": x.detach().float().cpu().numpy()})
            return OrderedDict((name, torch.from_numpy(np.ascontiguousarray(outs[_feature_name(layer)]))
                                .to(device=x.device, dtype=x.dtype))
                               for layer, name in self.return_layers.items())

    return _RuntimeBody


def RuntimeBody(runner, return_layers: Mapping[str, str]):  # noqa: N802 (a class factory)
    """An nn.Module standing in for `detector.backbone.body`: runs `runner` (feed {"images": N x 3 x H x W},
    outputs c2..c5) and returns the OrderedDict the IntermediateLayerGetter would (its `return_layers`:
    layer1-4 -> '0'..'3' for Faster/Mask R-CNN, layer2-4 -> '0'..'2' for RetinaNet). Counts its calls."""
    return _runtime_body_class()(runner, return_layers)


def trunk_from_detector(detector, arch):
    """A plain (BatchNorm2d) transformed ResNet computing what `detector.backbone.body` computes."""
    import torch
    from torchvision.ops import FrozenBatchNorm2d

    from natsdeploy.models.build import build_backbone

    with torch.random.fork_rng(devices=[]):
        trunk = build_backbone(arch)
    body = detector.backbone.body
    body_sd = body.state_dict()
    sd = trunk.state_dict()
    needed = [k for k in sd if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    missing = [k for k in needed if k not in body_sd]
    extra = sorted(set(body_sd) - set(sd))
    if missing or extra:
        raise ValueError(f"detector backbone does not match arch {arch.backbone}: "
                         f"missing {missing[:3]}, unexpected {extra[:3]}")
    for k in needed:
        if tuple(body_sd[k].shape) != tuple(sd[k].shape):
            raise ValueError(f"detector backbone[{k!r}]: shape {tuple(body_sd[k].shape)}, expected {tuple(sd[k].shape)}")
        sd[k] = body_sd[k].detach().to(device="cpu", dtype=sd[k].dtype)
    trunk.load_state_dict(sd, strict=True)
    for name, m in body.named_modules():
        if isinstance(m, FrozenBatchNorm2d):
            trunk.get_submodule(name).eps = m.eps
    return trunk.eval()


def export_detector_backbone(detector, arch, path: str | os.PathLike, *, input_shape: Sequence[int]) -> Path:
    """The detector's backbone as dynamic-shape ONNX (input `images`, outputs c2..c5) at `path`."""
    from natsdeploy.export.fold import fold_trunk
    from natsdeploy.export.onnx import check_onnx, save_onnx, trunk_to_onnx
    from natsdeploy.export.pipeline import rewrite

    trunk = trunk_from_detector(detector, arch)
    proto = trunk_to_onnx(rewrite(fold_trunk(trunk)), input_shape=tuple(input_shape), dynamic=True, opset=17,
                          form="branches", graph_name=f"{arch.backbone}-detector-backbone")
    check_onnx(proto)
    return save_onnx(proto, path)


def export_whole_detector(detector, path: str | os.PathLike, *, sample) -> Path:
    """The whole detector as one ONNX graph at `path`: resize + normalise, backbone, FPN, heads, box
    decoding and NMS (and mask pasting for Mask R-CNN), via torch.onnx's TorchScript exporter, which
    torchvision's detection models support (opset 17). Input `image`: 3 x H x W in [0, 1], H and W
    dynamic; outputs `boxes` (xyxy, original image pixels), `labels`, `scores` (+ `masks`).

    `sample` (3 x H x W) is the image traced; the graph is checked with onnx's checker afterwards.
    """
    import warnings

    import onnx
    import torch

    # the traced output is the flattened result dict, so its names are that dict's keys in order (which
    # differs between detectors: Faster R-CNN boxes, labels, scores; RetinaNet boxes, scores, labels)
    with torch.no_grad():
        names = list(detector.eval()([sample])[0].keys())
    dynamic = {"image": {1: "height", 2: "width"}, **{k: {0: "detections"} for k in names}}
    path = Path(path)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the tracer's per-op notes about python scalars in torchvision's code
        torch.onnx.export(detector.eval(), ([sample],), str(path), opset_version=17, dynamo=False,
                          input_names=["image"], output_names=names, dynamic_axes=dynamic)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def match_detections(reference: Sequence[Mapping[str, Any]], runtime: Sequence[Mapping[str, Any]], *,
                     iou: float = MATCH_IOU) -> DetectionMatch:
    """Greedy one-to-one matching per image, PyTorch detections in descending score order, each to the
    unmatched runtime detection of the same label with the highest IoU (>= `iou`)."""
    import torch
    from torchvision.ops import box_iou

    total = matched = rt_total = 0
    max_diff = 0.0
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
        for i in torch.argsort(-rs, stable=True).tolist():
            cand = ious[i].masked_fill(used, -1.0)
            j = int(torch.argmax(cand))
            if cand[j] >= iou:
                used[j] = True
                matched += 1
                max_diff = max(max_diff, abs(float(rs[i] - ts[j])))
    return DetectionMatch(total, rt_total, matched, max_diff, iou)


def _subset_coco(coco, image_ids: Sequence[int]):
    """The ground truth restricted to `image_ids` (so --limit evaluates only the images it runs)."""
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


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return f'{path}["{k}"]' if path else str(k)
            d = _first_difference(a[k], b[k], f'{path}["{k}"]' if path else str(k))
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d is not None:
                return d
        return None
    return None if a == b else path


def _lookup(d: Any, path: str) -> Any:
    import re

    cur = d
    for m in re.finditer(r'^([^\[]+)|\["([^"]*)"\]|\[(\d+)\]', path):
        key = m.group(1) or m.group(2)
        try:
            cur = cur[int(m.group(3))] if m.group(3) is not None else cur[key]
        except (KeyError, IndexError, TypeError):
            return "absent"
    return cur


def _check_same_arch(ck_arch: Mapping, arch, checkpoint: str) -> None:
    want = {k: v for k, v in arch.to_dict().items() if k != "provenance"}
    got = {k: v for k, v in ck_arch.items() if k != "provenance"}
    diff = _first_difference(got, want)
    if diff is None:
        return
    shown_got, shown_want = json.dumps(_lookup(got, diff)), json.dumps(_lookup(want, diff))
    if len(shown_got) > 60:
        shown_got = shown_got[:57] + "..."
    if len(shown_want) > 60:
        shown_want = shown_want[:57] + "..."
    raise UsageError(f"--checkpoint: got {checkpoint!r} trained on another arch: {diff} is {shown_got} in the "
                     f"checkpoint, expected {shown_want} as in ARCH.json")


def _tensorrt_or_exit():
    from natsdeploy.export.tensorrt import require_tensorrt

    try:
        return require_tensorrt()
    except UsageError as e:
        msg = str(e)
        if msg.startswith("--engine:"):
            msg = "--backend trt:" + msg[len("--engine:"):]
        raise UsageError(msg) from None


def detection_parity(arch, checkpoint: str | os.PathLike, data: str = "synthetic", *, backend: str = "ort",
                     fp16: bool = False, limit: int | None = None, tolerance: float | None = None,
                     threads: int | None = None, whole: bool = False, log=print) -> DetectionParityResult:
    """Run the checkpoint's detector on the val split with the PyTorch and the exported backbone.

    `whole=True` (ONNX Runtime only): the runtime side is the whole detector exported as one graph
    (`export_whole_detector`) instead of the backbone under the PyTorch neck and heads.
    """
    import torch

    from natsdeploy.data.coco import load_dataset
    from natsdeploy.data.errors import DatasetError
    from natsdeploy.data.evaluate import coco_evaluate, to_coco_results
    from natsdeploy.train.loop import _points, detector_from_checkpoint, read_checkpoint
    from natsdeploy.verify.parity import DEFAULT_TOLERANCE, compare

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
    precision = "fp16" if fp16 else "fp32"
    tol = float(DEFAULT_AP_TOLERANCE[precision] if tolerance is None else tolerance)

    checkpoint = str(checkpoint)
    ck = read_checkpoint(checkpoint)
    _check_same_arch(ck["arch"], arch, checkpoint)
    seed = int((ck.get("config") or {}).get("seed", 0) or 0)  # `synthetic` means the set the run trained on
    dataset = load_dataset(data, "val", seed=seed)
    want = {int(k): int(v) for k, v in ck["label_to_cat_id"].items()}
    if dataset.label_to_cat_id != want:
        raise DatasetError(f"{dataset.ann_file}: category ids {sorted(dataset.label_to_cat_id.values())}; expected "
                           f"{sorted(want.values())}, those the checkpoint was trained on")
    device = "cuda" if backend == "trt" and torch.cuda.is_available() else "cpu"
    detector, _, meta = detector_from_checkpoint(ck, device=device, path=checkpoint)
    del ck
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    image_ids = dataset.ids[:n]
    body = detector.backbone.body
    return_layers = dict(body.return_layers)

    def pad32(v: int) -> int:
        return int(math.ceil(v / 32) * 32)

    shape = (1, 3, pad32(meta["min_size"]), pad32(meta["max_size"]))
    with tempfile.TemporaryDirectory(prefix="natsdeploy-parity-") as tmp:
        onnx_path = export_detector_backbone(detector, arch, Path(tmp) / "backbone.onnx", input_shape=shape)
        if backend == "ort":
            import onnxruntime as ort

            from natsdeploy.runners import OrtRunner

            runner = OrtRunner(onnx_path, threads=threads or os.cpu_count())
            runtime_name = f"onnxruntime {ort.__version__} CPUExecutionProvider"
        elif backend == "openvino":
            from natsdeploy.runners import OpenVinoRunner

            runner = OpenVinoRunner(onnx_path, threads=threads or os.cpu_count(), precision="f32")
            runtime_name = f"OpenVINO {runner.version} CPU ({runner.precision})"
        else:
            from natsdeploy.export.tensorrt import TrtRunner, build_engine

            side = pad32(meta["max_size"])
            engine = build_engine(onnx_path, Path(tmp) / "backbone.engine", fp16=fp16, dynamic=True,
                                  input_shape=shape, max_shape=(1, 3, side, side))
            runner = TrtRunner(engine)
            runtime_name = f"TensorRT ({precision})"
        log(f"exported the checkpoint's backbone ({arch.backbone}, {len(arch.convs)} transformed convs) to ONNX "
            f"with dynamic shapes; runtime: {runtime_name}")

        # the backbone alone on a seeded input at the largest padded size: features parity (the one comparator)
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        with torch.no_grad():
            ref_feats = body(torch.from_numpy(x).to(device))
        got_feats = runner.run({"images": x})
        ref_np = {_feature_name(layer): ref_feats[name].float().cpu().numpy() for layer, name in return_layers.items()}
        features = compare({k: got_feats[k] for k in ref_np}, ref_np,
                           tolerance=DEFAULT_TOLERANCE[precision]).to_dict()

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
            from natsdeploy.runners import OrtRunner

            whole_path = export_whole_detector(detector, Path(tmp) / "detector.onnx", sample=dataset[0][0].to(device))
            whole_runner = OrtRunner(whole_path, threads=threads or os.cpu_count())
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
    coco_gt = _subset_coco(dataset.coco, image_ids)
    metrics, segm = {}, {}
    for key, res in results.items():
        metrics[key] = _points(coco_evaluate(coco_gt, res))
        if with_masks:  # the same detections scored on their masks (COCO's segm rows)
            segm[key] = _points(coco_evaluate(coco_gt, res, iou_type="segm"))
    info = {"checkpoint": checkpoint, "epoch": meta.get("epoch"), "detector": meta["detector"],
            "backbone": arch.backbone, "transformed_convs": len(arch.convs), "data": str(data), "split": "val",
            "runtime_name": runtime_name, "export_input_shape": list(shape),
            "mode": "whole detector" if whole else "backbone"}
    return DetectionParityResult(metrics["reference"], metrics["runtime"], tol, match_detections(out["reference"], out["runtime"]),
                                 n, backend, precision, whole_calls if whole else swapped.calls, features, info,
                                 segm.get("reference"), segm.get("runtime"))


def format_detection_parity(r: DetectionParityResult) -> str:
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
    deltas = list(r.delta.values()) + list((r.segm_delta or {}).values())
    worst = max(abs(d) for d in deltas)
    scope = "each of the six box and six mask metrics" if r.segm_delta is not None else "each of the six metrics"
    lines.append(f"verdict: {'PASS' if r.passed else 'FAIL'} (max |delta| {worst:.3f} AP points; tolerance "
                 f"{r.tolerance:g} AP points on the 0-100 scale, two-sided, for {scope})")
    return "\n".join(lines)


def add_parity_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", help="arch.json the checkpoint was trained on")
    p.add_argument("--checkpoint", required=True, help="OUT/checkpoint.pth written by natsdeploy train")
    p.add_argument("--data", required=True, help="COCO-format folder (its val split), or 'synthetic'")
    p.add_argument("--backend", default="ort",
                   help="ort (ONNX Runtime CPU, default), openvino (OpenVINO CPU, f32) or trt (TensorRT)")
    p.add_argument("--fp16", action="store_true", help="fp16 TensorRT engine (with --backend trt)")
    p.add_argument("--limit", default=None, help="evaluate only the first N val images")
    p.add_argument("--tolerance", default=None,
                   help="bound on |runtime - PyTorch| per COCO metric in AP points, 0-100 scale "
                        "(default 0.1 for fp32, 0.5 for fp16)")
    p.add_argument("--threads", default=None, help="ONNX Runtime intra-op threads (default: all logical CPUs)")
    p.add_argument("--whole", action="store_true",
                   help="run the whole detector exported as one ONNX graph on ONNX Runtime (not only the backbone)")
    p.add_argument("--json", default=None, help="write the result as JSON here")


def parity_cli(args: argparse.Namespace) -> int:
    from natsdeploy.arch import atomic_write_text, load_arch

    arch = load_arch(args.arch)
    if args.backend not in ("ort", "openvino", "trt"):
        raise UsageError(f"--backend: got {args.backend!r}, expected 'ort', 'openvino' or 'trt'")
    limit = parse_int("--limit", args.limit, 1) if args.limit is not None else None
    tol = parse_float("--tolerance", args.tolerance, 0.0) if args.tolerance is not None else None
    threads = parse_int("--threads", args.threads, 1) if args.threads is not None else None
    result = detection_parity(arch, args.checkpoint, args.data, backend=args.backend, fp16=args.fp16, limit=limit,
                              tolerance=tol, threads=threads, whole=args.whole)
    print(format_detection_parity(result))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if result.passed else 1
