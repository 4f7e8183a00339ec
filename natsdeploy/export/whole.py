"""`natsdeploy export ARCH --checkpoint CKPT`: a detector trained by `natsdeploy train` as one deployable
ONNX file, `detector.onnx`, with the evidence in `report.json` that it is that detector.

The file is torchvision's whole detector (resize + normalise, backbone, FPN, heads, box decoding, NMS,
and mask pasting for Mask R-CNN) exported by torch.onnx's TorchScript exporter at opset 17
(`natsdeploy.export.detector.export_whole_detector`) and checked with onnx's full checker.

Input ``image``: float32, 3 x H x W, RGB in [0, 1], one image; H and W are dynamic. No mean/std and no
resize beforehand: the graph normalises (ImageNet mean/std) and resizes as the detector was trained
(shorter side to `min_size`, longer side at most `max_size`; both in report.json).

Outputs, one row per detection (``detections`` is dynamic, at most the detector's detections per image),
in the original image's pixels:

- Faster R-CNN, Mask R-CNN: ``boxes`` float32 [N, 4] (x1, y1, x2, y2), ``labels`` int64 [N], ``scores``
  float32 [N] (highest first); Mask R-CNN adds ``masks`` float32 [N, 1, H, W] (per-pixel probabilities,
  pasted into the image; torchvision thresholds them at 0.5);
- RetinaNet: ``boxes``, ``scores``, ``labels`` (in that order).

``labels`` are the training labels 1..C (0 is background and never output); report.json's
``label_to_cat_id`` maps each to the dataset's category id.

Backbone only (`natsdeploy export ARCH`, no checkpoint): input ``images`` float32 N x 3 x H x W,
already normalised with ImageNet mean/std (the detector pads H and W to multiples of 32); outputs
``c2``..``c5`` (ResNet layer1..layer4) at strides 4, 8, 16 and 32, with `BACKBONE_CHANNELS` channels:
64/128/256/512 for resnet18 and resnet34, 256/512/1024/2048 for resnet50, resnet101 and the ResNeXt-101s.
torchvision's FPN reads c2..c5 (Faster/Mask R-CNN) or c3..c5 (RetinaNet, plus P6/P7 from P5).

report.json: the graph (input, outputs, op counts), ONNX Runtime parity against the PyTorch detector
on the first `images` validation images and on a crop of the first (another H x W: the dynamic shapes
in use) with `match_detections` (the matcher `natsdeploy parity --whole` uses) and COCO AP, and what
TensorRT's parser and builder accept of the graph (`natsdeploy.export.tensorrt_support`). Docs:
docs/whole-detector.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from natsdeploy.arch import Arch
from natsdeploy.errors import UsageError
from natsdeploy.specs import BACKBONES

__all__ = ["WHOLE_TRT_CHOICES", "WholeTolerance", "WholeExportResult", "BACKBONE_CHANNELS", "export_whole",
           "export_whole_cli", "format_whole", "pin_roi_scales"]

FORMAT = "natsdeploy-whole-detector/1"
WHOLE_TRT_CHOICES = ("auto", "tensorrt", "rtx", "off")
BACKBONE_CHANNELS: dict[str, dict[str, int]] = {
    name: {f"c{i + 2}": 64 * 2 ** i * (1 if spec.block == "basic" else 4) for i in range(4)}
    for name, spec in BACKBONES.items()}
"""Channels of the backbone-only export's c2..c5 per backbone (from `natsdeploy.specs`); strides 4, 8, 16, 32."""


@dataclass(frozen=True)
class WholeTolerance:
    """What ONNX Runtime's detections may differ from PyTorch's by and still pass."""

    ap_points: float = 0.1  # |delta| per COCO metric, 0-100 scale (parity's fp32 default)
    decided_share: float = 0.99  # matched share of the detections no NMS tie decided (`match_detections`)
    score: float = 1e-4  # max |score difference| over matched detections
    box_px: float = 0.01  # max |box coordinate difference| over matched detections, in pixels


