"""`natsdeploy align`: arguments and the call into `natsdeploy.align`.

Why a sibling module and not `align/cli.py` or `align.py` itself: align is a one-module stage that
search's decode and verify's check import, so its library stays free of argparse (one job per module)
and stays one file (a package just for a two-function parser would move a module three stages
import). `<stage>_cli.py` beside it is the convention for a one-module stage. Torch-free at import.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from natsdeploy.cli_values import parse_int
from natsdeploy.errors import UsageError

__all__ = ["add_align_arguments", "align_cli"]


def add_align_arguments(p: argparse.ArgumentParser) -> None:
    """The `natsdeploy align` arguments on `p`."""
    p.add_argument("arch", help="arch.json")
    p.add_argument("--multiple", required=True, help="N, the channel block to align to: an integer >= 1 that divides "
                   "every listed conv's width (ResNeXt: and is a multiple of its group width), e.g. 16 or 32; "
                   "`natsdeploy check --target` names a runtime's block")
    p.add_argument("-o", "--output", required=True, help="aligned arch.json to write")


def align_cli(args: argparse.Namespace) -> int:
    """Align every branch to a multiple of `--multiple`, print what moved, write the new arch."""
    from natsdeploy.align import align_arch, align_report, format_align_report, validate_multiple
    from natsdeploy.arch import load_arch

    arch = load_arch(args.arch)
    n = validate_multiple(arch, parse_int("--multiple", args.multiple, 1), field="--multiple")
    if Path(args.output).is_dir():
        raise UsageError(f"--output: got {args.output!r}, a folder, expected an arch.json path")
    aligned = align_arch(arch, n)
    print(format_align_report(align_report(arch, aligned), n))
    print(f"wrote {aligned.save(args.output)}")
    return 0
