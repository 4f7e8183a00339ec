"""`natsdeploy export`: its flags (`add_export_arguments`) and the command (`export_cli`): parse, check, call
`export_arch`, print the report.

Torch-free at import (`natsdeploy export --help` must not load torch). The help shows each flag's allowed
values and its default, read from `ExportOptions`, so the two never drift apart.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from natsdeploy.cli_values import (add_weights_arguments, format_shape, parse_float, parse_input_shape, parse_int,
                                   weights_value)
from natsdeploy.errors import UsageError
from natsdeploy.extras import require
from natsdeploy.export.api import MIN_OPSET, OPENVINO_PRECISIONS, PRECISIONS, ExportOptions
from natsdeploy.export.int8 import ACTIVATIONS
from natsdeploy.export.onnx import EXPORT_FORMS
from natsdeploy.export.tensorrt import TRT_CHOICES
from natsdeploy.targets import TARGET_NAMES

__all__ = ["add_export_arguments", "add_int8_arguments", "export_cli", "options_from_args", "parse_profile"]

OUTPUTS = ("features", "logits")
OPENVINO_CHOICES = (*OPENVINO_PRECISIONS, "off")
_DEFAULT = {f.name: f.default for f in fields(ExportOptions)}


def _one_of(choices: tuple[str, ...]) -> str:
    return "{" + ",".join(choices) + "}"


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """The `export` flags; values are checked by `export_cli` (one line, exit 2), defaults are `ExportOptions`'s."""
    d = _DEFAULT
    p.add_argument("arch", help="arch.json")
    add_weights_arguments(p, default="seeded init")
    p.add_argument("--input-shape", default=format_shape(d["input_shape"]),
                   help=f"NxCxHxW (default: {format_shape(d['input_shape'])})")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width (default: static)")
    p.add_argument("--opset", default=None, help=f"ONNX opset, {MIN_OPSET} or newer (default: 17; 18 for --form rows "
                   "and auto, which need Col2Im)")
    p.add_argument("--form", default=d["form"], metavar=_one_of(EXPORT_FORMS),
                   help="transformed conv form; auto: rows or branches per conv, whichever ONNX Runtime CPU runs "
                   f"faster here (default: {d['form']})")
    p.add_argument("--outputs", default="features", metavar=_one_of(OUTPUTS),
                   help="features: c2..c5; logits: c2..c5 and logits (default: features)")
    p.add_argument("--out", default=None, help="output folder (default: ./export-<arch file stem>)")
    p.add_argument("--tolerance", default=None, help="parity bound on max|err|/max|ref| (default: 1e-4; 1e-2 with "
                   "--precision fp16)")
    p.add_argument("--latency-pairs", default=str(d["latency_pairs"]),
                   help=f"interleaved timing pairs on ONNX Runtime CPU, 0 skips timing (default: {d['latency_pairs']})")
    p.add_argument("--warmup-s", default=f"{d['warmup_s']:g}",
                   help=f"warm-up seconds before timing (default: {d['warmup_s']:g})")
    p.add_argument("--threads", default=None, help="runtime intra-op threads (default: every logical CPU)")
    p.add_argument("--seed", default=str(d["seed"]),
                   help=f"seed for the init (without --weights) and the parity input (default: {d['seed']})")
    p.add_argument("--precision", default=None, metavar=_one_of(PRECISIONS),
                   help="fp16: fp16 graphs (fp32 inputs/outputs behind casts) and, with --engine, fp16 engines; "
                   f"int8: static QDQ graphs (needs --calibration) (default: {d['precision']}; fp16 with --fp16)")
    add_int8_arguments(p)
    p.add_argument("--fp16", action="store_true", help="alias of --precision fp16")
    p.add_argument("--engine", action="store_true", help="also build and audit TensorRT engines (extras trt-rtx, trt; "
                   "default: off)")
    p.add_argument("--trt", default=d["trt"], metavar=_one_of(TRT_CHOICES),
                   help=f"TensorRT API for --engine (default: {d['trt']}: tensorrt, else rtx)")
    p.add_argument("--trt-aux-streams", default=None,
                   help="TensorRT max_aux_streams, 0: no auxiliary streams (default: TensorRT's)")
    p.add_argument("--trt-shapes", action="append", default=None, metavar="MIN:OPT:MAX",
                   help="with --engine --dynamic: one optimization profile, each shape NxCxHxW (C = 3, H and W "
                   "multiples of 32, min <= opt <= max, --input-shape inside one profile); repeat for several "
                   "profiles (default: one profile, 1x3x64x64 : --input-shape : twice its N, H and W)")
    p.add_argument("--openvino", default=d["openvino"], metavar=_one_of(OPENVINO_CHOICES),
                   help="OpenVINO CPU rows (parity, latency, int8) at this precision; off: no OpenVINO "
                   f"(default: {d['openvino']})")
    p.add_argument("--checkpoint", default=None, help="a `natsdeploy train` checkpoint: export the whole trained "
                   "detector (resize, backbone, FPN, heads, NMS) as one detector.onnx with dynamic HxW, its ONNX Runtime "
                   "parity and a TensorRT parse/build probe, instead of the backbones (default: backbones only)")
    p.add_argument("--data", default=None, help="with --checkpoint: COCO-format folder whose val split the parity runs "
                   "on (default: synthetic)")
    p.add_argument("--images", default=None, help="with --checkpoint: val images in the ONNX Runtime parity (default: 4)")
    p.add_argument("--target", default=None, metavar=_one_of(TARGET_NAMES),
                   help="report branches that are not a multiple of its channel block (default: ort-cpu, block from "
                   "this CPU)")


