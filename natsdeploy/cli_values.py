"""Command-line values: input-shape strings such as 1x3x800x1216, bounded integers and numbers."""

from __future__ import annotations

import re

from natsdeploy.errors import UsageError  # raised here, imported from errors

__all__ = ["parse_input_shape", "format_shape", "parse_int", "parse_float",
           "add_detector_option_argument", "DATA_HELP"]

DATA_HELP = (  # --data of search and train
    "COCO-format folder: train/ and val/ images with annotations/instances_{train,val}.json, or COCO's "
    "train2017/ val2017/ (`natsdeploy data synth --out data/synth` writes a small one); or 'synthetic': "
    "such a set written once under $NATSDEPLOY_CACHE (default ~/.cache/natsdeploy)")


def parse_input_shape(text: str, *, flag: str = "--input-shape") -> tuple[int, int, int, int]:
    """Parse NxCxHxW (C must be 3; H and W at least 32 so every stage has a pixel)."""
    m = re.fullmatch(r"\s*(\d+)[x,](\d+)[x,](\d+)[x,](\d+)\s*", text or "")
    if not m:
        raise UsageError(f"{flag}: got {text!r}, expected NxCxHxW such as 1x3x800x1216")
    n, c, h, w = (int(g) for g in m.groups())
    if n < 1 or c != 3 or h < 32 or w < 32:
        raise UsageError(f"{flag}: got {text!r}, expected N >= 1, C = 3, H and W >= 32")
    return (n, c, h, w)


def format_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def parse_int(flag: str, text, lo: int = 0, hi: int | None = None) -> int:
    """`text` as an integer in lo..hi (hi None: unbounded), else UsageError naming flag, value and range."""
    expected = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise UsageError(f"{flag}: got {text!r}, expected {expected}") from None
    if v < lo or (hi is not None and v > hi):
        raise UsageError(f"{flag}: got {text!r}, expected {expected}")
    return v


def parse_float(flag: str, text, lo: float = 0.0) -> float:
    """`text` as a finite-or-infinite number >= lo (NaN rejected), else UsageError."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{flag}: got {text!r}, expected a number >= {lo:g}") from None
    if not v >= lo:
        raise UsageError(f"{flag}: got {text!r}, expected a number >= {lo:g}")
    return v


def add_detector_option_argument(p) -> None:
    """`--detector-option KEY=VALUE` (repeatable) on an argparse parser; values are read, checked and typed
    by `natsdeploy.models.detectors.parse_detector_options` (kept here so building the CLI needs no torch)."""
    p.add_argument("--detector-option", action="append", default=None, metavar="KEY=VALUE",
                   help="a numeric keyword argument of torchvision's FasterRCNN, RetinaNet or MaskRCNN (per --detector), "
                        "repeatable, e.g. box_batch_size_per_image=128 (a bad key lists the allowed ones)")