@dataclass
class WholeExportResult:
    """The folder written, its files and the report (also in report.json)."""

    out_dir: Path
    files: dict[str, Path]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """ORT parity passed, and the engine was written where one was asked for."""
        return bool(self.report["verdict"]["passed"])


def _check_options(trt: str, engine: bool, images: int) -> Any:
    """Refuse bad options before any work; the TensorRT API to probe with, or the reason there is none."""
    from natsdeploy.export.tensorrt import require_tensorrt

    if trt not in WHOLE_TRT_CHOICES:
        raise UsageError(f"--trt: got {trt!r}, expected one of {list(WHOLE_TRT_CHOICES)}")
    if images < 1:
        raise UsageError(f"--images: got {images}, expected 1 or more")
    if trt == "off":
        if engine:
            raise UsageError("--engine: got it with --trt off, expected --trt auto, tensorrt or rtx")
        return "--trt off"
    try:
        return require_tensorrt(trt, field="--engine" if engine else "--trt")
    except UsageError as e:
        if engine or trt != "auto":
            raise
        return str(e).split(": ", 1)[-1]


def _load(arch: Arch, checkpoint: str, data: str) -> tuple[Any, dict, Any]:
    """The checkpoint's detector (eval, CPU), its metadata and the val split, after the bad-input checks."""
    from natsdeploy.data.coco import load_dataset
    from natsdeploy.data.errors import DatasetError
    from natsdeploy.models.trained import detector_from_checkpoint, read_checkpoint
    from natsdeploy.verify.detection_parity import check_same_arch

    ck = read_checkpoint(checkpoint)
    check_same_arch(ck["arch"], arch, checkpoint)
    seed = int((ck.get("config") or {}).get("seed", 0) or 0)  # `synthetic` means the set the run trained on
    dataset = load_dataset(data, "val", seed=seed)
    want = {int(k): int(v) for k, v in ck["label_to_cat_id"].items()}
    if dataset.label_to_cat_id != want:
        raise DatasetError(f"{dataset.ann_file}: category ids {sorted(dataset.label_to_cat_id.values())}; expected "
                           f"{sorted(want.values())}, those the checkpoint was trained on")
    detector, _, meta = detector_from_checkpoint(ck, device="cpu", path=checkpoint)
    return detector, meta, dataset


def pin_roi_scales(detector: Any, *, side: int = 256) -> dict[str, list[float]]:
    """Fix each MultiScaleRoIAlign's feature scales from a `side` x `side` pass, before tracing.

    torchvision's pooler infers its scales from the first batch it sees and keeps them
    (torchvision/ops/poolers.py `MultiScaleRoIAlign.forward`, `_infer_scale`; pytorch/vision#3747). An
    image resized well below its padded height (40 x 72 at min_size 64: 36 px in a 64 px pad, measured)
    makes it infer 1/2 for 1/4, which tracing bakes into the graph as constants. A square input a
    multiple of 32 gives every level its exact scale; the detector in hand then agrees with the graph.
    """
    import torch
    from torchvision.ops import MultiScaleRoIAlign

    pools = {name: getattr(detector.roi_heads, name, None) for name in ("box_roi_pool", "mask_roi_pool")}
    pools = {k: v for k, v in pools.items() if isinstance(v, MultiScaleRoIAlign)}
    if not pools:  # RetinaNet: no RoI pooling
        return {}
    with torch.no_grad():
        feats = detector.backbone(torch.zeros(1, 3, side, side, device=next(detector.parameters()).device))
    out = {}
    for name, pool in pools.items():
        pool.scales = pool.map_levels = None
        pool(feats, [next(iter(feats.values())).new_zeros((0, 4))], [(side, side)])
        out[name] = [float(s) for s in pool.scales]
    return out


