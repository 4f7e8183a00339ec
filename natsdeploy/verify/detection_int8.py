"""`parity --precision int8`: detection AP with the int8 backbone against the fp32 one, transformed and baseline.

The checkpoint's detector runs on the val split four times with the same transform, FPN, heads and NMS:
its backbone exported as fp32 ONNX and as an int8 QDQ graph (`natsdeploy.export.int8`), both on ONNX
Runtime CPU, for the transformed backbone and for the baseline backbone (the same weights at
dilation 1, `transformed_state_dict_to_baseline`, under the same FPN and heads). Both int8 graphs are
calibrated on the same first N images of the data's train split, preprocessed by the detector's own
transform. Reported: the six COCO box metrics of each run and, per backbone, the int8 - fp32 delta
(AP points, 0-100) and how the int8 run's detections match the fp32 run's. Verdict: per metric,
|delta of the transformed| <= |delta of the baseline| + tolerance (default 0.5 AP points): the
transformation costs nothing extra under quantization. The fp32 ONNX backbone equals the PyTorch one
within 1e-4 (`natsdeploy parity`, fp32).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_INT8_AP_TOLERANCE", "DetectionInt8Result", "detection_parity_int8", "format_detection_int8"]

DEFAULT_INT8_AP_TOLERANCE = 0.5
KEYS = ("model", "baseline")


@dataclass(kw_only=True)
class DetectionInt8Result:
    """Per backbone (model, baseline) and precision (fp32, int8): COCO box metrics in AP points."""

    metrics: dict[str, dict[str, dict[str, float]]]
    matching: dict[str, Any]
    tolerance: float
    images: int
    calibration: dict[str, Any]
    info: dict = field(default_factory=dict)

    @property
    def delta(self) -> dict[str, dict[str, float]]:
        return {k: {m: self.metrics[k]["int8"][m] - self.metrics[k]["fp32"][m] for m in self.metrics[k]["fp32"]}
                for k in KEYS}

    @property
    def passed(self) -> bool:
        d = self.delta
        return all(math.isfinite(d["model"][m]) and abs(d["model"][m]) <= abs(d["baseline"][m]) + self.tolerance + 1e-9
                   for m in d["model"])

    def to_dict(self) -> dict:
        return {"format": "natsdeploy-detection-parity-int8/1", "passed": self.passed, "precision": "int8",
                "images": self.images, "metric_scale": "AP points (0-100); -1 = undefined",
                "tolerance_ap_points": self.tolerance,
                "rule": "per metric |delta model| <= |delta baseline| + tolerance (delta = int8 - fp32)",
                "metrics": self.metrics, "delta": self.delta, "matching": self.matching,
                "calibration": self.calibration, **self.info}


def _backbones(detector: Any, arch: Any, shape: tuple[int, ...]) -> dict[str, Any]:
    """fp32 ONNX (dynamic H, W) of the detector's backbone and of its baseline (same weights, dilation 1)."""
    from natsdeploy.export.onnx import check_onnx, to_onnx
    from natsdeploy.models.build import build_baseline, transformed_state_dict_to_baseline
    from natsdeploy.models.trunk import trunk_from_detector

    trunk = trunk_from_detector(detector, arch)
    base = build_baseline(arch.backbone, transformed_state_dict_to_baseline(trunk.state_dict(), arch)).eval()
    for name, m in trunk.named_modules():  # the detector's FrozenBatchNorm2d eps, as the trunk has it
        if hasattr(m, "eps") and name in dict(base.named_modules()):
            base.get_submodule(name).eps = m.eps
    out = {}
    for key, module in (("model", trunk), ("baseline", base)):
        out[key] = to_onnx(module, input_shape=shape, dynamic=True, opset=17, form="branches",
                           graph_name=f"{arch.backbone}-detector-{key}").model
        check_onnx(out[key])
    return out


