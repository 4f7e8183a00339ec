"""Detector exports: a detector's backbone (dynamic-shape, the exporter's fold + rewrites) and the whole
detector as one ONNX graph (torchvision's TorchScript-exportable detection models)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["export_detector_backbone", "export_whole_detector"]


def export_detector_backbone(detector: Any, arch: Any, path: str | os.PathLike, *, input_shape: Sequence[int]) -> Path:
    """The detector's backbone as dynamic-shape ONNX (input `images`, outputs c2..c5) at `path`."""
    from natsdeploy.export.onnx import check_onnx, save_onnx, to_onnx
    from natsdeploy.models.trunk import trunk_from_detector

    trunk = trunk_from_detector(detector, arch)
    proto = to_onnx(trunk, input_shape=tuple(input_shape), dynamic=True, opset=17, form="branches",
                    graph_name=f"{arch.backbone}-detector-backbone").model
    check_onnx(proto)
    return save_onnx(proto, path)


def export_whole_detector(detector: Any, path: str | os.PathLike, *, sample: Any) -> Path:
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