def _graph_info(path: Path) -> dict[str, Any]:
    """The written graph as a deployer sees it: input, outputs (name, type, dims) and op counts."""
    from collections import Counter

    import onnx

    from natsdeploy.export.tensorrt_support import graph_op_counts

    model = onnx.load(str(path), load_external_data=False)

    def value(v) -> dict[str, Any]:
        t = v.type.tensor_type
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in t.shape.dim]}

    ops = graph_op_counts(model)
    return {"file": path.name, "bytes": path.stat().st_size, "opset": max(o.version for o in model.opset_import
                                                                            if o.domain in ("", "ai.onnx")),
            "exporter": "torch.onnx TorchScript exporter (dynamo=False)", "checker": "onnx.checker full_check: ok",
            "input": value(model.graph.input[0]), "outputs": [value(o) for o in model.graph.output],
            "nodes": sum(ops.values()), "ops": dict(Counter(ops).most_common())}


def _parity(detector: Any, onnx_path: Path, dataset: Any, *, images: int, threads: int | None, masks: bool,
            tolerance: WholeTolerance) -> dict[str, Any]:
    """PyTorch vs ONNX Runtime on the first `images` val images and a crop of the first (another H x W)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from natsdeploy.data.evaluate import ap_points, coco_evaluate, match_detections, subset_coco, to_coco_results
    from natsdeploy.runners import OrtRunner

    runner = OrtRunner(onnx_path, threads=threads or os.cpu_count())
    n = min(images, len(dataset))
    ids = dataset.ids[:n]
    first = dataset[0][0]
    crop = first[:, : max(32, first.shape[1] * 3 // 4), :]  # another aspect ratio: the graph's resize differs
    inputs = [(str(ids[i]), dataset[i][0]) for i in range(n)] + [(f"{ids[0]} cropped", crop)]
    rows, pairs, coco = [], [], {"pytorch": [], "runtime": []}
    for i, (name, image) in enumerate(inputs):
        with torch.no_grad():
            ref = {k: v.cpu() for k, v in detector([image])[0].items()}
        got = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in runner.run({"image": image.numpy()}).items()}
        if i < n:  # the val images are scored on their ground truth (masks as RLEs, as parity does)
            coco["pytorch"] += to_coco_results([ref], [ids[i]], dataset.label_to_cat_id, masks=masks)
            coco["runtime"] += to_coco_results([got], [ids[i]], dataset.label_to_cat_id, masks=masks)
        ref.pop("masks", None)
        got.pop("masks", None)
        m = match_detections([ref], [got])
        rows.append({"image": name, "size": list(image.shape[1:]), "pytorch": m.reference, "runtime": m.runtime,
                     "matched": m.matched, "nms_ties": m.ties, "max_box_diff": m.max_box_diff,
                     "max_score_diff": m.max_score_diff})
        pairs.append((ref, got))
    match = match_detections([p[0] for p in pairs], [p[1] for p in pairs])
    gt = subset_coco(dataset.coco, ids)
    metrics = {k: ap_points(coco_evaluate(gt, v)) for k, v in coco.items()}
    if masks:
        metrics.update({f"segm_{k}": ap_points(coco_evaluate(gt, v, iou_type="segm")) for k, v in coco.items()})
    delta = {kind: {k: metrics[f"{kind}runtime"][k] - metrics[f"{kind}pytorch"][k] for k in metrics["pytorch"]}
             for kind in ([""] + (["segm_"] if masks else []))}
    checks = {"counts_equal": all(r["pytorch"] == r["runtime"] for r in rows),
              "decided_share": match.decided_share >= tolerance.decided_share,
              "score": match.max_score_diff <= tolerance.score, "box_px": match.max_box_diff <= tolerance.box_px,
              "ap_points": all(abs(d) <= tolerance.ap_points + 1e-9 for v in delta.values() for d in v.values())}
    return {"runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider", "images": rows,
            "matching": match.to_dict(), "coco_ap": {"bbox": {"pytorch": metrics["pytorch"], "runtime": metrics["runtime"],
                                                             "delta": delta[""]},
                                                    **({"segm": {"pytorch": metrics["segm_pytorch"],
                                                                 "runtime": metrics["segm_runtime"],
                                                                 "delta": delta["segm_"]}} if masks else {})},
            "metric_scale": "AP points (0-100) on the val images only; -1 = undefined", "tolerance": asdict(tolerance),
            "checks": checks, "passed": all(checks.values())}


def _tensorrt(api: Any, onnx_path: Path, out_dir: Path, *, engine: bool, opt: tuple[int, ...], max_side: int
              ) -> dict[str, Any]:
    """The TensorRT section: skipped with its reason, or the child's census and build."""
    from natsdeploy.export.tensorrt_support import probe_tensorrt

    if isinstance(api, str):
        return {"skipped": api}
    return probe_tensorrt(onnx_path, trt=api.flavour, engine_path=out_dir / "detector.engine" if engine else None,
                          min_shape=(3, 32, 32), opt_shape=opt, max_shape=(3, max_side, max_side))


