"""Argument parsing for `natsdeploy search` and `natsdeploy decode` (thin wrappers)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from natsdeploy.cli_values import (add_detector_option_argument, add_weights_arguments, parse_float, parse_int,
                                   weights_value)

from natsdeploy.errors import UsageError

__all__ = ["add_search_arguments", "search_cli", "add_decode_arguments", "decode_cli", "decode_checkpoint"]


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="synthetic", help="COCO-format folder, or 'synthetic' (generated, no download)")
    p.add_argument("--detector", default="faster_rcnn", help="faster_rcnn, retinanet or mask_rcnn")
    p.add_argument("--backbone", default="resnet50")
    add_weights_arguments(p, default="init")
    p.add_argument("--preset", default="NATS-C", help="NATS-A, NATS-B or NATS-C")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--groups", default=None, help="channel groups per conv (default 16)")
    g.add_argument("--channels-per-group", default=None, help="fixed channels per group instead of --groups")
    p.add_argument("--stages", default="layer2,layer3,layer4", help="searched stages (torchvision names)")
    p.add_argument("--epochs", default="25")
    p.add_argument("--warmup-epochs", default="10", help="epochs with alpha frozen (paper: 10 of 25)")
    p.add_argument("--batch-size", default="1", help="images per process (paper: 1 per GPU)")
    p.add_argument("--lr-per-image", default="0.00125", help="SGD lr per image of the global batch")
    p.add_argument("--lr-min-per-image", default="0.00005", help="cosine floor per image")
    p.add_argument("--momentum", default="0.9")
    p.add_argument("--weight-decay", default="0.0001")
    p.add_argument("--alpha-lr", default="0.01", help="Adam lr for alpha")
    p.add_argument("--alpha-weight-decay", default="0.00001")
    p.add_argument("--min-size", default="800", help="detector resize: shorter side")
    p.add_argument("--max-size", default="1333", help="detector resize: longer side cap")
    p.add_argument("--max-steps-per-epoch", default=None, help="cap steps per epoch (quick runs)")
    add_detector_option_argument(p)
    p.add_argument("--seed", default="0")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--sampling", default="softmax", choices=("softmax", "gumbel"),
                   help="softmax: every genotype weighted (paper); gumbel: one sampled genotype per group and step "
                        "(GDAS, about the baseline's step cost)")
    p.add_argument("--estimator", default=None, choices=("local", "st"),
                   help="gumbel: how alpha learns; local (default): per-group score-function credit; st: GDAS's "
                        "straight-through gate (recovers far fewer planted groups: benchmarks/README.md)")
    p.add_argument("--tau-start", default=None, help="--estimator st: temperature at the first alpha epoch (default 10)")
    p.add_argument("--tau-end", default=None, help="--estimator st: temperature at the last epoch (default 0.1)")
    p.add_argument("--tau-schedule", default="linear", choices=("linear", "exp"), help="gumbel temperature anneal")
    p.add_argument("--recompute", action="store_true", help="recompute replica activations in backward (less memory)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pth")
    p.add_argument("--out", default="search-out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--align", default=None, help="decode with every branch a multiple of N channels (e.g. 16, 32)")


def search_cli(args: argparse.Namespace) -> int:
    import torch

    from natsdeploy.runtime.distributed import run_distributed
    from natsdeploy.models.detectors import DETECTORS, parse_detector_options
    from natsdeploy.specs import BACKBONES
    from natsdeploy.search.decode import PRESETS
    from natsdeploy.search.loop import SearchConfig, run_search

    if args.detector not in DETECTORS:
        raise UsageError(f"--detector: got {args.detector!r}, expected one of {list(DETECTORS)}")
    if args.backbone not in BACKBONES:
        raise UsageError(f"--backbone: got {args.backbone!r}, expected one of {sorted(BACKBONES)}")
    if args.preset not in PRESETS:
        raise UsageError(f"--preset: got {args.preset!r}, expected one of {sorted(PRESETS)}")
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    for s in stages:
        if s not in PRESETS[args.preset]:
            raise UsageError(f"--stages: got {s!r}, expected some of {sorted(PRESETS[args.preset])}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise UsageError(f"--device: got {device!r}, expected 'cpu'" + (" or 'cuda'" if torch.cuda.is_available() else ""))
    groups = parse_int("--groups", args.groups, 1) if args.groups else (None if args.channels_per_group else 16)
    cpg = parse_int("--channels-per-group", args.channels_per_group, 1) if args.channels_per_group else None
    if args.data != "synthetic" and not Path(args.data).is_dir():
        raise UsageError(f"--data: got {args.data!r}, expected a COCO-format folder or 'synthetic'")
    detector_kwargs = parse_detector_options(args.detector, args.detector_option)
    cfg = SearchConfig(
        detector_kwargs=detector_kwargs,
        data=args.data, out=args.out, detector=args.detector, backbone=args.backbone, weights=weights_value(args),
        preset=args.preset, groups=groups, channels_per_group=cpg, stages=stages,
        epochs=parse_int("--epochs", args.epochs, 1), warmup_epochs=parse_int("--warmup-epochs", args.warmup_epochs, 0),
        batch_size=parse_int("--batch-size", args.batch_size, 1), lr_per_image=parse_float("--lr-per-image", args.lr_per_image),
        lr_min_per_image=parse_float("--lr-min-per-image", args.lr_min_per_image),
        momentum=parse_float("--momentum", args.momentum), weight_decay=parse_float("--weight-decay", args.weight_decay),
        alpha_lr=parse_float("--alpha-lr", args.alpha_lr), alpha_weight_decay=parse_float("--alpha-weight-decay", args.alpha_weight_decay),
        min_size=parse_int("--min-size", args.min_size, 32), max_size=parse_int("--max-size", args.max_size, 32),
        seed=parse_int("--seed", args.seed), device=device, recompute=args.recompute, resume=args.resume,
        max_steps_per_epoch=parse_int("--max-steps-per-epoch", args.max_steps_per_epoch, 1) if args.max_steps_per_epoch else None,
        **_sampling_options(args),
        progress=not args.no_progress, align=parse_int("--align", args.align, 1) if args.align is not None else None)
    # validate the search space against the backbone before any data or model work
    from natsdeploy.specs import BACKBONES as _B
    from natsdeploy.search.decode import groups_per_unit, searchable_convs
    from natsdeploy.search.supernet import group_width

    for name in searchable_convs(cfg.backbone, cfg.stages):
        width = group_width(_B[cfg.backbone].convs[name], groups=cfg.groups, channels_per_group=cfg.channels_per_group)
        if cfg.align is not None:
            groups_per_unit(_B[cfg.backbone].convs[name], width, cfg.align, field="--align")
    result, code = run_distributed(lambda dev: run_search(dataclasses.replace(cfg, device=dev)), device)
    if code:
        return code
    if result.arch_path is not None:
        n = sum(len(ct.branches) for ct in result.arch.convs.values())
        print(f"wrote {result.arch_path} ({len(result.arch.convs)} convs, {n} branches), "
              f"{Path(cfg.out) / 'alpha.png'}, checkpoint {result.checkpoint}")
    return 0


def _sampling_options(args: argparse.Namespace) -> dict:
    """--sampling and its temperatures as SearchConfig keywords (temperatures only with gumbel, > 0)."""
    out: dict = {"sampling": args.sampling, "tau_schedule": args.tau_schedule}
    if args.estimator is not None:
        if args.sampling != "gumbel":
            raise UsageError(f"--estimator: got {args.estimator!r} with --sampling {args.sampling}, expected it only "
                             "with --sampling gumbel")
        out["estimator"] = args.estimator
    for flag, key in (("--tau-start", "tau_start"), ("--tau-end", "tau_end")):
        text = getattr(args, key)
        if text is None:
            continue
        if args.sampling != "gumbel":
            raise UsageError(f"{flag}: got {text!r} with --sampling {args.sampling}, expected it only with "
                             "--sampling gumbel")
        if out.get("estimator", "local") != "st":
            raise UsageError(f"{flag}: got {text!r} with --estimator local, expected it only with --estimator st "
                             "(local draws use no temperature)")
        v = parse_float(flag, text)
        if not 0 < v < float("inf"):
            raise UsageError(f"{flag}: got {text!r}, expected a finite number > 0")
        out[key] = v
    return out


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="search checkpoint (OUT/checkpoint.pth)")
    p.add_argument("-o", "--output", required=True, help="arch.json to write")
    p.add_argument("--align", default=None,
                   help="every branch a multiple of N channels (default: the search's --align; 1: plain decode)")


def decode_checkpoint(path: str | os.PathLike[str], *, align: int | None = None):
    """The arch a search checkpoint decodes to (its alphas, backbone and preset; `align` as the
    search recorded it unless given). The file is loaded safely and checked against the schema of
    `natsdeploy.checkpoint`: every problem is a one-line CheckpointError."""
    from natsdeploy.checkpoint import SEARCH, load_checkpoint
    from natsdeploy.errors import ArchError, CheckpointError
    from natsdeploy.search.supernet import decode_supernet

    ck = load_checkpoint(path, SEARCH, flag="checkpoint")
    cfg = ck["config"]
    alphas = {k[k.find("layer"):-len(".alpha")]: v for k, v in ck["model"].items() if k.endswith(".alpha")}
    if not alphas:
        raise CheckpointError(f"checkpoint: {path}: key 'model': got no '*.alpha' entries, expected the "
                              "super-net's architecture weights")
    extra = {"detector": cfg["detector"], "epochs_done": ck["epoch"], "data": cfg["data"]}
    try:
        arch = decode_supernet(alphas, cfg["backbone"], cfg["preset"], extra=extra)
    except ArchError as e:
        raise CheckpointError(f"checkpoint: {path}: does not decode ({e})") from None
    align = align if align is not None else cfg.get("align")
    if align is None:
        return arch
    return decode_supernet(alphas, cfg["backbone"], cfg["preset"], extra=extra, align=align)  # ArchError: bad align


def decode_cli(args: argparse.Namespace) -> int:
    align = parse_int("--align", args.align, 1) if args.align is not None else None
    arch = decode_checkpoint(args.checkpoint, align=align)
    print(f"wrote {arch.save(args.output)} ({len(arch.convs)} convs)")
    return 0
