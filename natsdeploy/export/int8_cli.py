"""The `export --precision int8` command-line flags (argparse only: `--help` imports no torch)."""

from __future__ import annotations

import argparse

__all__ = ["add_int8_arguments"]


def add_int8_arguments(p: argparse.ArgumentParser) -> None:
    """--calibration, --calibration-images and --int8-activations (checked by `int8.check_int8_request`)."""
    p.add_argument("--calibration", default=None, help="int8: a folder of images (.jpg/.jpeg/.png/.bmp, searched "
                   "recursively, sorted by path), a COCO-format folder (its train split) or 'synthetic'")
    p.add_argument("--calibration-images", default=None, help="int8: images to calibrate on (default 64; "
                   "all there are if fewer)")
    p.add_argument("--int8-activations", default=None, help="int8: s8 (default; symmetric, what TensorRT accepts) or "
                   "u8 (asymmetric; ONNX Runtime CPU runs every conv as QLinearConv only with u8)")
