"""Bi-level NATS search (paper 4.2): weight steps on one half of the data, alpha steps on the other.

Runs on one process or under torchrun (DDP, one DistributedSampler per split). Every epoch ends
with a checkpoint holding everything needed to continue bit-identically: weights, alphas,
optimiser and scheduler states, RNG states, the epoch, and the alpha history.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from natsdeploy.arch import Arch, format_dilation
from natsdeploy.checkpoint import SEARCH, save_checkpoint
from natsdeploy.errors import DatasetError, UsageError
from natsdeploy.files import atomic_write, atomic_write_text
from natsdeploy.runtime.context import RunContext, config_dict
from natsdeploy.runtime.context import check_resume
from natsdeploy.runtime.rng import rng_state
from natsdeploy.runtime.step import to_device, train_step

__all__ = ["SearchConfig", "SearchResult", "run_search", "split_indices", "alpha_summary"]


@dataclass
class SearchConfig:
    data: str = "synthetic"
    out: str = "search-out"
    detector: str = "faster_rcnn"
    backbone: str = "resnet50"
    weights: str | None = None
    preset: str = "NATS-C"
    groups: int | None = 16
    channels_per_group: int | None = None
    stages: tuple[str, ...] = ("layer2", "layer3", "layer4")
    epochs: int = 25
    warmup_epochs: int = 10
    batch_size: int = 1
    lr_per_image: float = 0.00125
    lr_min_per_image: float = 0.00005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    alpha_lr: float = 0.01
    alpha_weight_decay: float = 1e-5
    min_size: int = 800
    max_size: int = 1333
    seed: int = 0
    device: str = "cpu"
    recompute: bool = False
    resume: bool = False
    max_steps_per_epoch: int | None = None
    detector_kwargs: dict = field(default_factory=dict)
    progress: bool = True
    align: int | None = None
    """Final decode aligned to multiples of this many channels (ARCH_FORMAT "Aligned decode")."""
    sampling: str = "softmax"
    """"softmax" (paper: every genotype, weighted) or "gumbel" (GDAS: one sampled genotype per group and step)."""
    tau_start: float = 10.0
    tau_end: float = 0.1
    tau_schedule: str = "linear"
    """gumbel "st" temperature: tau_start during warm-up, then annealed to tau_end over the alpha epochs
    (linear/exp). The "local" estimator's draws do not use a temperature."""
    estimator: str = "local"
    """gumbel: how alpha learns, "local" (per-group score-function credit) or "st" (GDAS straight-through)."""


@dataclass
class SearchResult:
    arch: Arch
    arch_path: Path | None
    checkpoint: Path | None
    history: list[dict[str, Any]]
    model: nn.Module


def split_indices(n: int, seed: int) -> tuple[list[int], list[int]]:
    """The training set split into two halves (weights, alphas), deterministic by seed."""
    if n < 2:
        raise DatasetError(f"dataset: got {n} images, expected at least 2 (one per search split)")
    perm = np.random.default_rng(seed).permutation(n).tolist()
    half = n // 2
    return sorted(perm[:half]), sorted(perm[half:])



def alpha_summary(model: nn.Module) -> dict[str, list[float]]:
    """Mean softmax(alpha) per stage and genotype (for the over-epochs plot)."""
    from natsdeploy.search.supernet import ChannelMixedConv

    acc: dict[str, list[torch.Tensor]] = {}
    for name, m in model.named_modules():
        if isinstance(m, ChannelMixedConv):
            stage = name[name.find("layer"):].split(".")[0]
            acc.setdefault(stage, []).append(torch.softmax(m.alpha.detach().float().cpu(), 1).mean(0))
    return {s: torch.stack(v).mean(0).tolist() for s, v in sorted(acc.items())}




