"""The `natsdeploy` command: one table of subcommands, each parsed and run by its stage's cli module.

`COMMANDS` maps a command name `x` to the module that holds `add_x_arguments(p)` (its flags) and
`x_cli(args)` (its run), and to the one-line help `natsdeploy --help` lists. Modules are imported
lazily: `natsdeploy --help` imports none of them, `natsdeploy x ...` only x's. A new command is a
`cli.py` next to its stage plus one row here. Every cli module is torch-free at import.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from natsdeploy.errors import InputError, UsageError

__all__ = ["COMMANDS", "build_parser", "main", "version"]

COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("natsdeploy.verify.cli", "validate an arch file and prove params/MACs equal the baseline's"),
    "align": ("natsdeploy.align_cli", "round every branch to a multiple of N channels, moving the fewest filters"),
    "convert": ("natsdeploy.convert.cli", "import an IC-Conv or RF-Next dilation pattern as an arch file, or write one"),
    "export": ("natsdeploy.export.cli", "export transformed and baseline ONNX with a parity/cost/latency report"),
    "bench": ("natsdeploy.bench.cli", "latency of transformed vs baseline per runtime, interleaved, with percentiles"),
    "search": ("natsdeploy.search.cli", "channel-level NATS search on a torchvision detector (torchrun for DDP)"),
    "decode": ("natsdeploy.search.cli", "decode a search checkpoint into an arch file"),
    "data": ("natsdeploy.data.cli", "datasets: `data synth` writes the synthetic multi-scale COCO set"),
    "erf": ("natsdeploy.verify.cli", "effective receptive field of layer4's centre unit, baseline beside transformed"),
    "train": ("natsdeploy.train.cli", "train a detector on a transformed (or baseline) backbone, COCO AP each epoch"),
    "parity": ("natsdeploy.verify.cli", "detector COCO AP with the PyTorch backbone vs the exported one (ORT/TensorRT)"),
}


class HelpFormatter(argparse.HelpFormatter):
    """Shows each flag's default and allowed choices after its help, unless the help already says them."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.help == argparse.SUPPRESS:
            return text
        said = text % {**vars(action), "prog": self._prog} if "%" in text else text
        extra = ""
        if any(str(c) not in said for c in action.choices or ()):
            extra += f" (one of: {', '.join(str(c) for c in action.choices)})"
        if (_has_default(action) and "default" not in said
                and (action.option_strings or action.nargs in ("?", "*"))):
            shown = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
            extra += f" (default: {shown})"
        return text + extra.replace("%", "%%")  # the help is %-formatted next: a literal % in a value stays one


def _has_default(action: argparse.Action) -> bool:
    """Whether the flag has a default worth showing (not None, a switch's False, an empty list or suppressed;
    by identity, so that a default of 0 counts)."""
    d = action.default
    return not (d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, list) and not d))


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)  # also for nested subparsers (`data synth`)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        if message.startswith("the following arguments are required"):
            message += f" (see: {self.prog} --help)"
        raise UsageError(message)


def version() -> str:
    """The installed distribution's version, or the package's own where it is not installed (a source tree)."""
    from importlib import metadata

    try:
        return metadata.version("natsdeploy")
    except metadata.PackageNotFoundError:
        from natsdeploy import __version__

        return __version__


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `only`, just that command's flags are added (the others list their help alone,
    so `natsdeploy x ...` imports x's module and no other; "" adds none, for `natsdeploy --help`)."""
    p = _Parser(prog="natsdeploy", description="NATS-transformed backbones from search to deployment.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        s = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            getattr(importlib.import_module(module), f"add_{name}_arguments")(s)
    return p


def _run(args: argparse.Namespace) -> int:
    """Call the command's `x_cli(args)`, importing its module now."""
    return int(getattr(importlib.import_module(COMMANDS[args.command][0]), f"{args.command}_cli")(args))


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
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(first if first in COMMANDS else "").parse_args(argv)  # "": no command's flags needed
        return _run(args)
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
