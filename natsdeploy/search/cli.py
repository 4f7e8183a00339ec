"""`natsdeploy search` and `natsdeploy decode`: arguments, validation and the call into the library (thin)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from natsdeploy.cli_values import (DATA_HELP, add_detector_option_argument, add_weights_arguments, parse_float,
                                   parse_int, weights_value)
from natsdeploy.errors import UsageError
from natsdeploy.specs import BACKBONES
from natsdeploy.extras import require

__all__ = ["add_search_arguments", "search_cli", "add_decode_arguments", "decode_cli"]


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    """The `natsdeploy search` arguments on `p` (--data and --out required: a search runs for hours)."""
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--detector", default="faster_rcnn", help="faster_rcnn, retinanet or mask_rcnn")
    p.add_argument("--backbone", default="resnet50", help=f"backbone to search: {', '.join(sorted(BACKBONES))}")
    add_weights_arguments(p, default="init")
    p.add_argument("--preset", default="NATS-C", help="search space, the candidate dilations per stage "
                   "(ARCH_FORMAT.md): NATS-A, NATS-B or NATS-C")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--groups", default=None,
                   help="channel groups per conv, an integer >= 1 that divides each searched conv's width (default 16)")
    g.add_argument("--channels-per-group", default=None,
                   help="fixed channels per group instead of --groups, an integer >= 1 (default: --groups 16)")
    p.add_argument("--stages", default="layer2,layer3,layer4",
                   help="stages to search, comma-separated torchvision names from layer2, layer3 and layer4 (the "
                        "paper's stages 3-5; each in the preset), e.g. layer3,layer4")
    p.add_argument("--epochs", default="25", help="super-net training epochs, an integer >= 1 (default 25, as the "
                   "paper)")
    p.add_argument("--warmup-epochs", default="10", help="first epochs with alpha frozen, an integer >= 0 (default 10: "
                   "the paper's 10 of 25)")
    p.add_argument("--batch-size", default="1", help="images per process, an integer >= 1 (default 1: the paper's 1 "
                   "per GPU)")
    p.add_argument("--lr-per-image", default="0.00125", help="SGD lr per image of the global batch, a number >= 0")
    p.add_argument("--lr-min-per-image", default="0.00005", help="cosine floor of the lr per image, a number >= 0")
    p.add_argument("--momentum", default="0.9", help="SGD momentum of the super-net's weights, a number >= 0")
    p.add_argument("--weight-decay", default="0.0001",
                   help="SGD weight decay of the super-net's weights, a number >= 0")
    p.add_argument("--alpha-lr", default="0.01", help="Adam lr for alpha (the architecture weights), a number >= 0")
    p.add_argument("--alpha-weight-decay", default="0.00001", help="Adam weight decay for alpha, a number >= 0")
    p.add_argument("--min-size", default="800", help="detector resize: shorter side in pixels, an integer >= 32")
    p.add_argument("--max-size", default="1333", help="detector resize: longer side cap in pixels, an integer >= 32")
    p.add_argument("--max-steps-per-epoch", default=None,
                   help="cap steps per epoch, an integer >= 1 (quick runs; default: the whole split)")
    add_detector_option_argument(p)
    p.add_argument("--seed", default="0", help="seed of the init, the weights/alpha split of the train set, the data "
                   "order and the gumbel draws, an integer >= 0")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--sampling", default="softmax", choices=("softmax", "gumbel"),
                   help="softmax: every genotype weighted (paper); gumbel: one sampled genotype per group and step "
                        "(GDAS, about the baseline's step cost)")
    p.add_argument("--estimator", default=None, choices=("local", "st"),
                   help="gumbel: how alpha learns; local (default): per-group score-function credit; st: GDAS's "
                        "straight-through gate (recovers far fewer planted groups: benchmarks/README.md)")
    p.add_argument("--tau-start", default=None,
                   help="--estimator st: temperature at the first alpha epoch, a number > 0 (default 10)")
    p.add_argument("--tau-end", default=None, help="--estimator st: temperature at the last epoch, a number > 0 "
                   "(default 0.1)")
    p.add_argument("--tau-schedule", default="linear", choices=("linear", "exp"),
                   help="--estimator st: the anneal from --tau-start to --tau-end, linear or exp")
    p.add_argument("--recompute", action="store_true", help="recompute replica activations in backward (less memory)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoint.pth in the --out folder")
    p.add_argument("--out", required=True, help="output folder: checkpoint.pth (each epoch), arch_epoch_N.json, and at "
                   "the end arch.json, alpha.png, history.json")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--align", default=None, help="decode with every branch a multiple of N channels, an integer >= 1 "
                   "(e.g. 16, 32; default: plain decode)")


def search_cli(args: argparse.Namespace) -> int:
    """Validate every flag, then run the search (DDP under torchrun) and print what it wrote."""
    require("pycocotools", "coco", "search")
    require("matplotlib", "plot", "search (its alpha.png)")
    import torch

    from natsdeploy.runtime.distributed import run_distributed
    from natsdeploy.models.detectors import DETECTORS, parse_detector_options
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
    from natsdeploy.search.decode import groups_per_unit, searchable_convs
    from natsdeploy.search.supernet import group_width

    for name in searchable_convs(cfg.backbone, cfg.stages):
        width = group_width(BACKBONES[cfg.backbone].convs[name], groups=cfg.groups, channels_per_group=cfg.channels_per_group)
        if cfg.align is not None:
            groups_per_unit(BACKBONES[cfg.backbone].convs[name], width, cfg.align, field="--align")
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
    """The `natsdeploy decode` arguments on `p`."""
    p.add_argument("checkpoint", help="search checkpoint: checkpoint.pth in the search's --out folder")
    p.add_argument("-o", "--output", required=True, help="arch.json to write")
    p.add_argument("--align", default=None, help="every branch a multiple of N channels, an integer >= 1 "
                   "(default: the search's --align; 1: plain decode)")


def decode_cli(args: argparse.Namespace) -> int:
    """Decode the checkpoint's alphas (`search.decode.decode_checkpoint`) and write the arch."""
    from natsdeploy.search.decode import decode_checkpoint

    align = parse_int("--align", args.align, 1) if args.align is not None else None
    arch = decode_checkpoint(args.checkpoint, align=align)
    print(f"wrote {arch.save(args.output)} ({len(arch.convs)} convs)")
    return 0
