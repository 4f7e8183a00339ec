"""trunk_from_detector: the detector's body as a plain transformed ResNet, and one-line errors for a body
that is not the arch's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from natsdeploy import build_backbone, build_baseline, load_arch
from natsdeploy.errors import WeightsError
from natsdeploy.models.trunk import trunk_from_detector
from tests.conftest import EXAMPLES
from tests.helpers import seeded_state_dict

ARCH = load_arch(EXAMPLES / "resnet18_nats_c.json")


def _detector(body: nn.Module) -> SimpleNamespace:
    return SimpleNamespace(backbone=SimpleNamespace(body=body))


def test_the_trunk_carries_the_bodys_weights():
    body = build_backbone(ARCH, seeded_state_dict("resnet18", seed=2)).eval()
    trunk = trunk_from_detector(_detector(body), ARCH)
    assert not trunk.training
    want, got = body.state_dict(), trunk.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want if not k.startswith("fc."))


def test_a_body_of_another_layout_is_one_line():
    with pytest.raises(WeightsError) as e:
        trunk_from_detector(_detector(build_baseline("resnet18")), ARCH)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("detector.backbone.body: got keys missing [")
    assert msg.endswith("expected those of the resnet18 arch") and "branches" in msg


def test_a_body_with_a_wrong_shape_is_one_line():
    body = build_backbone(ARCH)
    body.conv1 = nn.Conv2d(3, 64, 5, bias=False)
    with pytest.raises(WeightsError, match=r"^detector\.backbone\.body\['conv1\.weight'\]: got shape \(64, 3, 5, 5\), "
                                           r"expected \(64, 3, 7, 7\) as the arch builds it$"):
        trunk_from_detector(_detector(body), ARCH)