def add_int8_arguments(p: argparse.ArgumentParser) -> None:
    """--calibration, --calibration-images, --int8-activations and --int8-reduce-range (checked by
    `int8.check_int8_request`)."""
    d = _DEFAULT
    p.add_argument("--calibration", default=None,
                   help="int8: a folder of images (.jpg/.jpeg/.png/.bmp, searched recursively, sorted by path), a "
                        "COCO-format folder (its train split) or 'synthetic' (default: none; needed for int8)")
    p.add_argument("--calibration-images", default=None,
                   help=f"int8: images to calibrate on (default: {d['calibration_images']}; all there are if fewer)")
    p.add_argument("--int8-activations", default=None, metavar=_one_of(ACTIVATIONS),
                   help="int8: s8, symmetric, what TensorRT accepts (--engine takes s8 only); u8, asymmetric, ONNX "
                   f"Runtime CPU runs every conv as QLinearConv only with u8 (default: {d['int8_activations']})")
    p.add_argument("--int8-reduce-range", action="store_true",
                   help="int8: 7-bit weights, for CPUs without VNNI/AMX whose int8 kernels saturate pair sums in "
                   "int16 (the int8 report says when this CPU does) (default: 8-bit)")


def parse_profile(text: str, *, flag: str = "--trt-shapes") -> tuple[tuple[int, ...], ...]:
    """MIN:OPT:MAX, each NxCxHxW, as three shapes (the rules are `ExportOptions`'s), else one line."""
    parts = (text or "").split(":")
    shapes = [re.fullmatch(r"\s*(\d+)x(\d+)x(\d+)x(\d+)\s*", part) for part in parts]
    if len(parts) != 3 or not all(shapes) or any(int(d) < 1 for m in shapes for d in m.groups()):
        raise UsageError(f"{flag}: got {text!r}, expected MIN:OPT:MAX, each NxCxHxW with positive integers, such as "
                         "1x3x320x320:1x3x800x1216:1x3x1344x1344")
    return tuple(tuple(int(d) for d in m.groups()) for m in shapes)


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    """The `ExportOptions` the flags say, each checked before any work; errors name the flag."""
    if args.outputs not in OUTPUTS:
        raise UsageError(f"--outputs: got {args.outputs!r}, expected 'features' or 'logits'")
    precision = args.precision or ("fp16" if args.fp16 else "fp32")
    if precision not in PRECISIONS or (args.fp16 and precision != "fp16"):
        raise UsageError(f"--precision: got {args.precision!r}{' with --fp16' if args.fp16 else ''}, expected fp32, "
                         "fp16 or int8")
    if args.openvino not in OPENVINO_CHOICES:
        raise UsageError(f"--openvino: got {args.openvino!r}, expected f32, bf16, f16 or off")
    if args.openvino in ("bf16", "f16"):  # asked for; the default f32 rows degrade to one line instead
        require("openvino", "openvino", f"--openvino {args.openvino}")
    from natsdeploy.export.int8 import check_int8_request

    n_calib = check_int8_request(precision, args.calibration, args.calibration_images, form=args.form,
                                 dynamic=args.dynamic, engine=args.engine, activations=args.int8_activations,
                                 reduce_range=args.int8_reduce_range)
    values: dict[str, Any] = dict(
        input_shape=parse_input_shape(args.input_shape), dynamic=args.dynamic, form=args.form,
        opset=parse_int("--opset", args.opset, MIN_OPSET) if args.opset is not None else None,
        logits=args.outputs == "logits", precision=precision,
        tolerance=parse_float("--tolerance", args.tolerance, 0.0) if args.tolerance is not None else None,
        latency_pairs=parse_int("--latency-pairs", args.latency_pairs, 0),
        warmup_s=parse_float("--warmup-s", args.warmup_s, 0.0),
        threads=parse_int("--threads", args.threads, 1) if args.threads is not None else None,
        seed=parse_int("--seed", args.seed, 0),
        openvino=None if args.openvino == "off" else args.openvino,
        engine=args.engine, trt=args.trt,
        trt_aux_streams=parse_int("--trt-aux-streams", args.trt_aux_streams, 0) if args.trt_aux_streams is not None
        else None,
        calibration=args.calibration, calibration_images=n_calib, int8_activations=args.int8_activations or "s8",
        int8_reduce_range=args.int8_reduce_range,
        trt_shapes=tuple(parse_profile(t) for t in args.trt_shapes or ()),
        weights=weights_value(args))
    if args.target:
        from natsdeploy.targets import get_target

        values["target"] = get_target(args.target, field="--target")
    try:
        return ExportOptions(**values)
    except UsageError as e:  # a field's one line, named as its flag
        name, _, rest = str(e).partition(":")
        raise UsageError(f"--{name.replace('_', '-')}:{rest}") from None


