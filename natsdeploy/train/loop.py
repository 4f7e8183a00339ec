"""Detector training on a transformed (or baseline) backbone: one recipe for both, so they compare.

The backbone is `build_backbone(arch, weights)` (weights transferred per ARCH_FORMAT.md; the baseline
is the all-identity arch), wrapped by `build_detector` (torchvision's rule: with pretrained weights,
frozen BN and frozen stem + layer1; from the initialisation, trainable BN and every layer). Recipe
(Detectron/torchvision 1x): SGD momentum 0.9, weight decay 1e-4, lr = lr_per_image x global batch,
linear warm-up over `warmup_iters` iterations (factor 0.001 -> 1), then lr / 10 from each epoch in
`steps` on (defaults: 13 epochs, steps 8 and 11, the paper's schedule). AMP and channels_last on CUDA
only. Runs on one process or under torchrun (DDP; DistributedSampler; rank 0 writes files).

After every epoch: COCO evaluation (pycocotools) on the val split, the six metrics logged and
appended to `OUT/metrics.json` (AP points, 0-100; -1 = undefined, pycocotools' convention), and
`OUT/checkpoint.pth` (format "natsdeploy-train-checkpoint/2", read and written by `natsdeploy.checkpoint`)
holding everything needed to continue bit-identically (`resume=True`) and to rebuild the detector
(`load_detector_checkpoint`).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from natsdeploy.arch import Arch, load_arch
from natsdeploy.checkpoint import FORMATS, TRAIN, save_checkpoint
from natsdeploy.errors import CheckpointError
from natsdeploy.files import atomic_write_text
from natsdeploy.runtime.context import RunContext, config_dict
from natsdeploy.runtime.context import check_resume
from natsdeploy.runtime.rng import rng_state
from natsdeploy.runtime.step import to_device, train_step
from natsdeploy.models.trained import (backbone_weights, build_train_detector, detector_from_checkpoint,
                                       load_detector_checkpoint, read_checkpoint)
from natsdeploy.errors import UsageError

__all__ = ["CHECKPOINT_FORMAT", "TrainConfig", "TrainResult", "CheckpointError", "train", "evaluate",
           "load_detector_checkpoint", "read_checkpoint", "detector_from_checkpoint", "lr_factor",
           "resolve_arch", "format_metrics", "backbone_weights"]

CHECKPOINT_FORMAT = FORMATS[TRAIN]
METRIC_SCALE = "AP points (0-100); -1 = undefined (no ground truth in that size range)"


@dataclass
class TrainConfig:
    arch: str | os.PathLike | Arch | None = None  # None: the baseline of `backbone`
    data: str = "synthetic"
    out: str = "train-out"
    detector: str = "faster_rcnn"
    backbone: str | None = None  # required without `arch`; must match arch.backbone with it
    weights: Any = None  # None (torchvision init, seeded), "imagenet", a .pth path or a state dict
    epochs: int = 13
    batch_size: int = 2  # images per process
    lr_per_image: float = 0.00125
    steps: tuple[int, ...] = (8, 11)
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    min_size: int = 800
    max_size: int = 1333
    max_steps_per_epoch: int | None = None
    trainable_layers: int | None = None  # None: 3 with weights, 5 (and trainable BN) without
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    detector_kwargs: dict = field(default_factory=dict)
    progress: bool = True


@dataclass
class TrainResult:
    arch: Arch
    checkpoint: Path | None
    metrics_path: Path | None
    metrics: list[dict[str, Any]]
    model: nn.Module


def lr_factor(it: int, *, steps_per_epoch: int, steps: Sequence[int], warmup_iters: int,
              warmup_factor: float = 0.001) -> float:
    """Multiplier of the base lr at iteration `it` (0-based, counted over all epochs).

    0.1 ** (number of entries of `steps` <= the current 0-based epoch), times a linear warm-up from
    `warmup_factor` to 1 over the first `warmup_iters` iterations (torchvision's reference recipe).
    """
    epoch = it // max(1, steps_per_epoch)
    f = 0.1 ** sum(1 for s in steps if epoch >= s)
    if it < warmup_iters:
        a = it / warmup_iters
        f *= warmup_factor * (1 - a) + a
    return f


def resolve_arch(cfg: TrainConfig) -> Arch:
    """The arch to train: `cfg.arch` (path or Arch), or the baseline of `cfg.backbone`."""
    if cfg.arch is None:
        if not cfg.backbone:
            raise UsageError("--backbone: got nothing and no arch file, expected a backbone name such as resnet50 "
                             "(training the baseline needs --backbone; natsdeploy train --help lists them)")
        return Arch(backbone=cfg.backbone)
    arch = cfg.arch if isinstance(cfg.arch, Arch) else load_arch(cfg.arch)
    if cfg.backbone and cfg.backbone != arch.backbone:
        raise UsageError(f"--backbone: got {cfg.backbone!r}, expected {arch.backbone!r} (the backbone of the arch file) "
                         "or no --backbone")
    return arch


def format_metrics(m: dict[str, float]) -> str:
    from natsdeploy.data.evaluate import METRICS

    return " ".join(f"{k} {m[k]:.2f}" if m[k] >= 0 else f"{k} n/a" for k in METRICS)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, *, device: torch.device | str = "cpu", amp: bool = False,
             rank: int = 0, world: int = 1) -> dict[str, float]:
    """COCO bbox metrics (AP points, 0-100) of `model` on every image of `dataset`, one image per forward.

    Under DDP each rank runs every `world`-th image; rank 0's return value covers all of them (the
    other ranks get the same, all-gathered).
    """
    from natsdeploy.data.evaluate import CocoEvaluator

    device = torch.device(device)
    was_training = model.training
    model.eval()
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_cat_id, world=world)
    evaluator.reset()
    try:
        for i in range(rank, len(dataset), world):
            image, target = dataset[i]
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"):
                out = model([image.to(device)])
            evaluator.process([target], out)
    finally:
        model.train(was_training)
    return evaluator.evaluate()


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train, evaluate and checkpoint every epoch; returns the final model and the metric log."""
    from torch.utils.data import DataLoader, DistributedSampler

    from natsdeploy.data.coco import collate, load_dataset
    from natsdeploy.data.errors import DatasetError
    from natsdeploy.models.detectors import DETECTORS

    if cfg.detector not in DETECTORS:
        raise UsageError(f"--detector: got {cfg.detector!r}, expected one of {list(DETECTORS)}")
    run = RunContext.create(device=cfg.device, out=cfg.out)
    rank, world, device, cuda = run.rank, run.world, run.device, run.cuda
    arch = resolve_arch(cfg)
    ckpt_path, metrics_path = run.checkpoint, Path(cfg.out) / "metrics.json"

    run.seed(cfg.seed)
    train_set = load_dataset(cfg.data, "train", masks=cfg.detector == "mask_rcnn", seed=cfg.seed)
    val_set = load_dataset(cfg.data, "val", seed=cfg.seed)
    if val_set.label_to_cat_id != train_set.label_to_cat_id:
        raise DatasetError(f"{val_set.ann_file}: categories {sorted(val_set.label_to_cat_id.values())}; expected "
                           f"those of the train split {sorted(train_set.label_to_cat_id.values())}")
    if len(train_set) < world * cfg.batch_size:
        raise UsageError(f"--batch-size: got {cfg.batch_size} x {world} processes, expected at most "
                         f"{len(train_set) // world} for {len(train_set)} training images")
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate, num_workers=0)
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)

    num_classes = train_set.num_classes + 1  # background included, as torchvision counts
    if cfg.trainable_layers is not None and not 0 <= cfg.trainable_layers <= 5:
        raise UsageError(f"--trainable-layers: got {cfg.trainable_layers}, expected 0..5")
    if cfg.trainable_layers not in (None, 5) and cfg.weights is None:
        raise UsageError(f"--trainable-layers: got {cfg.trainable_layers} without --weights, expected 5 (from the "
                         "initialisation every layer trains, as in torchvision) or --weights")
    model, net = run.place(build_train_detector(cfg.detector, arch, cfg.weights, num_classes, cfg.min_size,
                                                cfg.max_size, cfg.detector_kwargs, pretrained=cfg.weights is not None,
                                                trainable_layers=cfg.trainable_layers))

    global_batch = cfg.batch_size * world
    base_lr = cfg.lr_per_image * global_batch
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    schedule = dict(steps_per_epoch=steps, steps=tuple(cfg.steps), warmup_iters=cfg.warmup_iters,
                    warmup_factor=cfg.warmup_factor)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, **schedule))
    scaler = run.grad_scaler()

    def check(ck: dict[str, Any]) -> None:
        if ck["arch"] != arch.to_dict() or ck["detector"] != cfg.detector:
            raise CheckpointError(f"--resume: {ckpt_path} holds a {ck['detector']} on arch "
                                  f"{_arch_label(ck['arch'])}, expected a {cfg.detector} on {_arch_label(arch.to_dict())}")
        check_resume({"pretrained": ck["pretrained"], "trainable_layers": ck["trainable_layers"],
                      "detector_kwargs": ck["detector_kwargs"]},
                     {"pretrained": cfg.weights is not None, "trainable_layers": cfg.trainable_layers,
                      "detector_kwargs": dict(cfg.detector_kwargs)}, path=ckpt_path)

    ck = run.resume(TRAIN, enabled=cfg.resume, model=model, check=check, log=log,
                    states={"optimizer": opt, "scheduler": sched, "scaler": scaler})
    metrics: list[dict[str, Any]] = list(ck["metrics"]) if ck else []
    start = ck["epoch"] if ck else 0

    if rank == 0:
        kind = f"transformed ({len(arch.convs)} convs)" if arch.convs else "baseline"
        log(f"training {cfg.detector} on {arch.backbone} {kind}: {len(train_set)} train / {len(val_set)} val images, "
            f"{world} process(es) x {cfg.batch_size} images, lr {base_lr:g}, {steps} steps/epoch, "
            f"{cfg.epochs} epochs, lr / 10 from epochs {list(cfg.steps)}, warm-up {cfg.warmup_iters} iters, "
            f"device {device}{' (AMP, channels_last)' if cuda else ''}")

    for epoch in range(start, cfg.epochs):
        bar = run.begin_epoch(epoch, cfg.epochs, net=net, samplers=[sampler], steps=steps, show=cfg.progress)
        total, parts, lr = 0.0, {}, opt.param_groups[0]["lr"]
        for images, targets in itertools.islice(loader, steps):
            lr = opt.param_groups[0]["lr"]
            loss, losses = train_step(net, opt, scaler, *to_device(images, targets, device), cuda=cuda,
                                      hint="lower the learning rate (--lr-per-image) or lengthen --warmup-iters")
            sched.step()
            total += loss
            for k, v in losses.items():
                parts[k] = parts.get(k, 0.0) + v
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
                bar.update(1)
        run.end_epoch(model, bar)  # trainable BN (no --weights): same statistics on every rank
        if world > 1:  # log the mean over all processes, not rank 0's share
            keys = sorted(parts)
            sums = torch.tensor([total] + [parts[k] for k in keys], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(sums)
            total, parts = float(sums[0]) / world, {k: float(v) / world for k, v in zip(keys, sums[1:].tolist())}
        val = evaluate(model, val_set, device=device, amp=cuda, rank=rank, world=world)
        record = {"epoch": epoch + 1, "loss": total / max(steps, 1),
                  "losses": {k: v / max(steps, 1) for k, v in parts.items()},
                  "lr": lr, "iterations": (epoch + 1) * steps, **val,
                  "metric_scale": METRIC_SCALE}
        metrics.append(record)

        def write() -> None:
            _save_checkpoint(ckpt_path, model, opt, sched, scaler, epoch + 1, metrics, cfg, arch, train_set)
            atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
            log(f"epoch {epoch + 1}: loss {record['loss']:.4f}, lr {record['lr']:.2e}; val "
                f"{format_metrics(val)}; checkpoint {ckpt_path}")

        run.commit(write)

    return TrainResult(arch, ckpt_path if rank == 0 else None, metrics_path if rank == 0 else None, metrics, model)


def _arch_label(d: dict) -> str:
    n = len(d.get("convs", {}))
    return f"{d.get('backbone')} ({n} transformed convs)" if n else f"{d.get('backbone')} (baseline)"


def _save_checkpoint(path: Path, model, opt, sched, scaler, epoch: int, metrics, cfg: TrainConfig, arch: Arch,
                     dataset) -> None:
    save_checkpoint(path, TRAIN, {
        "arch": arch.to_dict(), "detector": cfg.detector, "num_classes": dataset.num_classes + 1,
        "label_to_cat_id": {int(k): int(v) for k, v in dataset.label_to_cat_id.items()},
        "min_size": cfg.min_size, "max_size": cfg.max_size, "detector_kwargs": dict(cfg.detector_kwargs),
        "pretrained": cfg.weights is not None, "trainable_layers": cfg.trainable_layers,
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": epoch, "metrics": metrics,
        "config": config_dict(cfg)})