def _build(cfg: SearchConfig, num_classes: int) -> nn.Module:
    from natsdeploy.models.detectors import build_detector
    from natsdeploy.search.supernet import build_supernet_backbone

    backbone = build_supernet_backbone(cfg.backbone, preset=cfg.preset, groups=cfg.groups,
                                       channels_per_group=cfg.channels_per_group, stages=cfg.stages,
                                       weights=cfg.weights, recompute=cfg.recompute, sampling=cfg.sampling,
                                       tau=cfg.tau_start, estimator=cfg.estimator)
    return build_detector(cfg.detector, backbone, num_classes=num_classes, pretrained=cfg.weights is not None,
                          min_size=cfg.min_size,
                          max_size=cfg.max_size, **cfg.detector_kwargs)


def _loader(dataset, indices, cfg: SearchConfig, rank: int, world: int, seed_offset: int):
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    from natsdeploy.data.coco import collate

    subset = Subset(dataset, indices)
    sampler = DistributedSampler(subset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed + seed_offset,
                                 drop_last=True)
    return DataLoader(subset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate, num_workers=0), sampler



def run_search(cfg: SearchConfig, *, log: Callable[[str], None] = print) -> SearchResult:
    """Search, checkpointing every epoch; returns the decoded arch (written to `cfg.out/arch.json` by rank 0)."""
    from natsdeploy.data.coco import load_dataset
    from natsdeploy.search.supernet import (annealed_tau, arch_parameters, decode_supernet, load_credit_state,
                                            set_loss_scale, set_tau, supernet_alphas, weight_parameters)

    run = RunContext.create(device=cfg.device, out=cfg.out)
    rank, world, device, cuda = run.rank, run.world, run.device, run.cuda
    out, ckpt_path = Path(cfg.out), run.checkpoint
    if cfg.warmup_epochs > cfg.epochs:
        log(f"note: --warmup-epochs {cfg.warmup_epochs} >= --epochs {cfg.epochs}: alpha is never updated")

    run.seed(cfg.seed)
    dataset = load_dataset(cfg.data, "train", masks=cfg.detector == "mask_rcnn", seed=cfg.seed)
    idx_w, idx_a = split_indices(len(dataset), cfg.seed)
    if len(idx_w) < world * cfg.batch_size:
        raise UsageError(f"--batch-size: got {cfg.batch_size} x {world} processes, expected at most "
                         f"{len(idx_w) // world} for a split of {len(idx_w)} images")
    loader_w, sampler_w = _loader(dataset, idx_w, cfg, rank, world, 0)
    loader_a, sampler_a = _loader(dataset, idx_a, cfg, rank, world, 1)

    model, net = run.place(_build(cfg, dataset.num_classes + 1), find_unused=cfg.sampling == "gumbel")

    global_batch = cfg.batch_size * world
    steps = len(loader_w) if cfg.max_steps_per_epoch is None else min(len(loader_w), cfg.max_steps_per_epoch)
    opt_w = torch.optim.SGD(weight_parameters(model), lr=cfg.lr_per_image * global_batch, momentum=cfg.momentum,
                            weight_decay=cfg.weight_decay)
    opt_a = torch.optim.Adam(arch_parameters(model), lr=cfg.alpha_lr, weight_decay=cfg.alpha_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_w, T_max=max(1, cfg.epochs * steps),
                                                       eta_min=cfg.lr_min_per_image * global_batch)
    scaler = run.grad_scaler()

    def check(ck: dict[str, Any]) -> None:
        saved = dict(ck["config"])
        saved["pretrained"] = ck["pretrained"]
        saved["stages"] = tuple(saved["stages"])
        saved.setdefault("sampling", "softmax")  # checkpoints from before --sampling
        # gumbel checkpoints from before --estimator used the straight-through one
        saved["estimator"] = saved.get("estimator", "st") if saved["sampling"] == "gumbel" else None
        check_resume(saved, {"backbone": cfg.backbone, "detector": cfg.detector, "preset": cfg.preset,
                             "groups": cfg.groups, "channels_per_group": cfg.channels_per_group,
                             "stages": tuple(cfg.stages),
                             "pretrained": cfg.weights is not None, "detector_kwargs": dict(cfg.detector_kwargs),
                             "sampling": cfg.sampling,
                             "estimator": cfg.estimator if cfg.sampling == "gumbel" else None},
                     path=ckpt_path)

    ck = run.resume(SEARCH, enabled=cfg.resume, model=model, check=check, log=log,
                    states={"opt_w": opt_w, "opt_a": opt_a, "sched": sched, "scaler": scaler})
    history: list[dict[str, Any]] = ck["history"] if ck else []
    if ck:
        if cfg.sampling == "gumbel" and cfg.estimator == "local" and not ck.get("credit"):
            log(f"note: --resume: {ckpt_path} has no estimator baselines (written before they were saved); "
                "they start afresh, so this run is not bit-identical to an uninterrupted one")
        load_credit_state(model, ck.get("credit", {}), where=f"--resume: {ckpt_path}")
    start = ck["epoch"] if ck else 0
    # the decode after the last finished epoch (on resume: the checkpoint's alphas), for the per-epoch diff
    previous = decode_supernet(supernet_alphas(model), cfg.backbone, cfg.preset, align=cfg.align) if ck else None

    for epoch in range(start, cfg.epochs):
        bar = run.begin_epoch(epoch, cfg.epochs, net=net, samplers=[sampler_w, sampler_a], steps=steps,
                              show=cfg.progress)
        search_alpha = epoch >= cfg.warmup_epochs
        tau = None
        if cfg.sampling == "gumbel" and cfg.estimator == "st":
            tau = annealed_tau(cfg.tau_start, cfg.tau_end, step=epoch - cfg.warmup_epochs,
                               total=cfg.epochs - cfg.warmup_epochs, schedule=cfg.tau_schedule)
            set_tau(model, tau)
        it_a = iter(loader_a)
        sums = {"loss_w": 0.0, "loss_a": 0.0}
        for step, (images, targets) in enumerate(loader_w):
            if step >= steps:
                break
            if cfg.sampling == "gumbel":
                set_loss_scale(model, scaler.get_scale())  # AMP: "local" gives alpha the loss's units
            loss_w, _ = train_step(net, opt_w, scaler, *to_device(images, targets, device), cuda=cuda)
            sched.step()
            sums["loss_w"] += loss_w
            if search_alpha:
                try:
                    batch_a = next(it_a)
                except StopIteration:
                    it_a = iter(loader_a)
                    batch_a = next(it_a)
                if cfg.sampling == "gumbel":
                    set_loss_scale(model, scaler.get_scale())
                sums["loss_a"] += train_step(net, opt_a, scaler, *to_device(*batch_a, device), cuda=cuda)[0]
            if bar is not None:
                bar.set_postfix(loss_w=f"{loss_w:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}",
                                alpha="on" if search_alpha else "warm-up")
                bar.update(1)
        run.end_epoch(model, bar)
        history.append({"epoch": epoch + 1, "loss_w": sums["loss_w"] / max(steps, 1),
                        "loss_a": sums["loss_a"] / max(steps, 1) if search_alpha else None,
                        "alpha_softmax": alpha_summary(model), "sampling": cfg.sampling, "tau": tau})
        decoded = decode_supernet(supernet_alphas(model), cfg.backbone, cfg.preset, align=cfg.align,
                                  extra={"epoch": epoch + 1})
        history[-1].update(decode_change(previous, decoded, stages=cfg.stages))
        previous = decoded

        def write() -> None:
            decoded.save(out / f"arch_epoch_{epoch + 1}.json")
            _save_checkpoint(ckpt_path, model, opt_w, opt_a, sched, scaler, epoch + 1, history, cfg)
            changed = history[-1]["changed_filters"]
            log(f"epoch {epoch + 1}: loss_w {history[-1]['loss_w']:.4f}"
                + (f", loss_a {history[-1]['loss_a']:.4f}" if search_alpha else " (alpha frozen)")
                + ("" if changed is None else f"; decode: {changed} of {history[-1]['filters']} filters changed "
                   "dilation since the last epoch")
                + f"; checkpoint {ckpt_path}")

        run.commit(write)

    alphas = supernet_alphas(model)
    arch = decode_supernet(alphas, cfg.backbone, cfg.preset,
                           extra={"detector": cfg.detector, "epochs": cfg.epochs, "data": cfg.data,
                                  "stages": list(cfg.stages),
                                  "channels_per_group": cfg.channels_per_group, "sampling": cfg.sampling,
                                  **({"estimator": cfg.estimator} if cfg.sampling == "gumbel" else {}),
                                  **({"tau": [cfg.tau_start, cfg.tau_end], "tau_schedule": cfg.tau_schedule}
                                     if cfg.sampling == "gumbel" and cfg.estimator == "st" else {})},
                           align=cfg.align)
    arch_path = None
    if rank == 0:
        arch_path = arch.save(out / "arch.json")
        if history:
            plot_alpha_history(history, out / "alpha.png", preset=cfg.preset)
        atomic_write_text(out / "history.json", json.dumps(history, indent=2) + "\n")
    return SearchResult(arch, arch_path, ckpt_path if rank == 0 else None, history, model)




