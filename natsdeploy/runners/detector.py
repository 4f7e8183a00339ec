"""A runtime backbone inside a torchvision detector: an nn.Module standing in for `detector.backbone.body`
that runs an exported backbone on any `natsdeploy.runners` Runner (ONNX Runtime, OpenVINO, TensorRT)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from natsdeploy.runners import Runner

__all__ = ["RuntimeBody", "feature_name"]


def feature_name(layer: str) -> str:
    """The exported backbone's output name for a ResNet stage: layer1 -> c2, ..., layer4 -> c5."""
    return f"c{int(layer[len('layer'):]) + 1}"


class RuntimeBody(nn.Module):
    """An nn.Module standing in for `detector.backbone.body`: runs `runner` (feed {"images": N x 3 x H x W},
    outputs c2..c5) and returns the OrderedDict the IntermediateLayerGetter would (its `return_layers`:
    layer1-4 -> '0'..'3' for Faster/Mask R-CNN, layer2-4 -> '0'..'2' for RetinaNet). Counts its calls."""

    def __init__(self, runner: Runner, return_layers: Mapping[str, str]) -> None:
        super().__init__()
        self.runner = runner
        self.return_layers = dict(return_layers)  # {"layer1": "0", ...} as IntermediateLayerGetter has it
        self.calls = 0

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        self.calls += 1
        outs = self.runner.run({"images": x.detach().float().cpu().numpy()})
        return OrderedDict((name, torch.from_numpy(np.ascontiguousarray(outs[feature_name(layer)]))
                            .to(device=x.device, dtype=x.dtype))
                           for layer, name in self.return_layers.items())
