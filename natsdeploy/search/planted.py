"""Planted-arch recovery: proof that the search machinery finds an arch it is known to be able to find.

A transformed backbone with a random genotype per channel group (the *planted* arch) is the
teacher. The student is the super-net from the same baseline weights, BN in eval mode, every
weight frozen; only alpha is trained (Adam) to match the teacher's layer2..4 outputs (c3..c5) on
random inputs. The planted genotype in every group reproduces the teacher exactly, so decoding
the student's alphas must give back the planted arch; a bug that maps alpha groups to the wrong
channels, or decode to the wrong branches, shows as low recovery.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from natsdeploy.arch import Arch
from natsdeploy.errors import ArchError
from natsdeploy.search.decode import decode, genotypes, searchable_convs
from natsdeploy.specs import BACKBONES

__all__ = ["RecoveryResult", "plant_alphas", "plant_arch", "group_dilations", "recovery", "recover_planted"]

STAGES = ("layer2", "layer3", "layer4")


@dataclass(frozen=True)
class RecoveryResult:
    """What `recover_planted` found: recovery overall and per stage, with the two archs and the run's cost."""

    backbone: str
    sampling: str
    input_size: int
    steps: int
    recovery: float
    per_stage: dict[str, float]
    n_groups: int
    wall_s: float
    loss_first: float
    loss_last: float
    planted: Arch
    found: Arch
    alphas: dict[str, torch.Tensor] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (archs as their convs' branch lists)."""
        return {"backbone": self.backbone, "sampling": self.sampling, "input_size": self.input_size,
                "steps": self.steps, "recovery": self.recovery, "per_stage": dict(self.per_stage),
                "n_groups": self.n_groups, "wall_s": self.wall_s, "loss_first": self.loss_first,
                "loss_last": self.loss_last, "settings": dict(self.settings)}


def plant_alphas(backbone: str, *, preset: str, groups: int, stages: Sequence[str] = STAGES,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """One-hot alphas [groups, n_genotypes] per searchable conv, a uniformly random genotype per group (seeded)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in searchable_convs(backbone, stages):
        n_geno = len(genotypes(preset, BACKBONES[backbone].convs[name].stage))
        out[name] = F.one_hot(torch.randint(n_geno, (groups,), generator=g), n_geno).float()
    return out


def plant_arch(backbone: str, *, preset: str, groups: int, stages: Sequence[str] = STAGES, seed: int = 0) -> Arch:
    """The planted arch: `decode` of `plant_alphas` (so it follows the project's real group->channel mapping)."""
    return decode(plant_alphas(backbone, preset=preset, groups=groups, stages=stages, seed=seed), backbone, preset)


def group_dilations(arch: Arch, *, groups: int) -> dict[str, list[tuple[int, int] | None]]:
    """Per conv of `arch`, the dilation of each of its `groups` channel groups (None: the group is split)."""
    out: dict[str, list[tuple[int, int] | None]] = {}
    for name, ct in arch.convs.items():
        c = arch.spec.convs[name].out_channels
        if c % groups:
            raise ArchError(f"groups: got {groups}, expected a divisor of {c} ({name} out_channels)")
        perm = list(ct.permutation) if ct.permutation is not None else list(range(c))
        per_channel: list[tuple[int, int] | None] = [None] * c
        o = 0
        for b in ct.branches:
            for k in perm[o:o + b.channels]:
                per_channel[k] = tuple(b.dilation)
            o += b.channels
        w = c // groups
        out[name] = [per_channel[i * w] if len(set(per_channel[i * w:(i + 1) * w])) == 1 else None
                     for i in range(groups)]
    return out


def recovery(found: Arch, planted: Arch, *, groups: int) -> tuple[float, dict[str, float]]:
    """(fraction of groups of `planted` whose dilation in `found` is the same, the same per stage)."""
    want, got = group_dilations(planted, groups=groups), group_dilations(found, groups=groups)
    hits: dict[str, list[bool]] = {}
    for name, dils in want.items():
        stage = planted.spec.convs[name].stage
        have = got.get(name, [(1, 1)] * groups)  # a conv absent from `found` is all dilation 1
        hits.setdefault(stage, []).extend(a == b for a, b in zip(dils, have))
    flat = [h for v in hits.values() for h in v]
    return sum(flat) / len(flat), {s: sum(v) / len(v) for s, v in sorted(hits.items())}


def _stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))


def _features(model: nn.Module, h: torch.Tensor) -> list[torch.Tensor]:
    c3 = model.layer2(h)
    c4 = model.layer3(c3)
    return [c3, c4, model.layer4(c4)]


def _forced_features(model: nn.Module, h: torch.Tensor, teacher: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each student stage on the teacher's input to that stage (stages learn independently)."""
    return [model.layer2(h), model.layer3(teacher[0]), model.layer4(teacher[1])]


def _baseline_state_dict(backbone: str, weights: Any, seed: int) -> dict[str, torch.Tensor]:
    from natsdeploy.models.build import build_baseline

    if weights is not None:
        return build_baseline(backbone, weights).state_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_baseline(backbone).state_dict()


def recover_planted(backbone: str, *, groups: int = 8, preset: str = "NATS-C", input_size: int = 128,
                    steps: int = 150, lr: float = 0.1, seed: int = 0, sampling: str = "softmax", tau: float = 1.0,
                    tau_end: float | None = None, batch_size: int = 2, weights: Any = None,
                    stages: Sequence[str] = STAGES, teacher_forcing: bool = False, estimator: str = "local",
                    device: str = "cpu") -> RecoveryResult:
    """Plant a random arch (seeded), train only the super-net's alphas to match it, decode, and score.

    `weights`: baseline weights (None: torchvision's init drawn with `seed`). `tau_end`: with gumbel,
    anneal tau exponentially from `tau` to `tau_end` over the steps. `estimator`: gumbel's alpha
    gradient ("local" or "st", `natsdeploy.search.estimators`). Inputs are N(0, 1) images of
    `input_size` px, a fresh batch per step. `teacher_forcing`: each student stage gets the
    teacher's input to it (stages learn independently; default: the student runs end to end).
    """
    from natsdeploy.models.build import build_backbone
    from natsdeploy.search.supernet import supernet_alphas

    if any(s not in STAGES for s in stages):
        raise ArchError(f"stages: got {list(stages)}, expected some of {list(STAGES)}")
    dev = torch.device(device)
    base = _baseline_state_dict(backbone, weights, seed)
    planted = plant_arch(backbone, preset=preset, groups=groups, stages=stages, seed=seed)
    teacher = build_backbone(planted, base).to(dev).eval()
    student = _frozen_student(backbone, base, preset=preset, groups=groups, stages=stages, sampling=sampling,
                              tau=tau, estimator=estimator).to(dev)
    t0 = time.perf_counter()
    losses = _train_alphas(student, teacher, steps=steps, lr=lr, seed=seed, input_size=input_size,
                           batch_size=batch_size, tau=(tau, tau_end) if sampling == "gumbel" else None,
                           teacher_forcing=teacher_forcing)
    wall = time.perf_counter() - t0
    learned = supernet_alphas(student)
    found = decode(learned, backbone, preset)
    overall, per_stage = recovery(found, planted, groups=groups)
    settings = {"groups": groups, "preset": preset, "lr": lr, "seed": seed, "tau": tau, "tau_end": tau_end,
                "estimator": estimator if sampling == "gumbel" else None,
                "batch_size": batch_size, "stages": list(stages), "teacher_forcing": teacher_forcing,
                "device": device, "weights": "torchvision init (seeded)" if weights is None else
                "given" if not isinstance(weights, (str, os.PathLike)) else str(weights)}
    return RecoveryResult(backbone=backbone, sampling=sampling, input_size=input_size, steps=steps,
                          recovery=overall, per_stage=per_stage,
                          n_groups=sum(len(v) for v in group_dilations(planted, groups=groups).values()),
                          wall_s=wall, loss_first=losses[0] if losses else float("nan"),
                          loss_last=losses[-1] if losses else float("nan"), planted=planted, found=found,
                          alphas=learned, settings=settings)


def _frozen_student(backbone: str, base: dict[str, torch.Tensor], **kw: Any) -> nn.Module:
    """The super-net from `base` with every weight frozen and BN in eval mode; only alpha trains."""
    from natsdeploy.search.supernet import ChannelMixedConv, build_supernet_backbone

    student = build_supernet_backbone(backbone, weights=base, **kw).eval()
    for name, p in student.named_parameters():
        p.requires_grad_(name.endswith(".alpha"))
    for m in student.modules():  # only the mixed convs are in training mode (gumbel: they sample)
        if isinstance(m, ChannelMixedConv):
            m.train()
    return student


def _train_alphas(student: nn.Module, teacher: nn.Module, *, steps: int, lr: float, seed: int, input_size: int,
                  batch_size: int, tau: tuple[float, float | None] | None, teacher_forcing: bool) -> list[float]:
    """Adam on the student's alphas against the teacher's c3..c5 (MSE, each level over its mean square)."""
    from natsdeploy.search.supernet import arch_parameters, set_tau

    dev = next(student.parameters()).device
    opt = torch.optim.Adam(arch_parameters(student), lr=lr)
    gen = torch.Generator(device=dev).manual_seed(seed + 1)
    losses: list[float] = []
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed + 2)  # the gumbel noise
        for step in range(steps):
            if tau is not None and tau[1] is not None:
                set_tau(student, tau[0] * (tau[1] / tau[0]) ** (step / max(steps - 1, 1)))
            x = torch.randn(batch_size, 3, input_size, input_size, generator=gen, device=dev)
            with torch.no_grad():
                h = _stem(teacher, x)
                want = _features(teacher, h)
            got = _forced_features(student, h, want) if teacher_forcing else _features(student, h)
            loss = sum(F.mse_loss(s, t) / t.square().mean().clamp_min(1e-12) for s, t in zip(got, want))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses
