"""natsdeploy.models.trained: a train checkpoint read back as the detector that was trained, and its bad fields."""

from __future__ import annotations

import pytest
import torch

from natsdeploy import load_arch
from natsdeploy.arch import Arch
from natsdeploy.errors import CheckpointError, DatasetError, UsageError
from natsdeploy.models.trained import (backbone_weights, build_train_detector, detector_from_checkpoint,
                                       open_for_evaluation)
from natsdeploy.models.transfer import restore_weights
from tests.conftest import EXAMPLES, FAST

ARCH = load_arch(EXAMPLES / "resnet18_nats_c.json")


@pytest.fixture(scope="module")
def checkpoint() -> dict:
    """What `natsdeploy train` stores about its model, for a seeded (untrained) Faster R-CNN."""
    torch.manual_seed(0)
    options = dict(FAST, box_score_thresh=0.0)  # an untrained model scores below the default 0.05: keep all
    model = build_train_detector("faster_rcnn", ARCH, None, 4, 64, 96, options, pretrained=False,
                                 trainable_layers=None)
    return {"detector": "faster_rcnn", "detector_kwargs": options, "arch": ARCH.to_dict(), "num_classes": 4,
            "min_size": 64, "max_size": 96, "pretrained": False, "trainable_layers": None,
            "model": model.state_dict(), "label_to_cat_id": {1: 1, 2: 2, 3: 7}, "epoch": 1, "metrics": {},
            "config": {}, "_reference": model.eval()}


def test_the_checkpoint_rebuilds_the_same_detector_without_touching_the_rng(checkpoint):
    torch.manual_seed(3)
    before = torch.get_rng_state()
    model, arch, meta = detector_from_checkpoint(checkpoint, path="ck.pth")
    assert torch.equal(torch.get_rng_state(), before)  # the init it overwrites is drawn on a forked RNG
    assert arch == ARCH and not model.training
    assert meta["label_to_cat_id"] == {1: 1, 2: 2, 3: 7} and meta["path"] == "ck.pth" and meta["min_size"] == 64
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        got, want = model(images)[0], checkpoint["_reference"](images)[0]
    assert set(got) == {"boxes", "scores", "labels"} and len(got["boxes"]) > 10
    assert all(torch.equal(v, checkpoint["model"][k]) for k, v in model.state_dict().items())
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


def test_backbone_weights_are_the_torchvision_layout_inverse_of_the_transfer(checkpoint):
    sd = backbone_weights(checkpoint)
    body = {k[len("backbone.body."):]: v for k, v in checkpoint["model"].items() if k.startswith("backbone.body.")}
    want = restore_weights(body, ARCH)
    assert set(sd) == set(want) and all(torch.equal(sd[k], want[k]) for k in want)
    assert "layer1.0.conv1.weight" in sd and not any(".branches." in k for k in sd)


@pytest.mark.parametrize("field, value, expected", [
    ("detector", "yolo", r"^--checkpoint: ck.pth: key 'detector': got 'yolo', expected one of \["),
    ("detector_kwargs", {"rpn_typo": 3}, r"^--checkpoint: ck.pth: key 'detector_kwargs': got 'rpn_typo=3'"),
])
def test_a_tampered_field_is_one_line_and_builds_nothing(checkpoint, field, value, expected):
    with pytest.raises(CheckpointError, match=expected) as e:
        detector_from_checkpoint({**checkpoint, field: value}, path="ck.pth")
    assert "\n" not in str(e.value)


def test_a_checkpoint_without_a_backbone_is_refused(checkpoint):
    heads_only = {k: v for k, v in checkpoint["model"].items() if not k.startswith("backbone.body.")}
    with pytest.raises(CheckpointError, match=r"^--checkpoint: no 'backbone.body.\*' weights"):
        backbone_weights({**checkpoint, "model": heads_only})


def test_open_for_evaluation_checks_the_arch_and_the_categories(checkpoint, tiny_synth, tmp_path):
    """The detector in eval mode with the split it is scored on; another arch or other category ids: one line."""
    from natsdeploy.checkpoint import TRAIN, save_checkpoint
    from natsdeploy.runtime.rng import rng_state

    payload = {k: v for k, v in checkpoint.items() if not k.startswith("_")}
    payload.update(optimizer=torch.optim.SGD([torch.zeros(1)], lr=0.1).state_dict(), scheduler={}, scaler={},
                   rng=rng_state(), metrics=[], config={"seed": 0}, label_to_cat_id={1: 1, 2: 2, 3: 3})
    path = save_checkpoint(tmp_path / "ck.pth", TRAIN, payload)
    setup = open_for_evaluation(path, ARCH, tiny_synth)
    assert not setup.detector.training and setup.seed == 0 and setup.meta["path"] == str(path)
    assert setup.dataset.split == "val" and setup.dataset.label_to_cat_id == {1: 1, 2: 2, 3: 3}
    with pytest.raises(UsageError, match=r"^--checkpoint: got .*ck\.pth' trained on another arch: convs") as e:
        open_for_evaluation(path, Arch(backbone="resnet18"), tiny_synth)
    assert "\n" not in str(e.value)
    path = save_checkpoint(tmp_path / "ck7.pth", TRAIN, {**payload, "label_to_cat_id": {1: 1, 2: 2, 3: 7}})
    with pytest.raises(DatasetError, match=r"instances_val\.json: got category ids \[1, 2, 3\], expected \[1, 2, 7\], "
                                           "those the checkpoint was trained on$"):
        open_for_evaluation(path, ARCH, tiny_synth)

