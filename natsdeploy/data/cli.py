"""Argument parsing for `natsdeploy data` (thin: validates flags, then calls the library)."""

from __future__ import annotations

import argparse
import json
import re

from natsdeploy.cli_values import parse_int

from natsdeploy.errors import UsageError
from natsdeploy.extras import require

__all__ = ["add_data_arguments", "data_cli", "synth_cli"]


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The `natsdeploy data` subcommands (today `synth`) and their arguments on `p`."""
    sub = p.add_subparsers(dest="data_command", metavar="{synth}", required=True)  # parser_class defaults to type(p)
    s = sub.add_parser("synth", help="write the synthetic multi-scale COCO-format shapes dataset")
    s.add_argument("--out", required=True, help="folder to create (must be new or empty)")
    s.add_argument("--images", default="64", help="training images, an integer >= 1 (default 64)")
    s.add_argument("--val-images", default="16", help="validation images, an integer >= 1 (default 16)")
    s.add_argument("--size", default="256x320", help="image HxW, each 32..4096 (default 256x320)")
    s.add_argument("--classes", default="3", help="classes (one shape each), 1..6 (default 3)")
    s.add_argument("--max-objects", default="6", help="most objects per image, an integer >= 1 (default 6)")
    s.add_argument("--seed", default="0", help="seed, >= 0 (default 0)")
    s.set_defaults(func=synth_cli)


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)[x,](\d+)\s*", text or "")
    if not m or not all(32 <= int(g) <= 4096 for g in m.groups()):
        raise UsageError(f"--size: got {text!r}, expected HxW with H and W in 32..4096, such as 256x320")
    return int(m.group(1)), int(m.group(2))


def data_cli(args: argparse.Namespace) -> int:
    """`natsdeploy data SUBCOMMAND`: run the chosen subcommand."""
    return {"synth": synth_cli}[args.data_command](args)


def synth_cli(args: argparse.Namespace) -> int:
    require("pycocotools", "coco", "data synth")
    from natsdeploy.data.synthetic import SHAPES, make_synthetic_coco

    kwargs = dict(train_images=parse_int("--images", args.images, 1), val_images=parse_int("--val-images", args.val_images, 1),
                  image_size=_size(args.size), classes=parse_int("--classes", args.classes, 1, len(SHAPES)),
                  max_objects=parse_int("--max-objects", args.max_objects, 1), seed=parse_int("--seed", args.seed, 0))
    out = make_synthetic_coco(args.out, **kwargs)
    counts = {split: len(json.loads((out / "annotations" / f"instances_{split}.json").read_text())["annotations"])
              for split in ("train", "val")}
    h, w = kwargs["image_size"]
    print(f"wrote {out}: train {kwargs['train_images']} images / {counts['train']} objects, "
          f"val {kwargs['val_images']} images / {counts['val']} objects, {kwargs['classes']} classes, "
          f"{h}x{w}, seed {kwargs['seed']}")
    return 0