def detection_parity_int8(arch: Any, checkpoint: str | os.PathLike, data: str = "synthetic", *,
                          calibration_images: int = 64, limit: int | None = None, tolerance: float | None = None,
                          threads: int | None = None, activations: str = "s8", log=print) -> DetectionInt8Result:
    """Run the checkpoint's detector with fp32 and int8 backbones (transformed and baseline) on ORT CPU
    (`activations`: s8 or u8, as `export --int8-activations`)."""
    import torch

    from natsdeploy.data.coco import load_dataset
    from natsdeploy.data.errors import DatasetError
    from natsdeploy.data.evaluate import ap_points, coco_evaluate, match_detections, subset_coco, to_coco_results
    from natsdeploy.export.int8 import open_calibration, quantize_pair
    from natsdeploy.models.trained import detector_from_checkpoint, read_checkpoint
    from natsdeploy.runners import OrtRunner
    from natsdeploy.runners_detector import RuntimeBody
    from natsdeploy.verify.detection_parity import check_same_arch

    tol = float(DEFAULT_INT8_AP_TOLERANCE if tolerance is None else tolerance)
    checkpoint = str(checkpoint)
    ck = read_checkpoint(checkpoint)
    check_same_arch(ck["arch"], arch, checkpoint)
    seed = int((ck.get("config") or {}).get("seed", 0) or 0)
    dataset = load_dataset(data, "val", seed=seed)
    want = {int(k): int(v) for k, v in ck["label_to_cat_id"].items()}
    if dataset.label_to_cat_id != want:
        raise DatasetError(f"{dataset.ann_file}: category ids {sorted(dataset.label_to_cat_id.values())}; expected "
                           f"{sorted(want.values())}, those the checkpoint was trained on")
    calib = open_calibration(data, calibration_images, field="--data", seed=seed)
    detector, _, meta = detector_from_checkpoint(ck, device="cpu", path=checkpoint)
    del ck
    detector.eval()
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    image_ids = dataset.ids[:n]
    body, return_layers = detector.backbone.body, dict(detector.backbone.body.return_layers)

    def calibration_arrays():  # the detector's own transform: normalise, resize, pad to a multiple of 32
        for i in range(calibration_images):
            with torch.no_grad():
                yield detector.transform([calib[i][0]])[0].tensors.numpy()

    pad = lambda v: int(math.ceil(v / 32) * 32)  # noqa: E731
    fp32 = _backbones(detector, arch, (1, 3, pad(meta["min_size"]), pad(meta["max_size"])))
    log(f"int8: calibrating the transformed and the baseline backbone on {calibration_images} images of "
        f"{data} {calib.split}")
    int8 = quantize_pair(fp32, calibration_arrays, activations=activations, log=log)
    runners = {}
    with tempfile.TemporaryDirectory(prefix="natsdeploy-parity-int8-") as tmp:
        for prec, protos in (("fp32", fp32), ("int8", int8)):
            for key, proto in protos.items():
                path = Path(tmp) / f"{key}.{prec}.onnx"
                path.write_bytes(proto.SerializeToString())
                runners[key, prec] = OrtRunner(path, threads=threads or os.cpu_count())
        outs = {kp: [] for kp in runners}
        results = {kp: [] for kp in runners}
        for i in range(n):
            image, _ = dataset[i]
            for kp, runner in runners.items():
                detector.backbone.body = RuntimeBody(runner, return_layers)
                try:
                    with torch.no_grad():
                        o = {k: v.cpu() for k, v in detector([image])[0].items()}
                finally:
                    detector.backbone.body = body
                results[kp] += to_coco_results([o], [image_ids[i]], dataset.label_to_cat_id)
                o.pop("masks", None)
                outs[kp].append(o)
    coco_gt = subset_coco(dataset.coco, image_ids)
    metrics = {k: {p: ap_points(coco_evaluate(coco_gt, results[k, p])) for p in ("fp32", "int8")} for k in KEYS}
    matching = {k: match_detections(outs[k, "fp32"], outs[k, "int8"]).to_dict() for k in KEYS}
    import onnxruntime as ort

    info = {"checkpoint": checkpoint, "epoch": meta.get("epoch"), "detector": meta["detector"],
            "backbone": arch.backbone, "transformed_convs": len(arch.convs), "data": str(data), "split": "val",
            "runtime_name": f"onnxruntime {ort.__version__} CPUExecutionProvider",
            "baseline": "the checkpoint's backbone weights at dilation 1 (the ResNet the arch transforms), "
                        "under the same FPN and heads", "reference": "the fp32 ONNX backbone on the same runtime"}
    return DetectionInt8Result(metrics=metrics, matching=matching, tolerance=tol, images=n, info=info,
                               calibration={"data": str(data), "split": calib.split, "images": calibration_images,
                                            "preprocess": "the detector's transform (normalise, resize, pad to 32)",
                                            "activations": activations})


def format_detection_int8(r: DetectionInt8Result) -> str:
    """Both ΔAP rows (int8 - fp32) for the transformed and the baseline backbone, and the verdict."""
    from natsdeploy.data.evaluate import METRICS

    def cell(v: float) -> str:
        return f"{v:>8.2f}" if v >= 0 else f"{'n/a':>8}"

    i, c = r.info, r.calibration
    lines = [f"natsdeploy parity --precision int8: {i['detector']} on {i['backbone']} ({i['transformed_convs']} "
             f"transformed convs), checkpoint {i['checkpoint']} (epoch {i['epoch']}), {i['data']} val: {r.images} images",
             f"runtime: {i['runtime_name']}; int8 backbones calibrated on {c['images']} images of {c['data']} "
             f"{c['split']}; reference: {i['reference']}", "",
             "  " + f"{'bbox':<18}" + "".join(f"{k:>8}" for k in METRICS) + "   (AP points, 0-100 scale)"]
    for key in KEYS:
        for prec in ("fp32", "int8"):
            lines.append("  " + f"{key + ' ' + prec:<18}" + "".join(cell(r.metrics[key][prec][k]) for k in METRICS))
    for key in KEYS:
        lines.append("  " + f"{'Δ ' + key:<18}" + "".join(f"{r.delta[key][k]:>+8.2f}" for k in METRICS))
    lines.append("")
    for key in KEYS:
        m = r.matching[key]
        lines.append(f"{key}: int8 detections matching the fp32 run's (same class, IoU >= {m['iou']:g}): "
                     f"{m['matched']}/{m['reference_detections']}")
    worst = max(abs(r.delta["model"][k]) - abs(r.delta["baseline"][k]) for k in METRICS)
    lines.append(f"verdict: {'PASS' if r.passed else 'FAIL'} (per metric |Δ model| - |Δ baseline| at most "
                 f"{worst:+.3f} AP points; tolerance {r.tolerance:g}; baseline: {i['baseline']})")
    return "\n".join(lines)
