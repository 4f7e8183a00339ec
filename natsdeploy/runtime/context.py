"""The skeleton search and train loops share: run context, config record, resume, epoch begin and end.

Each loop keeps only what is its own (data, model, optimisers, the steps of an epoch, what it
records); where it runs, how its config is stored in a checkpoint, how a checkpoint is resumed and
how an epoch starts and ends under DDP are written once here, so both resume bit-identically the
same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from natsdeploy.arch import Arch
from natsdeploy.checkpoint import fit_state_dict, load_checkpoint, restore_state
from natsdeploy.errors import UsageError
from natsdeploy.runtime.distributed import average_bn_buffers, dist_info, wrap_ddp
from natsdeploy.runtime.rng import seed_all, set_rng_state
from natsdeploy.runtime.step import progress

__all__ = ["RunContext", "config_dict", "check_resume"]


def config_dict(cfg: Any) -> dict[str, Any]:
    """A loop's config dataclass as plain values, so a checkpoint holding it loads with `weights_only=True`.

    An Arch becomes its dict, a path its string, a tuple a list, and weights passed in as a state
    dict the note "state dict passed in".
    """
    if not is_dataclass(cfg):
        raise TypeError(f"config_dict: got {type(cfg).__name__}, expected a dataclass instance")
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, Arch):
            v = v.to_dict()
        elif isinstance(v, os.PathLike):
            v = os.fspath(v)
        elif f.name == "weights" and v is not None and not isinstance(v, str):
            v = "state dict passed in"
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


@dataclass(frozen=True)
class RunContext:
    """Where a loop runs (rank and world size under torchrun, device) and where it checkpoints."""

    rank: int
    world: int
    device: torch.device
    checkpoint: Path

    @classmethod
    def create(cls, *, device: str | torch.device, out: str | os.PathLike[str]) -> RunContext:
        """This process's context; `out/checkpoint.pth` is the checkpoint path."""
        rank, world = dist_info()
        return cls(rank=rank, world=world, device=torch.device(device), checkpoint=Path(out) / "checkpoint.pth")

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @staticmethod
    def seed(seed: int) -> None:
        """Seed every RNG before the loop draws from any (data, init, sampling)."""
        seed_all(seed)

    def place(self, model: nn.Module, *, find_unused: bool = False) -> tuple[nn.Module, nn.Module]:
        """(model, net to call): `model` on the device (channels_last on CUDA), under DDP when world > 1."""
        model = model.to(self.device)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        return wrap_ddp(model, self.device, self.world, find_unused=find_unused)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """AMP loss scaling on CUDA; a pass-through elsewhere."""
        return torch.amp.GradScaler("cuda", enabled=self.cuda)

    def resume(self, kind: str, *, enabled: bool, model: nn.Module, states: Mapping[str, Any],
               check: Callable[[dict[str, Any]], None], log: Callable[[str], None]) -> dict[str, Any] | None:
        """Continue from the checkpoint when `enabled` and it exists; the checkpoint read, or None.

        `kind`: the checkpoint schema (`natsdeploy.checkpoint.SEARCH` / `TRAIN`). `check(ck)` raises
        when the file was written under other settings. Then the model's weights, each of `states`
        (checkpoint key -> object with `load_state_dict`: optimisers, schedulers, scaler) and every
        RNG are restored, so the next epoch runs as it would have without the interruption.
        """
        path = self.checkpoint
        if not enabled:
            return None
        if not path.exists():
            log(f"--resume: no checkpoint at {path}; starting from scratch")
            return None
        ck = load_checkpoint(path, kind, flag="--resume")
        check(ck)
        where = f"--resume: {path}"
        fit_state_dict(ck["model"], model, where=where)
        model.load_state_dict(ck["model"])
        for key, obj in states.items():
            restore_state(key, obj.load_state_dict, ck[key], where=where)
        set_rng_state(ck["rng"])
        log(f"resumed from {path} at epoch {ck['epoch']}")
        return ck

    def begin_epoch(self, epoch: int, epochs: int, *, net: nn.Module, samplers: Iterable[Any], steps: int,
                    show: bool) -> Any:
        """Training mode, each DistributedSampler on `epoch`; a progress bar on rank 0 when `show` (else None)."""
        net.train()
        for sampler in samplers:
            sampler.set_epoch(epoch)
        return progress(steps, f"epoch {epoch + 1}/{epochs}", enabled=show and self.rank == 0)

    def end_epoch(self, model: nn.Module, bar: Any) -> None:
        """Close the bar and give every rank the same BatchNorm statistics (before evaluating or saving)."""
        if bar is not None:
            bar.close()
        average_bn_buffers(model, self.world)

    def commit(self, write: Callable[[], None]) -> None:
        """Rank 0 writes the epoch's files (checkpoint, logs); every rank waits until it has."""
        if self.rank == 0:
            write()
        if self.world > 1:
            torch.distributed.barrier()


def check_resume(saved: dict[str, Any], current: dict[str, Any], *, path: Any) -> None:
    """Refuse to resume a checkpoint written under other settings that shape the model or optimiser.

    `saved` / `current`: setting name -> value (as the checkpoint recorded it / as this run has it).
    Raises UsageError (one line, exit 2) naming the first setting that differs.
    """
    for key, want in current.items():
        got = saved.get(key)
        if got != want:
            raise UsageError(f"--resume: {path} was written with {key}={got!r}, expected {want!r} as this run has it "
                             "(resume with the same settings, or use a new --out)")
