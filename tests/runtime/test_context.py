"""The skeleton search and train share: config record, resume, epoch begin/end on one process."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from natsdeploy.arch import Arch
from natsdeploy.checkpoint import SEARCH
from natsdeploy.runtime.context import RunContext, config_dict


@dataclass
class _Cfg:
    arch: object = None
    out: object = "out"
    weights: object = None
    stages: tuple[str, ...] = ("layer2", "layer3")
    detector_kwargs: dict = field(default_factory=dict)


def test_config_dict_is_plain_values():
    cfg = _Cfg(arch=Arch(backbone="resnet18"), out=Path("runs/a"), weights={"fc.weight": torch.zeros(1)},
               detector_kwargs={"box_score_thresh": 0.1})
    assert config_dict(cfg) == {"arch": Arch(backbone="resnet18").to_dict(), "out": "runs/a",
                                "weights": "state dict passed in", "stages": ["layer2", "layer3"],
                                "detector_kwargs": {"box_score_thresh": 0.1}}
    assert config_dict(_Cfg(weights="imagenet"))["weights"] == "imagenet"
    with pytest.raises(TypeError, match="expected a dataclass instance"):
        config_dict({"out": "x"})


def test_context_on_one_process(tmp_path):
    run = RunContext.create(device="cpu", out=tmp_path / "o")
    assert (run.rank, run.world, run.cuda) == (0, 1, False)
    assert run.checkpoint == tmp_path / "o" / "checkpoint.pth"
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    placed, net = run.place(model)
    assert placed is net is model  # no DDP wrapper for one process
    assert not run.grad_scaler().is_enabled()


def test_resume_without_a_file_or_flag_starts_fresh(tmp_path):
    run = RunContext.create(device="cpu", out=tmp_path)
    logs: list[str] = []

    def refuse(ck):
        raise AssertionError("check must not run without a checkpoint")

    kwargs = dict(model=nn.Linear(2, 2), states={}, check=refuse, log=logs.append)
    assert run.resume(SEARCH, enabled=False, **kwargs) is None and logs == []
    assert run.resume(SEARCH, enabled=True, **kwargs) is None
    assert logs == [f"--resume: no checkpoint at {tmp_path / 'checkpoint.pth'}; starting from scratch"]


class _Sampler:
    def __init__(self):
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_epoch_begin_end_and_commit_on_rank_0():
    run = RunContext(rank=0, world=1, device=torch.device("cpu"), checkpoint=Path("ck.pth"))
    net = nn.BatchNorm1d(3).eval()
    samplers = [_Sampler(), _Sampler()]
    assert run.begin_epoch(4, 6, net=net, samplers=samplers, steps=2, show=False) is None
    assert net.training and [s.epochs for s in samplers] == [[4], [4]]
    net(torch.randn(5, 3))
    before = net.running_mean.clone()
    run.end_epoch(net, None)  # one process: BN statistics untouched
    assert torch.equal(net.running_mean, before)
    wrote: list[int] = []
    run.commit(lambda: wrote.append(1))
    RunContext(rank=1, world=1, device=torch.device("cpu"), checkpoint=Path("ck.pth")).commit(lambda: wrote.append(2))
    assert wrote == [1]  # only rank 0 writes
