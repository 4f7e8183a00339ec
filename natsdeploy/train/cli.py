"""Argument parsing for `natsdeploy train` (thin: validates flags, then calls `natsdeploy.train.loop.train`)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from natsdeploy.cli_values import (DATA_HELP, add_detector_option_argument, add_weights_arguments, parse_float,
                                   parse_int, weights_value)
from natsdeploy.errors import UsageError
from natsdeploy.specs import BACKBONES
from natsdeploy.extras import require

__all__ = ["add_train_arguments", "train_cli"]


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The `natsdeploy train` arguments on `p` (--data and --out required: training runs for hours)."""
    p.add_argument("arch", nargs="?", default=None,
                   help="arch.json (omit it, or give an all-dilation-1 arch, to train the baseline; then --backbone)")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--detector", default="faster_rcnn", help="faster_rcnn, retinanet or mask_rcnn")
    p.add_argument("--backbone", default=None, help=f"{', '.join(sorted(BACKBONES))}: the baseline to train without an "
                   "arch file (default: the arch file's backbone)")
    add_weights_arguments(p, default="torchvision init, seeded")
    p.add_argument("--epochs", default="13", help="epochs, an integer >= 1 (default 13: the 1x schedule)")
    p.add_argument("--batch-size", default="2", help="images per process, an integer >= 1 (default 2)")
    p.add_argument("--lr-per-image", default="0.00125",
                   help="SGD lr per image of the global batch, a number >= 0 (default 0.00125)")
    p.add_argument("--steps", nargs="+", default=["8", "11"],
                   help="epochs (0-based, integers >= 1) from which lr / 10 (default 8 11)")
    p.add_argument("--warmup-iters", default="500",
                   help="linear warm-up iterations, factor 0.001 -> 1, an integer >= 0 (default 500)")
    p.add_argument("--momentum", default="0.9", help="SGD momentum, a number >= 0")
    p.add_argument("--weight-decay", default="0.0001", help="SGD weight decay, a number >= 0")
    p.add_argument("--min-size", default="800", help="detector resize: shorter side in pixels, an integer >= 32 "
                   "(default 800)")
    p.add_argument("--max-size", default="1333", help="detector resize: longer side cap in pixels, an integer >= "
                   "--min-size (default 1333)")
    p.add_argument("--max-steps-per-epoch", default=None,
                   help="cap steps per epoch, an integer >= 1 (quick runs; default: the whole split)")
    p.add_argument("--trainable-layers", default=None,
                   help="backbone stages trained, 0..5 (default: 3 with --weights, frozen BN; 5 without, trainable BN)")
    add_detector_option_argument(p)
    p.add_argument("--seed", default="0", help="seed of the init and the data order, an integer >= 0")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoint.pth in the --out folder")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--out", required=True, help="output folder (checkpoint.pth, metrics.json)")


def train_cli(args: argparse.Namespace) -> int:
    """Validate every flag and the arch, then train (DDP under torchrun) and print the final AP."""
    require("pycocotools", "coco", "train")
    import torch

    from natsdeploy.runtime.distributed import run_distributed
    from natsdeploy.models.detectors import DETECTORS, parse_detector_options
    from natsdeploy.train.loop import TrainConfig, format_metrics, resolve_arch, train

    if args.detector not in DETECTORS:
        raise UsageError(f"--detector: got {args.detector!r}, expected one of {list(DETECTORS)}")
    if args.backbone is not None and args.backbone not in BACKBONES:
        raise UsageError(f"--backbone: got {args.backbone!r}, expected one of {sorted(BACKBONES)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise UsageError(f"--device: got {device!r}, expected 'cpu'" + (" or 'cuda'" if torch.cuda.is_available() else ""))
    if args.data != "synthetic" and not Path(args.data).is_dir():
        raise UsageError(f"--data: got {args.data!r}, expected a COCO-format folder or 'synthetic'")
    epochs = parse_int("--epochs", args.epochs, 1)
    detector_kwargs = parse_detector_options(args.detector, args.detector_option)
    cfg = TrainConfig(
        detector_kwargs=detector_kwargs,
        arch=args.arch, data=args.data, out=args.out, detector=args.detector, backbone=args.backbone,
        weights=weights_value(args), epochs=epochs, batch_size=parse_int("--batch-size", args.batch_size, 1),
        lr_per_image=parse_float("--lr-per-image", args.lr_per_image),
        steps=tuple(sorted(parse_int("--steps", s, 1) for s in args.steps)),
        warmup_iters=parse_int("--warmup-iters", args.warmup_iters, 0),
        momentum=parse_float("--momentum", args.momentum), weight_decay=parse_float("--weight-decay", args.weight_decay),
        min_size=parse_int("--min-size", args.min_size, 32), max_size=parse_int("--max-size", args.max_size, 32),
        max_steps_per_epoch=parse_int("--max-steps-per-epoch", args.max_steps_per_epoch, 1)
        if args.max_steps_per_epoch else None,
        trainable_layers=parse_int("--trainable-layers", args.trainable_layers, 0, 5)
        if args.trainable_layers is not None else None,
        seed=parse_int("--seed", args.seed), device=device, resume=args.resume, progress=not args.no_progress)
    if cfg.max_size < cfg.min_size:
        raise UsageError(f"--max-size: got {cfg.max_size}, expected >= --min-size {cfg.min_size}")
    arch = resolve_arch(cfg)  # bad arch / missing --backbone: exit 2 before any work
    if cfg.weights is not None and cfg.weights != "imagenet":
        from natsdeploy.models.build import resolve_weights

        resolve_weights(cfg.weights, arch.spec)  # fail before any data or model work
    cfg.arch = arch
    result, code = run_distributed(lambda dev: train(dataclasses.replace(cfg, device=dev)), device)
    if code:
        return code
    if result.checkpoint is not None and result.metrics:
        last = result.metrics[-1]
        print(f"final (epoch {last['epoch']}) val: {format_metrics(last)}")
        print(f"wrote {result.checkpoint}, {result.metrics_path}")
    return 0
