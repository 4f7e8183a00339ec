"""The `natsdeploy` command: thin argument parsing over library functions."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from natsdeploy.errors import InputError, UsageError
from natsdeploy.cli_values import add_weights_arguments, parse_input_shape

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        raise UsageError(message)


def _cmd_check(args: argparse.Namespace) -> int:
    import shlex

    from natsdeploy.arch import load_arch
    from natsdeploy.targets import detect_target, get_target
    from natsdeploy.verify.check import check_arch, format_check

    target = get_target(args.target, field="--target") if args.target else detect_target()
    arch = load_arch(args.arch)
    result = check_arch(arch, parse_input_shape(args.input_shape), target=target)
    print(format_check(result, arch_path=shlex.quote(args.arch)))
    return 0 if result.equal else 1  # alignment is a warning, never the exit status


def _cmd_align(args: argparse.Namespace) -> int:
    from pathlib import Path

    from natsdeploy.align import align_arch, align_report, format_align_report, validate_multiple
    from natsdeploy.arch import load_arch
    from natsdeploy.cli_values import parse_int

    arch = load_arch(args.arch)
    n = validate_multiple(arch, parse_int("--multiple", args.multiple, 1), field="--multiple")
    if Path(args.output).is_dir():
        raise UsageError(f"--output: got {args.output!r}, a folder, expected an arch.json path")
    aligned = align_arch(arch, n)
    print(format_align_report(align_report(arch, aligned), n))
    print(f"wrote {aligned.save(args.output)}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from natsdeploy.convert import load_ic_conv

    arch = load_ic_conv(args.pattern, args.backbone)
    path = arch.save(args.output)
    print(f"wrote {path} ({arch.backbone}, {len(arch.convs)} convs)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from natsdeploy.pipeline import export_cli

    return export_cli(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from natsdeploy.bench.cli import bench_cli

    return bench_cli(args)


def _cmd_search(args: argparse.Namespace) -> int:
    from natsdeploy.search.cli import search_cli

    return search_cli(args)


def _cmd_decode(args: argparse.Namespace) -> int:
    from natsdeploy.search.cli import decode_cli

    return decode_cli(args)


def _cmd_erf(args: argparse.Namespace) -> int:
    from natsdeploy.verify.erf import erf_cli

    return erf_cli(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from natsdeploy.train.cli import train_cli

    return train_cli(args)


def _cmd_parity(args: argparse.Namespace) -> int:
    from natsdeploy.verify.parity_cli import parity_cli

    return parity_cli(args)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="natsdeploy", description="NATS-transformed backbones from search to deployment.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("check", help="validate an arch file and prove params/MACs equal the baseline's")
    c.add_argument("arch", help="arch.json")
    c.add_argument("--input-shape", default="1x3x800x1216", help="NxCxHxW (default 1x3x800x1216)")
    c.add_argument("--target", default=None, help="ort-cpu, openvino-cpu, ort-cpu-int8, openvino-cpu-int8, cuda-fp16 "
                   "or cuda-int8: warn about branches that are not a multiple of its channel block (default: ort-cpu, "
                   "block from this CPU)")
    c.set_defaults(func=_cmd_check)

    a = sub.add_parser("align", help="round every branch to a multiple of N channels, moving the fewest filters")
    a.add_argument("arch", help="arch.json")
    a.add_argument("--multiple", required=True, help="N: the channel block to align to (e.g. 16 or 32)")
    a.add_argument("-o", "--output", required=True, help="aligned arch.json to write")
    a.set_defaults(func=_cmd_align)

    v = sub.add_parser("convert", help="import a published dilation pattern as an arch file")
    v.add_argument("--from", dest="source_format", required=True, choices=["ic-conv"])
    v.add_argument("pattern", help="pattern JSON file")
    v.add_argument("--backbone", required=True)
    v.add_argument("-o", "--output", required=True, help="arch.json to write")
    v.set_defaults(func=_cmd_convert)

    from natsdeploy.pipeline import add_export_arguments

    e = sub.add_parser("export", help="export transformed and baseline ONNX with a parity/cost/latency report")
    add_export_arguments(e)
    e.set_defaults(func=_cmd_export)

    from natsdeploy.bench.cli import add_bench_arguments

    b = sub.add_parser("bench", help="latency of transformed vs baseline per runtime, interleaved, with percentiles")
    add_bench_arguments(b)
    b.set_defaults(func=_cmd_bench)

    from natsdeploy.search.cli import add_decode_arguments, add_search_arguments

    s = sub.add_parser("search", help="channel-level NATS search on a torchvision detector (torchrun for DDP)")
    add_search_arguments(s)
    s.set_defaults(func=_cmd_search)
    d = sub.add_parser("decode", help="decode a search checkpoint into an arch file")
    add_decode_arguments(d)
    d.set_defaults(func=_cmd_decode)

    from natsdeploy.data.cli import add_data_arguments

    add_data_arguments(sub.add_parser("data", help="datasets: `data synth` writes the synthetic multi-scale COCO set"))

    r = sub.add_parser("erf", help="effective receptive field of layer4's centre unit, baseline beside transformed")
    r.add_argument("arch", help="arch.json")
    add_weights_arguments(r, default="torchvision init, seeded")
    r.add_argument("--input-size", type=int, default=512, help="input is 1x3xSxS of ones (default 512, >= 64)")
    r.add_argument("--share", type=float, nargs="+", default=[0.5, 0.9], help="ERF mass shares for the radii")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("-o", "--output", required=True, help="PNG to write")
    r.add_argument("--json", default=None, help="JSON report to write")
    r.set_defaults(func=_cmd_erf)

    from natsdeploy.train.cli import add_train_arguments
    from natsdeploy.verify.parity_cli import add_parity_arguments

    t = sub.add_parser("train", help="train a detector on a transformed (or baseline) backbone, COCO AP each epoch")
    add_train_arguments(t)
    t.set_defaults(func=_cmd_train)
    q = sub.add_parser("parity", help="detector COCO AP with the PyTorch backbone vs the exported one (ORT/TensorRT)")
    add_parity_arguments(q)
    q.set_defaults(func=_cmd_parity)
    return p


class _InfoLines(logging.Handler):
    """natsdeploy's INFO records (e.g. the weights summary) as plain stdout lines, each distinct line once per
    command: a command may resolve its weights in several places (a check before any work, then each trunk)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        line = " ".join(record.getMessage().split("\n"))
        if record.levelno == logging.INFO and line not in self.seen:
            self.seen.add(line)
            print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse (no torch import: `--help` answers at once), run, and map every bad input to exit 2 and one line."""
    logger, handler = logging.getLogger("natsdeploy"), _InfoLines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except InputError as e:  # arch, usage, weights, dataset and checkpoint errors (natsdeploy.errors)
        return _fail(str(e))
    except OSError as e:  # an output path that cannot be written, a file that vanished under us
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or type(e).__name__}")
    except KeyboardInterrupt:
        print("natsdeploy: interrupted", file=sys.stderr)
        return 130
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _fail(message: str) -> int:
    print("natsdeploy: error: " + " ".join(message.split("\n")), file=sys.stderr)  # always exactly one line
    return 2


if __name__ == "__main__":
    sys.exit(main())