def export_whole(arch: Arch, checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, data: str | None = None,
                 images: int = 4, tolerance: WholeTolerance | None = None, trt: str = "auto", engine: bool = False,
                 threads: int | None = None, engine_max_side: int | None = None,
                 log: Callable[[str], Any] = print) -> WholeExportResult:
    """Write `out_dir`/detector.onnx (the trained detector as one graph) and `out_dir`/report.json.

    `data`: the COCO folder whose val split the parity runs on (default: the synthetic set, as parity).
    `trt`: auto (TensorRT if importable, else the reason is recorded), tensorrt, rtx, or off.
    `engine`: also write `out_dir`/detector.engine where TensorRT builds the graph (one profile, 3x32x32 to
    3 x `engine_max_side` squared, default twice the detector's max_size). Bad input raises a one-line
    `natsdeploy.errors` type before anything is written.
    """
    from natsdeploy.export.detector import export_whole_detector
    from natsdeploy.files import atomic_write, atomic_write_text

    tolerance = tolerance or WholeTolerance()
    api = _check_options(trt, engine, int(images))
    out_dir, checkpoint = Path(out_dir), str(checkpoint)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out: got {str(out_dir)!r}, an existing file, expected a folder")
    detector, meta, dataset = _load(arch, checkpoint, data or "synthetic")
    sample = dataset[0][0]
    roi_scales = pin_roi_scales(detector)
    with tempfile.TemporaryDirectory(prefix="natsdeploy-whole-") as tmp:
        traced = export_whole_detector(detector, Path(tmp) / "detector.onnx", sample=sample)
        with open(traced, "rb") as src:
            onnx_path = atomic_write(out_dir / "detector.onnx", lambda f: shutil.copyfileobj(src, f, 1 << 22))
    graph = _graph_info(onnx_path)
    log(f"wrote {onnx_path}: the whole {meta['detector']} ({graph['nodes']} nodes, opset {graph['opset']}); "
        f"checking it on ONNX Runtime against PyTorch")
    parity = _parity(detector, onnx_path, dataset, images=int(images), threads=threads,
                     masks=meta["detector"] == "mask_rcnn", tolerance=tolerance)
    if not isinstance(api, str):
        log(f"asking {api.trt.__name__} {api.version}'s parser and builder about the graph (a child process)")
    trt_section = _tensorrt(api, onnx_path, out_dir, engine=engine, opt=tuple(sample.shape),
                            max_side=int(engine_max_side or 2 * meta["max_size"]))
    files = {"onnx": onnx_path}
    if trt_section.get("engine"):
        files["engine"] = Path(trt_section["engine"])
    engine_ok = not engine or "engine" in files
    report = {"format": FORMAT, "detector": meta["detector"], "backbone": arch.backbone,
              "transformed_convs": len(arch.convs), "checkpoint": checkpoint, "epoch": meta.get("epoch"),
              "num_classes": meta["num_classes"], "label_to_cat_id": {str(k): v for k, v in meta["label_to_cat_id"].items()},
              "min_size": meta["min_size"], "max_size": meta["max_size"], "roi_scales": roi_scales, "data": data or "synthetic", "split": "val",
              "onnx": graph, "ort_parity": parity, "tensorrt": trt_section,
              "verdict": {"passed": parity["passed"] and engine_ok, "ort_parity": parity["passed"],
                          "engine": None if not engine else (str(files["engine"]) if engine_ok else
                                                             "not written: " + trt_section.get("build", "no build"))}}
    files["report"] = atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    log(format_whole(report))
    return WholeExportResult(out_dir, files, report)


