"""The verify stage's commands, `natsdeploy parity`, `erf` and `check`: arguments and the call into the library.

Torch-free at import (the CLI parser imports it); each `x_cli` imports what it runs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from natsdeploy.cli_values import add_weights_arguments, parse_float, parse_input_shape, parse_int, weights_value

from natsdeploy.errors import UsageError
from natsdeploy.extras import require
from natsdeploy.targets import TARGET_NAMES

__all__ = ["add_parity_arguments", "parity_cli", "add_erf_arguments", "erf_cli", "add_check_arguments", "check_cli"]


def add_parity_arguments(p: argparse.ArgumentParser) -> None:
    """The `natsdeploy parity` arguments on `p`."""
    p.add_argument("arch", help="arch.json the checkpoint was trained on")
    p.add_argument("--checkpoint", required=True, help="the checkpoint.pth natsdeploy train wrote in its --out folder")
    p.add_argument("--data", required=True, help="COCO-format folder (its val split is evaluated), or 'synthetic'")
    p.add_argument("--backend", default="ort",
                   help="ort (ONNX Runtime CPU, default), openvino (OpenVINO CPU, f32) or trt (TensorRT)")
    p.add_argument("--fp16", action="store_true", help="fp16 TensorRT engine (with --backend trt)")
    p.add_argument("--limit", default=None, help="evaluate only the first N val images, an integer >= 1 (default: all)")
    p.add_argument("--tolerance", default=None,
                   help="bound on |runtime - PyTorch| per COCO metric in AP points, 0-100 scale, a number >= 0 "
                        "(default 0.1 for fp32, 0.5 for fp16; int8: the extra ΔAP loss allowed, default 0.5)")
    p.add_argument("--threads", default=None,
                   help="ONNX Runtime intra-op threads, an integer >= 1 (default: all logical CPUs)")
    p.add_argument("--whole", action="store_true",
                   help="run the whole detector exported as one ONNX graph on ONNX Runtime (not only the backbone)")
    p.add_argument("--precision", default="fp32", help="fp32 (default) or int8: the detector with int8 QDQ backbones "
                   "(transformed and baseline) against fp32 ones on ONNX Runtime, both ΔAP rows")
    p.add_argument("--calibration", default=None, help="int8: images to calibrate on: a folder of images (searched "
                   "recursively, sorted by path), a COCO-format folder (its train split) or 'synthetic' (default: --data)")
    p.add_argument("--calibration-images", default=None, help="int8: first N calibration images, an integer >= 1 "
                   "(default 64; all there are if fewer)")
    p.add_argument("--int8-activations", default=None, help="int8: s8 (default) or u8, as export --int8-activations")
    p.add_argument("--bootstrap-replicates", default=None,
                   help="int8: resamples of the val images for the verdict's interval, an integer >= 100 (default 1000)")
    p.add_argument("--bootstrap-seed", default=None, help="int8: seed of the resampling (default 0)")
    p.add_argument("--json", default=None, help="write the result as JSON here (default: not written)")
    p.epilog = ("int8 verdict: per metric, D = ΔAP transformed - ΔAP baseline (Δ = int8 - fp32) with a 95%% paired "
                "bootstrap interval over the val images; pass if its lower end > -tolerance (default 0.5 AP), fail "
                "if its upper end < -tolerance, else inconclusive (more images needed). Exit status: 0 pass, "
                "1 fail, 2 bad input, 3 inconclusive (int8 only; verify.bootstrap.EXIT_CODES).")


def parity_cli(args: argparse.Namespace) -> int:
    """Run detector parity from parsed arguments; the exit status: 0 pass, 1 fail, 3 inconclusive (int8 only)."""
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
    int8_only = (("--calibration", args.calibration), ("--calibration-images", args.calibration_images),
                 ("--int8-activations", args.int8_activations), ("--bootstrap-replicates", args.bootstrap_replicates),
                 ("--bootstrap-seed", args.bootstrap_seed))
    for flag, value in int8_only:
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
    from natsdeploy.verify.bootstrap import DEFAULT_REPLICATES, DEFAULT_SEED, EXIT_CODES
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
    replicates = (parse_int("--bootstrap-replicates", args.bootstrap_replicates, 100)
                  if args.bootstrap_replicates is not None else DEFAULT_REPLICATES)
    seed = parse_int("--bootstrap-seed", args.bootstrap_seed, 0) if args.bootstrap_seed is not None else DEFAULT_SEED
    result = detection_parity_int8(arch, args.checkpoint, args.data, calibration_images=n, limit=limit,
                                   tolerance=tol, threads=threads, activations=act, calibration=args.calibration,
                                   replicates=replicates, bootstrap_seed=seed)
    print(format_detection_int8(result))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return EXIT_CODES[result.outcome]


def add_erf_arguments(p: argparse.ArgumentParser) -> None:
    """The `natsdeploy erf` arguments on `p`."""
    p.add_argument("arch", help="arch.json")
    add_weights_arguments(p, default="torchvision init, seeded")
    p.add_argument("--input-size", type=int, default=512,
                   help="input is 1x3xSxS of ones, S an integer >= 64 (default 512)")
    p.add_argument("--share", type=float, nargs="+", default=[0.5, 0.9],
                   help="ERF mass shares to give radii for, each a number strictly between 0 and 1")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed of the torchvision init without --weights")
    p.add_argument("-o", "--output", required=True, help="PNG to write")
    p.add_argument("--json", default=None, help="JSON report to write (default: not written)")


def _check_out_path(flag: str, value: str | None) -> None:
    if value is None:
        return
    p = Path(value)
    if p.is_dir() or value.endswith(("/", os.sep)):
        raise UsageError(f"{flag}: got {value!r}, a folder; expected a file path")
    if p.parent.exists() and not p.parent.is_dir():
        raise UsageError(f"{flag}: got {value!r}, whose parent is not a folder; expected a file path")


def erf_cli(args: argparse.Namespace) -> int:
    """`natsdeploy erf`: validate, compute both maps, write the PNG (and JSON), print the radii."""
    from natsdeploy.arch import load_arch
    from natsdeploy.files import atomic_write_text
    from natsdeploy.verify.erf import MIN_INPUT_SIZE, erf_maps, erf_report, plot_erf

    require("matplotlib", "plot", "erf (its PNG)")
    if args.input_size < MIN_INPUT_SIZE:
        raise UsageError(f"--input-size: got {args.input_size}, expected an int >= {MIN_INPUT_SIZE}")
    shares = list(args.share)
    for s in shares:
        if not (0.0 < s < 1.0):  # also rejects NaN
            raise UsageError(f"--share: got {s}, expected a number strictly between 0 and 1")
    _check_out_path("-o/--output", args.output)
    _check_out_path("--json", args.json)
    arch = load_arch(args.arch)
    base, trans = erf_maps(arch, weights=weights_value(args), input_size=args.input_size, seed=args.seed)
    weights_desc = args.weights if args.weights is not None else f"torchvision init, torch.manual_seed({args.seed})"
    meta = {"arch": str(args.arch), "backbone": arch.backbone, "input_size": args.input_size,
            "weights": str(weights_desc), "seed": args.seed,
            "method": "NATS 4.4 / Luo et al.: input ones, ReLUs removed, eval, d(sum_c layer4[c, h//2, w//2])/d input, "
                      "|grad| summed over input channels, normalised to sum 1"}
    report = erf_report(base, trans, shares=shares, meta=meta)
    title_radii = "; ".join(
        f"r{int(round(r['share'] * 100))}: {r['baseline_px']:.1f} -> {r['transformed_px']:.1f} px"
        + (f" ({r['ratio_transformed_over_baseline']:.2f}x)" if r["ratio_transformed_over_baseline"] else "")
        for r in report["radii"])
    title = f"ERF of layer4 centre unit, {arch.backbone}, input {args.input_size}px, {weights_desc}\n{title_radii}"
    png = plot_erf(base, trans, args.output, shares=shares, title=title)
    lines = [f"ERF {arch.backbone} input {args.input_size}x{args.input_size} ({weights_desc})"]
    for r in report["radii"]:
        ratio = r["ratio_transformed_over_baseline"]
        lines.append(f"  {int(round(r['share'] * 100))}% radius: baseline {r['baseline_px']:.1f} px, "
                     f"transformed {r['transformed_px']:.1f} px, ratio "
                     + (f"{ratio:.3f}" if ratio is not None else "n/a"))
    lines.append(f"wrote {png}")
    if args.json:
        lines.append(f"wrote {atomic_write_text(Path(args.json), json.dumps(report, indent=2) + chr(10))}")
    print("\n".join(lines))
    return 0


def add_check_arguments(p: argparse.ArgumentParser) -> None:
    """The `natsdeploy check` arguments on `p`."""
    p.add_argument("arch", nargs="?", default=None, help="arch.json (or --example NAME, or --schema)")
    p.add_argument("--example", default=None, help="check an example arch shipped with natsdeploy, e.g. "
                   "resnet50-nats-c ('list' lists them)")
    p.add_argument("--schema", action="store_true", help="print the arch file's JSON Schema and exit")
    p.add_argument("--input-shape", default="1x3x800x1216",
                   help="NxCxHxW to count MACs at: N >= 1, C = 3, H and W >= 32 (default 1x3x800x1216)")
    p.add_argument("--target", default=None, help=f"{', '.join(TARGET_NAMES)}: warn about branches that are not a "
                   "multiple of its channel block (default: ort-cpu, block from this CPU)")


def _check_arch_path(args: argparse.Namespace) -> str | None:
    """The arch file `check` reads (ARCH.json or a shipped --example), or None once --schema or
    `--example list` has printed its answer. Torch-free."""
    if args.schema:  # the arch file's JSON Schema, shipped in the package
        from natsdeploy.arch_schema import shipped_schema

        print(shipped_schema(), end="")
        return None
    if (args.arch is None) == (args.example is None):
        raise UsageError(f"arch: got {'both ARCH.json and --example' if args.arch else 'neither'}, expected an "
                         "arch.json, --example NAME (natsdeploy check --example list) or --schema")
    if args.example is None:
        return args.arch
    from natsdeploy.examples import example_path, list_examples

    if args.example == "list":
        print("\n".join(list_examples()))
        return None
    return str(example_path(args.example))


def check_cli(args: argparse.Namespace) -> int:
    """`natsdeploy check`: 0 when params and MACs equal the baseline's, 1 when not (alignment only warns)."""
    path = _check_arch_path(args)
    if path is None:
        return 0
    from natsdeploy.arch import load_arch
    from natsdeploy.targets import detect_target, get_target
    from natsdeploy.verify.check import check_arch, format_check

    target = get_target(args.target, field="--target") if args.target else detect_target()
    arch = load_arch(path)
    result = check_arch(arch, parse_input_shape(args.input_shape), target=target)
    print(format_check(result, arch_path=path))
    return 0 if result.equal else 1  # alignment is a warning, never the exit status