def export_cli(args: argparse.Namespace) -> int:
    """Check everything (arch, flags, output folder, weights, TensorRT) before any work, export, print the report."""
    if args.checkpoint:  # the whole trained detector as one graph (export/whole.py)
        from natsdeploy.export.whole import export_whole_cli

        return export_whole_cli(args)
    for flag, value in (("--data", args.data), ("--images", args.images)):
        if value is not None:
            raise UsageError(f"{flag}: got {value!r} without --checkpoint, expected it only with --checkpoint")
    from natsdeploy.arch import load_arch
    from natsdeploy.export.api import export_arch
    from natsdeploy.export.report import format_report

    arch = load_arch(args.arch)
    options = options_from_args(args)
    if options.engine:  # before any work: rows/auto, a missing TensorRT
        from natsdeploy.export.tensorrt import check_engine_request

        check_engine_request(options.form, options.trt, options.trt_aux_streams)
    out = Path(args.out) if args.out else Path(f"export-{Path(args.arch).stem}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: got {str(out)!r}, an existing file, expected a folder")
    if options.weights is not None and options.weights != "imagenet":
        from natsdeploy.models.build import resolve_weights

        resolve_weights(options.weights, arch.spec)  # fail before any work or output
    result = export_arch(arch, out, options)
    print(format_report(result.report, arch_path=args.arch))
    print(f"wrote {', '.join(str(p) for p in result.files.values())}")
    return 0 if result.passed else 1
