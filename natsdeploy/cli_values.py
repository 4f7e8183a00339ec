"""Command-line values: input-shape strings such as 1x3x800x1216, bounded integers and numbers, `--weights`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from natsdeploy.errors import UsageError  # raised here, imported from errors

__all__ = ["parse_input_shape", "format_shape", "parse_int", "parse_float",
           "add_detector_option_argument", "DATA_HELP", "WEIGHTS_STRIDES", "WeightsFile", "add_weights_arguments",
           "weights_value"]

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


WEIGHTS_STRIDES = ("auto", "3x3", "1x1")
WEIGHTS_HELP = ("backbone weights: a .pth (torch.save) or .safetensors file whose layout is read from its keys: "
                "torchvision classification ResNet/ResNeXt (timm resnet*/resnext* alike), torchvision detection "
                "(Faster/Mask R-CNN, RetinaNet: backbone.body.*), mmdetection/mmengine (backbone.*), detectron2 "
                "DetectionCheckpointer .pth (backbone.bottom_up.*), a natsdeploy train checkpoint; or 'imagenet' "
                "(torchvision's, downloaded)")
STRIDE_HELP = ("where the weights' downsampling bottlenecks stride: auto (default: from the file; torchvision, timm "
               "and natsdeploy weights stride in the 3x3 conv, mmdetection's say so in their config), 3x3, or 1x1 "
               "(detectron2's default RESNETS.STRIDE_IN_1X1=True, mmdetection style='caffe': refused, torchvision "
               "builds the stride into the 3x3 conv); a detectron2 .pth of a ResNet-50 or larger needs it")


@dataclass(frozen=True)
class WeightsFile:
    """A `--weights` path with the user's `--weights-stride`; a path-like, so it travels wherever a path does."""

    path: str
    stride: str = "auto"

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path if self.stride == "auto" else f"{self.path} (--weights-stride {self.stride})"


def add_weights_arguments(p, *, default: str) -> None:
    """`--weights` and `--weights-stride` on a parser; `default` says what runs without --weights. Read the
    value with `weights_value(args)`."""
    p.add_argument("--weights", default=None, help=f"{WEIGHTS_HELP} (default: {default})")
    p.add_argument("--weights-stride", default="auto", choices=WEIGHTS_STRIDES, help=STRIDE_HELP)


def weights_value(args) -> str | WeightsFile | None:
    """What `--weights` / `--weights-stride` ask for: None, 'imagenet', a path, or a `WeightsFile` (path + stride),
    as `natsdeploy.models.build.build_backbone` takes it."""
    weights, stride = args.weights, getattr(args, "weights_stride", "auto")
    if stride not in WEIGHTS_STRIDES:
        raise UsageError(f"--weights-stride: got {stride!r}, expected one of {list(WEIGHTS_STRIDES)}")
    if weights is None and stride != "auto":
        raise UsageError(f"--weights-stride: got {stride!r} without --weights, expected --weights FILE with it")
    if weights == "imagenet" and stride == "1x1":
        raise UsageError("--weights-stride: got '1x1' with --weights imagenet, expected auto or 3x3 (torchvision's "
                         "ImageNet ResNets stride in the 3x3 conv)")
    if weights is None or stride == "auto" or weights == "imagenet":
        return weights
    return WeightsFile(os.fspath(weights), stride)
