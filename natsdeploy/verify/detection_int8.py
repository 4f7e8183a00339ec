"""`parity --precision int8`: detection AP with the int8 backbone against the fp32 one, transformed and baseline.

The checkpoint's detector runs on the val split four times with the same transform, FPN, heads and NMS:
its backbone exported as fp32 ONNX and as an int8 QDQ graph (`natsdeploy.export.int8`), both on ONNX
Runtime CPU, for the transformed backbone and for the baseline backbone (the same weights at
dilation 1, `transformed_state_dict_to_baseline`, under the same FPN and heads). Both int8 graphs are
calibrated on the same first N images of the data's train split (or of `calibration`: a folder of images
or another COCO-format set, `export.int8.open_calibration`), preprocessed by the detector's own
transform. Reported: the six COCO box metrics of each run and, per backbone, the int8 - fp32 delta
(AP points, 0-100) and how the int8 run's detections match the fp32 run's. Verdict
(`natsdeploy.verify.bootstrap`): per metric, D = delta of the transformed - delta of the baseline, with a
paired bootstrap interval over the val images from each run's per-image COCO matches; pass when its lower
end is above -tolerance (default 0.5 AP points: the transformation costs at most that much extra under
quantization), fail when its upper end is below it, otherwise inconclusive (more images needed). The old
fixed rule, |delta of the transformed| <= |delta of the baseline| + tolerance, is still reported, not
deciding: on a few hundred objects one metric moves by a point for a handful of detections. The fp32
ONNX backbone equals the PyTorch one within 1e-4 (`natsdeploy parity`, fp32).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from natsdeploy.verify.bootstrap import (DEFAULT_REPLICATES, DEFAULT_SEED, EXIT_CODES, Int8Verdict, format_verdict,
                                        int8_verdict)

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
    verdict: Int8Verdict  # the deciding rule: a paired bootstrap over the images
    info: dict = field(default_factory=dict)

    @property
    def delta(self) -> dict[str, dict[str, float]]:
        return {k: {m: self.metrics[k]["int8"][m] - self.metrics[k]["fp32"][m] for m in self.metrics[k]["fp32"]}
                for k in KEYS}

    @property
    def outcome(self) -> str:
        """pass, fail or inconclusive (more images needed): the bootstrap verdict."""
        return self.verdict.outcome

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    @property
    def fixed_rule_passed(self) -> bool:
        """The old fixed rule, shown, not deciding: per metric |Δ model| <= |Δ baseline| + tolerance."""
        d = self.delta
        return all(math.isfinite(d["model"][m]) and abs(d["model"][m]) <= abs(d["baseline"][m]) + self.tolerance + 1e-9
                   for m in d["model"])

    def to_dict(self) -> dict:
        return {"format": "natsdeploy-detection-parity-int8/2", "outcome": self.outcome, "passed": self.passed,
                "exit_status": EXIT_CODES[self.outcome],
                "precision": "int8", "images": self.images, "metric_scale": "AP points (0-100); -1 = undefined",
                "tolerance_ap_points": self.tolerance, "rule": self.verdict.rule, "verdict": self.verdict.to_dict(),
                "fixed_rule": {"passed": self.fixed_rule_passed, "deciding": False, "rule": "per metric "
                               "|delta model| <= |delta baseline| + tolerance (delta = int8 - fp32)"},
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
                          calibration: str | None = None, calibration_images: int = 64, limit: int | None = None,
                          tolerance: float | None = None, threads: int | None = None, activations: str = "s8",
                          replicates: int = DEFAULT_REPLICATES, bootstrap_seed: int = DEFAULT_SEED,
                          log=print) -> DetectionInt8Result:
    """Run the checkpoint's detector with fp32 and int8 backbones (transformed and baseline) on ORT CPU
    (`activations`: s8 or u8, as `export --int8-activations`), calibrated on `calibration` (default: `data`);
    the verdict bootstraps `replicates` resamples of the val images drawn with `bootstrap_seed`."""
    import torch

    from natsdeploy.data.evaluate import ap_points, match_detections, subset_coco, to_coco_results
    from natsdeploy.data.per_image_ap import coco_evaluate_per_image
    from natsdeploy.export.int8 import calibration_count, open_calibration, quantize_pair
    from natsdeploy.models.trained import open_for_evaluation
    from natsdeploy.runners import OrtRunner
    from natsdeploy.runners.detector import RuntimeBody

    tol = float(DEFAULT_INT8_AP_TOLERANCE if tolerance is None else tolerance)
    checkpoint = str(checkpoint)
    setup = open_for_evaluation(checkpoint, arch, data, device="cpu")
    detector, meta, dataset = setup.detector, setup.meta, setup.dataset
    calib_spec = data if calibration is None else calibration
    calib = open_calibration(calib_spec, calibration_images, field="--data" if calibration is None else "--calibration",
                             seed=setup.seed, log=log)
    calibration_images = calibration_count(calib, calibration_images)
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
        f"{calib_spec} {calib.split}")
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
    evaluated = {kp: coco_evaluate_per_image(coco_gt, results[kp]) for kp in results}  # one COCOeval per arm
    metrics = {k: {p: ap_points(evaluated[k, p][0]) for p in ("fp32", "int8")} for k in KEYS}
    log(f"int8 verdict: {replicates} paired bootstrap resamples of the {n} images (seed {bootstrap_seed})")
    verdict = int8_verdict({kp: e[1] for kp, e in evaluated.items()}, tolerance=tol, replicates=replicates,
                           seed=bootstrap_seed)
    matching = {k: match_detections(outs[k, "fp32"], outs[k, "int8"]).to_dict() for k in KEYS}
    import onnxruntime as ort

    info = {"checkpoint": checkpoint, "epoch": meta.get("epoch"), "detector": meta["detector"],
            "backbone": arch.backbone, "transformed_convs": len(arch.convs), "data": str(data), "split": "val",
            "runtime_name": f"onnxruntime {ort.__version__} CPUExecutionProvider",
            "baseline": "the checkpoint's backbone weights at dilation 1 (the ResNet the arch transforms), "
                        "under the same FPN and heads", "reference": "the fp32 ONNX backbone on the same runtime"}
    return DetectionInt8Result(metrics=metrics, matching=matching, tolerance=tol, images=n, info=info, verdict=verdict,
                               calibration={"data": str(calib_spec), "split": calib.split, "images": calibration_images,
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
    lines.append(f"fixed rule (shown, not deciding): {'PASS' if r.fixed_rule_passed else 'FAIL'} (per metric "
                 f"|Δ model| - |Δ baseline| at most {worst:+.3f} AP points; tolerance {r.tolerance:g})")
    lines += ["", format_verdict(r.verdict), f"baseline: {i['baseline']}"]
    return "\n".join(lines)

