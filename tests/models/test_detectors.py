"""`build_detector`: torchvision's BatchNorm / frozen-layer rule for pretrained vs from-init backbones."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from natsdeploy import load_arch
from natsdeploy.models.build import build_backbone
from natsdeploy.models.detectors import build_detector
from tests.conftest import EXAMPLES

ARCH = load_arch(EXAMPLES / "resnet18_nats_c.json")


def _detector(**kw):
    torch.manual_seed(0)
    return build_detector("faster_rcnn", build_backbone(ARCH), num_classes=3, min_size=64, max_size=64, **kw)


def _trainable_stages(model) -> set[str]:
    return {n.split(".")[0] for n, p in model.backbone.body.named_parameters() if p.requires_grad}


def test_pretrained_backbone_gets_frozen_bn_and_frozen_stem():
    m = _detector(pretrained=True)
    body = m.backbone.body
    assert not any(isinstance(x, nn.BatchNorm2d) for x in body.modules())
    assert sum(isinstance(x, FrozenBatchNorm2d) for x in body.modules()) > 0
    assert _trainable_stages(m) == {"layer2", "layer3", "layer4"}


def test_backbone_from_init_keeps_trainable_bn_and_trains_every_layer():
    m = _detector(pretrained=False)
    body = m.backbone.body
    assert not any(isinstance(x, FrozenBatchNorm2d) for x in body.modules())
    bns = [x for x in body.modules() if isinstance(x, nn.BatchNorm2d)]
    assert bns and all(b.weight.requires_grad for b in bns)
    assert {"conv1", "bn1", "layer1", "layer4"} <= _trainable_stages(m)


def test_explicit_trainable_layers_and_bad_value():
    assert _trainable_stages(_detector(pretrained=True, trainable_layers=1)) == {"layer4"}
    with pytest.raises(ValueError, match=r"trainable_layers: got 6, expected 0..5"):
        _detector(pretrained=True, trainable_layers=6)
