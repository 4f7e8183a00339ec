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


def test_detector_options_parse_to_typed_torchvision_keywords():
    from natsdeploy.models.detectors import parse_detector_options

    got = parse_detector_options("faster_rcnn", ["box_batch_size_per_image=128", "box_score_thresh=0.2"])
    assert got == {"box_batch_size_per_image": 128, "box_score_thresh": 0.2}
    assert isinstance(got["box_batch_size_per_image"], int)
    m = _detector(pretrained=True, **got)
    assert m.roi_heads.fg_bg_sampler.batch_size_per_image == 128 and m.roi_heads.score_thresh == 0.2
    assert parse_detector_options("retinanet", ["topk_candidates=500"]) == {"topk_candidates": 500}
    assert parse_detector_options("faster_rcnn", None) == {}


@pytest.mark.parametrize("item, message", [
    ("foo=1", r"--detector-option: got 'foo=1', expected KEY=VALUE with KEY one of \['box_batch_size_per_image'"),
    ("box_batch_size_per_image", r"got 'box_batch_size_per_image', expected KEY=VALUE"),
    ("box_batch_size_per_image=1.5", r"got 'box_batch_size_per_image=1.5', expected an integer >= 1 for box_batch_size"),
    ("num_classes=3", r"got 'num_classes=3', expected KEY=VALUE"),  # set by natsdeploy from the dataset
    ("rpn_post_nms_top_n_train=0", r"got 'rpn_post_nms_top_n_train=0', expected an integer >= 1"),
    ("box_score_thresh=nan", r"got 'box_score_thresh=nan', expected a number in \[0, 1\] for box_score_thresh"),
    ("box_positive_fraction=1.5", r"expected a number in \[0, 1\] for box_positive_fraction"),
])
def test_bad_detector_options_name_the_item(item, message):
    from natsdeploy.models.detectors import parse_detector_options
    from natsdeploy.errors import UsageError

    with pytest.raises(UsageError, match=message):
        parse_detector_options("faster_rcnn", [item])


def test_repeated_detector_option_is_refused():
    from natsdeploy.models.detectors import parse_detector_options
    from natsdeploy.errors import UsageError

    with pytest.raises(UsageError, match=r"got box_score_thresh twice \('box_score_thresh=0.2'\), expected each key once"):
        parse_detector_options("faster_rcnn", ["box_score_thresh=0.1", "box_score_thresh=0.2"])
