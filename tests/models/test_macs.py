"""MACs from the spec alone agree with counting the built torchvision network (natsdeploy.verify.count)."""

from __future__ import annotations

import pytest
import torch

from natsdeploy.models.build import build_baseline
from natsdeploy.models.macs import backbone_macs, conv3x3_macs_per_channel
from natsdeploy.specs import BACKBONES
from natsdeploy.verify.count import count


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "resnext101_32x4d"])
@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 67, 93)])  # odd sizes: stride-2 rounding
def test_spec_macs_match_counted_model(backbone, shape):
    spec = BACKBONES[backbone]
    with torch.device("meta"):
        counted = count(build_baseline(backbone), shape)
    assert backbone_macs(spec, shape) == counted.macs
    per_channel = conv3x3_macs_per_channel(spec, shape)
    assert list(per_channel) == list(spec.convs)
    for name, info in spec.convs.items():
        assert per_channel[name] * info.out_channels == counted.per_module[name][1], name