def decode_change(previous: Arch | None, current: Arch, *, stages: Sequence[str]) -> dict[str, int | None]:
    """`changed_filters`: filters whose decoded dilation differs from `previous` (None: no previous decode),
    and `filters`, the 3x3 filters of the searched `stages`: the search's convergence signal, without alpha."""
    from natsdeploy.align import align_report

    filters = sum(info.out_channels for name, info in current.spec.convs.items() if name.split(".")[0] in stages)
    changed = None if previous is None else align_report(previous, current).changed
    return {"changed_filters": changed, "filters": filters}


def _save_checkpoint(path: Path, model, opt_w, opt_a, sched, scaler, epoch: int, history, cfg: SearchConfig) -> None:
    from natsdeploy.search.supernet import credit_state

    save_checkpoint(path, SEARCH, {"epoch": epoch, "model": model.state_dict(), "opt_w": opt_w.state_dict(),
                                   "opt_a": opt_a.state_dict(), "sched": sched.state_dict(),
                                   "scaler": scaler.state_dict(), "rng": rng_state(), "history": history,
                                   "config": config_dict(cfg), "pretrained": cfg.weights is not None,
                                   "credit": credit_state(model)})


def plot_alpha_history(history: list[dict[str, Any]], path: Path, *, preset: str) -> Path:
    """Mean softmax(alpha) per genotype over epochs, one panel per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from natsdeploy.search.decode import genotypes

    stages = sorted(history[-1]["alpha_softmax"])
    changes = [(h["epoch"], h["changed_filters"]) for h in history if h.get("changed_filters") is not None]
    panels = len(stages) + bool(changes)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2), squeeze=False)
    epochs = [h["epoch"] for h in history]
    if changes:  # the convergence signal: the decode stops changing
        ax = axes[0][-1]
        ax.plot(*zip(*changes), marker="o", ms=3, color="k")
        ax.set_title("decoded arch: filters that changed dilation", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"of {history[-1]['filters']} filters")
    for ax, stage in zip(axes[0], stages):
        vals = np.array([h["alpha_softmax"][stage] for h in history])
        for g, d in enumerate(genotypes(preset, stage)):
            ax.plot(epochs, vals[:, g], marker="o", ms=3, label=format_dilation(d))
        ax.set_title(f"{stage} (paper stage-{int(stage[-1]) + 1})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean softmax(alpha)")
        ax.legend(fontsize=7)
    width = 4 * panels  # fixed margins in inches (tight_layout would render the figure twice: 0.3 s a plot)
    fig.subplots_adjust(left=1.0 / width, right=1 - 0.15 / width, bottom=0.16, top=0.9, wspace=0.42)
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)

