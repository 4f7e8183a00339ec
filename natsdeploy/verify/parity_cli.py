"""`natsdeploy parity`: arguments and command. Torch-free at import (the CLI parser imports it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from natsdeploy.cli_values import parse_float, parse_int

from natsdeploy.errors import UsageError
from natsdeploy.extras import require

__all__ = ["add_parity_arguments", "parity_cli"]


def add_parity_arguments(p: argparse.ArgumentParser) -> None:
    """The `natsdeploy parity` arguments on `p`."""
    p.add_argument("arch", help="arch.json the checkpoint was trained on")
    p.add_argument("--checkpoint", required=True, help="OUT/checkpoint.pth written by natsdeploy train")
    p.add_argument("--data", required=True, help="COCO-format folder (its val split), or 'synthetic'")
    p.add_argument("--backend", default="ort",
                   help="ort (ONNX Runtime CPU, default), openvino (OpenVINO CPU, f32) or trt (TensorRT)")
    p.add_argument("--fp16", action="store_true", help="fp16 TensorRT engine (with --backend trt)")
    p.add_argument("--limit", default=None, help="evaluate only the first N val images")
    p.add_argument("--tolerance", default=None,
                   help="bound on |runtime - PyTorch| per COCO metric in AP points, 0-100 scale "
                        "(default 0.1 for fp32, 0.5 for fp16)")
    p.add_argument("--threads", default=None, help="ONNX Runtime intra-op threads (default: all logical CPUs)")
    p.add_argument("--whole", action="store_true",
                   help="run the whole detector exported as one ONNX graph on ONNX Runtime (not only the backbone)")
    p.add_argument("--precision", default="fp32", help="fp32 (default) or int8: the detector with int8 QDQ backbones "
                   "(transformed and baseline) against fp32 ones on ONNX Runtime, both ΔAP rows")
    p.add_argument("--calibration", default=None, help="int8: images to calibrate on: a folder of images (searched "
                   "recursively, sorted by path), a COCO-format folder (its train split) or 'synthetic' (default: --data)")
    p.add_argument("--calibration-images", default=None, help="int8: first N calibration images (default 64; all there "
                   "are if fewer)")
    p.add_argument("--int8-activations", default=None, help="int8: s8 (default) or u8, as export --int8-activations")
    p.add_argument("--json", default=None, help="write the result as JSON here")


def parity_cli(args: argparse.Namespace) -> int:
    """Run detector parity from parsed arguments; 0 when it passes, 1 when it does not."""
    require("pycocotools", "coco", "parity")
    from natsdeploy.arch import load_arch
    from natsdeploy.files import atomic_write_text
    from natsdeploy.verify.detection_parity import detection_parity, format_detection_parity

    arch = load_arch(args.arch)
    if args.backend not in ("ort", "openvino", "trt"):
        raise UsageError(f"--backend: got {args.backend!r}, expected 'ort', 'openvino' or 'trt'")
    if args.backend == "openvino":
        require("openvino", "openvino", "--backend openvino")
    limit = parse_int("--limit", args.limit, 1) if args.limit is not None else None
    tol = parse_float("--tolerance", args.tolerance, 0.0) if args.tolerance is not None else None
    threads = parse_int("--threads", args.threads, 1) if args.threads is not None else None
    if args.precision not in ("fp32", "int8"):
        raise UsageError(f"--precision: got {args.precision!r}, expected fp32 or int8")
    if args.precision == "int8":
        return _int8(args, arch, limit, tol, threads)
    for flag, value in (("--calibration", args.calibration), ("--calibration-images", args.calibration_images),
                        ("--int8-activations", args.int8_activations)):
        if value is not None:
            raise UsageError(f"{flag}: got {value!r} with --precision fp32, expected it only with --precision int8")
    result = detection_parity(arch, args.checkpoint, args.data, backend=args.backend, fp16=args.fp16, limit=limit,
                              tolerance=tol, threads=threads, whole=args.whole)
    print(format_detection_parity(result))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if result.passed else 1


def _int8(args: argparse.Namespace, arch, limit: int | None, tol: float | None, threads: int | None) -> int:
    from natsdeploy.export.int8 import ACTIVATIONS, DEFAULT_CALIBRATION_IMAGES
    from natsdeploy.files import atomic_write_text
    from natsdeploy.verify.detection_int8 import detection_parity_int8, format_detection_int8

    for bad, what in ((args.backend != "ort", f"--backend: got {args.backend!r} with --precision int8, expected ort"),
                      (args.whole, "--whole: got it with --precision int8, expected the backbone mode"),
                      (args.fp16, "--fp16: got it with --precision int8, expected one precision")):
        if bad:
            raise UsageError(what)
    n = (parse_int("--calibration-images", args.calibration_images, 1) if args.calibration_images is not None
         else DEFAULT_CALIBRATION_IMAGES)
    act = args.int8_activations or "s8"
    if act not in ACTIVATIONS:
        raise UsageError(f"--int8-activations: got {act!r}, expected one of {list(ACTIVATIONS)}")
    result = detection_parity_int8(arch, args.checkpoint, args.data, calibration_images=n, limit=limit,
                                   tolerance=tol, threads=threads, activations=act, calibration=args.calibration)
    print(format_detection_int8(result))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if result.passed else 1
