"""Argument parsing for `natsdeploy convert`: import another tool's dilation file, or export an arch to one."""

from __future__ import annotations

import argparse
from pathlib import Path

from natsdeploy.errors import UsageError

__all__ = ["add_convert_arguments", "convert_cli", "FORMATS"]

FORMATS = ("ic-conv", "rf-next")


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    """`--from FORMAT FILE --backbone NAME -o arch.json` or `--to FORMAT ARCH.json -o FILE [--drop-permutation]`."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--from", dest="source_format", choices=FORMATS,
                   help="import FILE: ic-conv (IC-Conv's pattern list, one object per 3x3 conv) or rf-next (mmcv "
                        "RFSearchHook's local_search_config_stepN.json, read as mode='fixed_single_branch'; neck and "
                        "head entries are left out, 3x3 convs without an entry keep dilation 1)")
    g.add_argument("--to", dest="target_format", choices=FORMATS,
                   help="export the arch file FILE for IC-Conv's ICConv2d / ic_resnet (pattern_path=) or for mmcv's "
                        "RFSearchHook(mode='fixed_single_branch', rfstructure_file=...) with "
                        "skip_layer=['neck', 'head'] (rf-next needs one dilation per conv)")
    p.add_argument("input", metavar="FILE", help="with --from: the other tool's file; with --to: an arch.json")
    p.add_argument("--backbone", default=None,
                   help="with --from: the backbone the file was searched on (resnet50, ...)")
    p.add_argument("--drop-permutation", action="store_true",
                   help="--to ic-conv: write a conv whose dilations are not contiguous blocks of baseline filters (a "
                        "permuted arch) with each dilation's channel count in branch order; costs the pretrained-"
                        "weight mapping: IC-Conv assigns dilations to contiguous channel groups, so each pretrained "
                        "filter gets the dilation of its position, not the one the search chose")
    p.add_argument("-o", "--output", required=True, help="file to write (arch.json with --from)")


def convert_cli(args: argparse.Namespace) -> int:
    """Check the flag combination, convert, write atomically, print what was left out or assumed."""
    if Path(args.output).is_dir():
        raise UsageError(f"--output: got {args.output!r}, a folder, expected a file path")
    if args.drop_permutation and args.target_format != "ic-conv":
        raise UsageError("--drop-permutation: got it without --to ic-conv, expected it only with --to ic-conv")
    if args.source_format:
        return _import(args)
    return _export(args)


def _import(args: argparse.Namespace) -> int:
    from natsdeploy.convert import load_ic_conv, load_rf_next

    if args.backbone is None:
        raise UsageError(f"--backbone: got nothing, expected the backbone {args.input!r} was searched on with --from")
    if args.source_format == "ic-conv":
        arch = load_ic_conv(args.input, args.backbone)
    else:
        result = load_rf_next(args.input, args.backbone)
        for line in result.notes():
            print(line)
        arch = result.arch
    path = arch.save(args.output)
    print(f"wrote {path} ({arch.backbone}, {len(arch.convs)} convs)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from natsdeploy.arch import load_arch
    from natsdeploy.convert import to_ic_conv, to_rf_next
    from natsdeploy.files import atomic_write_text

    arch = load_arch(args.input)
    if args.backbone is not None and args.backbone != arch.backbone:
        raise UsageError(f"--backbone: got {args.backbone!r}, expected {arch.backbone!r} (the arch's) or nothing "
                         "with --to")
    if args.target_format == "ic-conv":
        out = to_ic_conv(arch, drop_permutation=args.drop_permutation)
        path = atomic_write_text(args.output, out.dumps())
        if out.dropped:
            shown = ", ".join(out.dropped[:3]) + (", ..." if len(out.dropped) > 3 else "")
            print(f"ic-conv: dropped the channel order of {len(out.dropped)} convs ({shown}): each pretrained filter "
                  "now gets the dilation of its position, not the one the search chose for it")
        print(f"wrote {path} (ic-conv pattern: {len(out.patterns)} convs of {arch.backbone} in block order, for "
              f"IC-Conv's ic_{arch.backbone}(pattern_path=...))")
        return 0
    out = to_rf_next(arch)
    path = atomic_write_text(args.output, out.dumps())
    print(out.usage(str(path)))
    print(f"wrote {path}")
    return 0
