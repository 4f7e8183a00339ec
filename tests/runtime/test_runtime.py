"""Shared loop plumbing: RNG state round trip, resume-settings check, BN averaging outside DDP."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from natsdeploy.runtime.context import check_resume

from natsdeploy.runtime.distributed import average_bn_buffers

from natsdeploy.runtime.rng import rng_state, set_rng_state

from natsdeploy.runtime.step import to_device
from natsdeploy.errors import UsageError


def test_rng_state_round_trip_replays_every_generator():
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_check_resume_names_the_first_differing_setting():
    check_resume({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}, path="ck.pth")
    with pytest.raises(UsageError, match=r"^--resume: ck.pth was written with b=\[1, 2\], expected \[1, 3\] as this run"):
        check_resume({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 3]}, path="ck.pth")
    with pytest.raises(UsageError, match=r"was written with c=None, expected 0"):  # a setting the file never recorded
        check_resume({}, {"c": 0}, path="ck.pth")


def test_average_bn_buffers_single_process_is_a_no_op():
    bn = nn.BatchNorm2d(4)
    bn.train()(torch.randn(2, 4, 3, 3))
    before = bn.running_mean.clone(), bn.running_var.clone()
    average_bn_buffers(nn.Sequential(bn), world=1)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])


def test_to_device_moves_tensors_and_keeps_the_rest():
    images, targets = to_device([torch.zeros(3, 2, 2)], [{"boxes": torch.zeros(1, 4), "image_id": 7}], "cpu")
    assert images[0].shape == (3, 2, 2) and targets[0]["image_id"] == 7 and targets[0]["boxes"].shape == (1, 4)


def test_run_distributed_single_process_and_divergence(capsys):
    from natsdeploy.runtime.distributed import run_distributed

    assert run_distributed(lambda dev: f"ran on {dev}", "cpu") == ("ran on cpu", 0)

    def diverge(dev):
        raise FloatingPointError("loss is nan ({'loss_box_reg': nan}); lower the learning rate")

    assert run_distributed(diverge, "cpu") == (None, 1)
    assert capsys.readouterr().err == "natsdeploy: error: loss is nan ({'loss_box_reg': nan}); lower the learning rate\n"


class _Toy(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))
        self.value = value

    def forward(self, images, targets):
        return {"a": (self.w * self.value).sum(), "b": self.w.sum() * 0}


def test_train_step_updates_and_refuses_non_finite_loss():
    from natsdeploy.runtime.step import train_step

    net = _Toy(1.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loss, parts = train_step(net, opt, scaler, [], [], cuda=False)
    assert loss == 2.0 and parts == {"a": 2.0, "b": 0.0}
    assert torch.equal(net.w.detach(), torch.full((2,), 0.5))  # w - 0.5 * grad(1)
    bad = _Toy(float("nan"))
    with pytest.raises(FloatingPointError, match=r"^loss is nan \(\{'a': nan, 'b': 0.0\}\); try less"):
        train_step(bad, torch.optim.SGD(bad.parameters(), lr=0.5), scaler, [], [], cuda=False, hint="try less")
    assert torch.equal(bad.w.detach(), torch.ones(2))  # nothing stepped