def format_whole(report: dict[str, Any]) -> str:
    """The printed summary: the graph's interface, ORT parity per image, TensorRT's verdict."""
    from natsdeploy.export.tensorrt_support import format_tensorrt_support

    g, p = report["onnx"], report["ort_parity"]

    def dims(v: dict) -> str:
        return " x ".join(str(d) for d in v["shape"])

    lines = [f"natsdeploy export: {report['detector']} on {report['backbone']} ({report['transformed_convs']} "
             f"transformed convs), checkpoint {report['checkpoint']} (epoch {report['epoch']})",
             f"  detector.onnx: {g['bytes'] / 1e6:.1f} MB, opset {g['opset']}, {g['nodes']} nodes",
             f"  input  {g['input']['name']:<8} {g['input']['dtype']:<8} {dims(g['input'])} (RGB in [0, 1])"]
    lines += [f"  output {o['name']:<8} {o['dtype']:<8} {dims(o)}" for o in g["outputs"]]
    lines += ["", f"ONNX Runtime vs PyTorch ({p['runtime']}), {report['data']} val:",
              f"  {'image':<16}{'H x W':>10}{'pytorch':>9}{'ort':>6}{'matched':>9}{'ties':>6}{'max|box| px':>13}"
              f"{'max|score|':>12}"]
    for r in p["images"]:
        lines.append(f"  {r['image']:<16}{'x'.join(map(str, r['size'])):>10}{r['pytorch']:>9}{r['runtime']:>6}"
                     f"{r['matched']:>9}{r['nms_ties']:>6}{r['max_box_diff']:>13.2e}{r['max_score_diff']:>12.2e}")
    worst = max(abs(d) for v in p["coco_ap"].values() for d in v["delta"].values())
    failed = [k for k, ok in p["checks"].items() if not ok]
    lines.append(f"  counts {'equal' if p['checks']['counts_equal'] else 'DIFFER'}; matched "
                 f"{100 * p['matching']['decided_share']:.2f}% of the detections no NMS tie decided; max |AP delta| "
                 f"{worst:.3f} points; {'PASS' if p['passed'] else 'FAIL (' + ', '.join(failed) + ')'}")
    lines += [""] + format_tensorrt_support(report["tensorrt"])
    v = report["verdict"]
    lines.append(f"verdict: {'PASS' if v['passed'] else 'FAIL'} (ORT parity {'pass' if v['ort_parity'] else 'FAIL'}"
                 + (f"; engine: {v['engine']}" if v["engine"] is not None else "") + ")")
    return "\n".join(lines)


def export_whole_cli(args: argparse.Namespace) -> int:
    """`natsdeploy export ARCH --checkpoint CKPT [--data DIR] [--images N] [--engine] [--trt ...] [--out DIR]`:
    0 when ORT parity passes (and the engine was written, with --engine), 1 when not, 2 for bad input."""
    from natsdeploy.arch import load_arch
    from natsdeploy.cli_values import parse_int

    arch = load_arch(args.arch)
    for flag, value, default in (("--weights", getattr(args, "weights", None), None),
                                 ("--precision", getattr(args, "precision", None), None),
                                 ("--fp16", getattr(args, "fp16", False), False)):
        if value not in (default, "fp32"):
            raise UsageError(f"{flag}: got {value!r} with --checkpoint, expected none (the whole detector exports "
                             "in fp32 with the checkpoint's weights)")
    images = parse_int("--images", getattr(args, "images", None) or "4", 1)
    threads = parse_int("--threads", args.threads, 1) if getattr(args, "threads", None) is not None else None
    out = Path(args.out) if getattr(args, "out", None) else Path(f"export-{Path(args.arch).stem}")
    result = export_whole(arch, args.checkpoint, out, data=getattr(args, "data", None), images=images,
                          trt=getattr(args, "trt", "auto") or "auto", engine=bool(getattr(args, "engine", False)),
                          threads=threads)
    print(f"wrote {', '.join(str(p) for p in result.files.values())}")
    return 0 if result.passed else 1
