"""Argument parsing for `natsdeploy bench` (thin: validates, then calls `bench`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from natsdeploy.cli_values import add_weights_arguments, parse_float, parse_input_shape, parse_int, weights_value

from natsdeploy.errors import UsageError
from natsdeploy.extras import require

__all__ = ["add_bench_arguments", "bench_cli"]


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The `natsdeploy bench` arguments on `p`."""
    p.add_argument("arch", nargs="?", default=None, help="arch.json (optional with --onnx or --engines)")
    p.add_argument("--backend", nargs="+", default=["torch", "ort"], help="one or more of torch, ort, openvino, trt")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--input-shape", default="1x3x800x1216",
                   help="NxCxHxW: N >= 1, C = 3, H and W >= 32 (default 1x3x800x1216)")
    p.add_argument("--batch", nargs="+", default=[], help="extra batch sizes to time, integers >= 1 (default: none)")
    add_weights_arguments(p, default="seeded init")
    p.add_argument("--onnx", default=None,
                   help="folder from `natsdeploy export` (model.onnx, baseline.onnx) to time (default: export the arch)")
    p.add_argument("--engines", nargs=2, default=None, metavar=("BASELINE", "MODEL"),
                   help="TensorRT engine files to time with --backend trt (default: built from the ONNX)")
    p.add_argument("--fp16", action="store_true", help="fp16 (torch CUDA autocast, TensorRT fp16)")
    p.add_argument("--precision", default="f32", help="OpenVINO inference precision: f32 (default), bf16 or f16")
    p.add_argument("--threads", default=None, help="CPU threads, an integer >= 1 (default: all logical CPUs)")
    p.add_argument("--warmup-s", default="2", help="warm-up seconds, a number >= 0 (default 2)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration-s", default=None,
                   help="time pairs for this many seconds, a number >= 0 (at least 3 pairs; default: --runs)")
    g.add_argument("--runs", default=None, help="number of interleaved pairs, an integer >= 1 (default 20)")
    p.add_argument("--per-conv", action="store_true",
                   help="also time each transformed conv vs its baseline conv (torch and ort; needs the arch file)")
    p.add_argument("--json", default=None, help="write the report here (default: not written)")
    p.add_argument("--plot", default=None, help="write a PNG box plot here (default: not written)")


def bench_cli(args: argparse.Namespace) -> int:
    """Validate every flag, time each backend (and each conv with --per-conv), print and write the report."""
    from natsdeploy.arch import load_arch
    from natsdeploy.bench.run import BACKENDS, bench, format_bench, plot_bench

    for b in args.backend:
        if b not in BACKENDS:
            raise UsageError(f"--backend: got {b!r}, expected some of {list(BACKENDS)}")
    if "openvino" in args.backend:
        require("openvino", "openvino", "--backend openvino")
    if args.plot:
        require("matplotlib", "plot", "--plot")
    from natsdeploy.runners import OPENVINO_PRECISIONS

    if args.precision not in OPENVINO_PRECISIONS:
        raise UsageError(f"--precision: got {args.precision!r}, expected f32, bf16 or f16")
    if args.precision != "f32" and "openvino" not in args.backend:
        raise UsageError(f"--precision: got {args.precision!r} without --backend openvino, expected f32 "
                         "(--precision sets OpenVINO's inference precision; --fp16 is for torch CUDA and TensorRT)")
    if args.device not in ("cpu", "cuda"):
        raise UsageError(f"--device: got {args.device!r}, expected 'cpu' or 'cuda'")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device: got 'cuda', but torch sees no CUDA device here; expected 'cpu'")
    shape = parse_input_shape(args.input_shape)
    batches = [parse_int("--batch", b, 1) for b in args.batch]
    threads = parse_int("--threads", args.threads, 1) if args.threads else None
    warm = parse_float("--warmup-s", args.warmup_s, 0.0)
    duration = parse_float("--duration-s", args.duration_s, 0.0) if args.duration_s else None
    runs = parse_int("--runs", args.runs, 1) if args.runs else (3 if duration else 20)
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path and Path(path).is_dir():
            raise UsageError(f"{flag}: got {path!r}, a folder, expected a file path")
    if "trt" in args.backend:
        from natsdeploy.export.tensorrt import require_tensorrt

        require_tensorrt()
    arch = load_arch(args.arch) if args.arch else None
    if args.per_conv and arch is None:  # before any timing
        raise UsageError("--per-conv: got no arch file, expected one as the first argument (the ONNX files do "
                         "not say which convs were transformed)")
    if args.onnx and not Path(args.onnx).is_dir():
        raise UsageError(f"--onnx: got {args.onnx!r}, expected a folder written by natsdeploy export")
    report = bench(arch, weights=weights_value(args), onnx_dir=args.onnx, engines=args.engines, backends=args.backend,
                   device=args.device, input_shape=shape, batches=batches, fp16=args.fp16, threads=threads,
                   warmup_s=warm, duration_s=duration, runs=runs, openvino_precision=args.precision)
    if args.per_conv:
        from natsdeploy.bench.per_conv import per_conv_bench

        print("per-conv (transformed conv vs its baseline conv, p50):")
        # the user's --runs and --warmup-s hold per conv and backend too (--duration-s alone: 20 pairs a conv)
        report["per_conv"] = per_conv_bench(arch, backends=[b for b in args.backend if b != "trt"],
                                            input_shape=shape, threads=report["settings"]["threads"],
                                            runs=runs if args.runs else 20, warmup_s=warm)
    print(format_bench(report))
    if args.json:
        from natsdeploy.files import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot_bench(report, args.plot)
        print(f"wrote {args.plot}")
    return 0
