"""The `natsdeploy` command (natsdeploy/cli.py): the command table and its lazy imports, `--version`, exit codes
and one-line errors, long jobs that require their data and output folder, and every flag's help."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

import natsdeploy
from natsdeploy import cli
from natsdeploy.cli import COMMANDS, main
from tests.conftest import EXAMPLES, REPO
from tests.helpers import assert_exit_2, cli_parsers, command_flag_help, flag_help

ARCH = str(EXAMPLES / "resnet18_nats_c.json")


def test_check_example_runs_the_shipped_copy(capsys):
    """--example NAME checks the copy shipped inside the package (either spelling); 'list' names them."""
    from natsdeploy.examples import example_path

    assert main(["check", "--example", "resnet18-nats-c", "--input-shape", "1x3x64x64"]) == 0
    out = capsys.readouterr().out
    assert "verdict: equal" in out and str(example_path("resnet18-nats-c")) in out
    assert main(["check", "--example", "resnet18_nats_c", "--input-shape", "1x3x64x64"]) == 0
    assert "verdict: equal" in capsys.readouterr().out
    assert main(["check", "--example", "list"]) == 0
    assert capsys.readouterr().out.split() == ["resnet18-nats-c", "resnet50-nats-c"]


def test_check_schema_prints_the_shipped_schema(capsys):
    from natsdeploy.arch_schema import json_schema

    assert main(["check", "--schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


@pytest.mark.parametrize("args, expected", [
    (["check"], "arch: got neither, expected an arch.json, --example NAME"),
    (["check", "EX", "--example", "resnet18-nats-c"], "arch: got both ARCH.json and --example"),
    (["check", "--example", "resnet51-nats-c"], "--example: got 'resnet51-nats-c', expected one of "
                                                "['resnet18-nats-c', 'resnet50-nats-c']"),
])
def test_check_needs_exactly_one_arch(capsys, args, expected):
    args = [str(EXAMPLES / "resnet18_nats_c.json") if a == "EX" else a for a in args]
    assert_exit_2(args, capsys, contains=expected)




@pytest.mark.parametrize("args, expected", [
    (["check", "EX", "--input-shape", "1x3x800"], "--input-shape"),
    (["check", "EX", "--input-shape", "1x4x800x800"], "C = 3"),
    (["check", "/nonexistent/arch.json"], "existing file"),
    (["bogus"], "invalid choice"),
])
def test_usage_errors_exit_2(capsys, args, expected):
    args = [str(EXAMPLES / "resnet18_nats_c.json") if a == "EX" else a for a in args]
    assert_exit_2(args, capsys, contains=expected)


def test_console_script_has_no_traceback(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("[]")
    assert_exit_2(["check", p], process=True, cwd=tmp_path, unchanged=tmp_path)


# -- --version ---------------------------------------------------------------------------------------------------
def test_version_prints_the_installed_version_and_exits_0(capsys):
    from importlib import metadata

    try:
        expected = metadata.version("natsdeploy")
    except metadata.PackageNotFoundError:
        expected = natsdeploy.__version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"natsdeploy {expected}\n" and expected


def test_version_falls_back_to_the_package_version_in_a_source_tree(monkeypatch):
    from importlib import metadata

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert cli.version() == natsdeploy.__version__ == "0.1.0"


# -- long jobs require their data and output folder --------------------------------------------------------------
@pytest.mark.parametrize("argv, missing", [
    (["search"], "--data, --out"),
    (["search", "--data", "DATA"], "--out"),
    (["search", "--out", "OUT", "--epochs", "1"], "--data"),
    (["train"], "--data, --out"),
    (["train", "ARCH", "--data", "DATA"], "--out"),
    (["train", "ARCH", "--out", "OUT"], "--data"),
])
def test_search_and_train_without_data_or_out_exit_2_and_write_nothing(tmp_path, monkeypatch, capsys, argv, missing):
    """No silent 25-epoch run on a synthetic set written to ~/.cache: one usage line naming what is missing
    and the command that lists every flag; nothing written (home, cache and working folder untouched)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NATSDEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    paths = {"DATA": str(tmp_path / "data"), "OUT": str(tmp_path / "out"), "ARCH": ARCH}
    err = assert_exit_2([paths.get(a, a) for a in argv], capsys, unchanged=tmp_path, absent=[tmp_path / "out"],
                        contains=f"the following arguments are required: {missing} (see: natsdeploy {argv[0]} --help)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    fix = err.split("(see: ")[1].rstrip(")").split()  # the printed fix runs as printed
    with pytest.raises(SystemExit) as e:
        main(fix[1:])
    assert e.value.code == 0 and f"usage: natsdeploy {argv[0]}" in capsys.readouterr().out


def test_search_without_arguments_as_a_console_command(tmp_path):
    err = assert_exit_2(["search"], process=True, cwd=tmp_path, unchanged=tmp_path)
    assert err == ("natsdeploy: error: the following arguments are required: --data, --out "
                   "(see: natsdeploy search --help)")


# -- help: every flag shows its default and allowed values -------------------------------------------------------
def test_the_table_registers_every_command_with_its_conventional_functions():
    import importlib

    commands = {path[0] for path, _ in cli_parsers() if len(path) == 1}
    assert commands == set(COMMANDS) | {"convert"}  # convert joins the table with natsdeploy/convert/cli.py
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        assert callable(getattr(mod, f"add_{name}_arguments")) and callable(getattr(mod, f"{name}_cli")), name
        assert help_text and "\n" not in help_text


def test_every_flag_shows_its_default_and_its_choices():
    seen = 0
    for path, parser in cli_parsers():
        for action in parser._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            where = f"natsdeploy {' '.join(path)} {action.option_strings[-1]}"
            text = flag_help(parser, action)
            if path[0] not in ("export", "convert"):  # their parsers have other owners; defaults/choices still hold
                assert text, f"{where}: no help"
            default = action.default
            if not (default is None or default is False or default is argparse.SUPPRESS or default == []):
                shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
                assert "default" in text and shown in text, f"{where}: default {shown!r} not in {text!r}"
                seen += 1
            for choice in action.choices or ():
                assert str(choice) in text, f"{where}: choice {choice!r} not in {text!r}"
    assert seen > 40  # the walk reached the subcommands' flags


def test_flag_help_lists_the_values_the_code_accepts():
    """Where the code checks a value against a list (torch-free help cannot import most of them), the help names
    exactly that list, so the two cannot drift apart."""
    from natsdeploy.bench.run import BACKENDS
    from natsdeploy.data.synthetic import SHAPES
    from natsdeploy.export.int8 import ACTIVATIONS, DEFAULT_CALIBRATION_IMAGES
    from natsdeploy.models.detectors import DETECTORS
    from natsdeploy.runners import OPENVINO_PRECISIONS
    from natsdeploy.search.decode import PRESETS
    from natsdeploy.specs import BACKBONES
    from natsdeploy.targets import TARGET_NAMES
    from natsdeploy.verify.erf import MIN_INPUT_SIZE

    stages = {s for preset in PRESETS.values() for s in preset}
    wanted = {
        (("bench",), "--backend"): BACKENDS, (("bench",), "--precision"): OPENVINO_PRECISIONS,
        (("bench",), "--device"): ("cpu", "cuda"), (("search",), "--device"): ("cpu", "cuda"),
        (("train",), "--device"): ("cpu", "cuda"),
        (("search",), "--detector"): DETECTORS, (("train",), "--detector"): DETECTORS,
        (("search",), "--backbone"): BACKBONES, (("train",), "--backbone"): BACKBONES,
        (("search",), "--preset"): PRESETS, (("search",), "--stages"): stages,
        (("check",), "--target"): TARGET_NAMES, (("parity",), "--backend"): ("ort", "openvino", "trt"),
        (("parity",), "--precision"): ("fp32", "int8"), (("parity",), "--int8-activations"): ACTIVATIONS,
        (("parity",), "--calibration-images"): (f"default {DEFAULT_CALIBRATION_IMAGES}",),
        (("erf",), "--input-size"): (f">= {MIN_INPUT_SIZE}",), (("data", "synth"), "--classes"): (f"1..{len(SHAPES)}",),
        (("train",), "--trainable-layers"): ("0..5",),
    }
    for (path, flag), values in wanted.items():
        text = command_flag_help(path, flag)
        assert all(str(v) in text for v in values), (path, flag, sorted(map(str, values)), text)


def test_search_help_explains_its_flags_and_the_stages_format():
    for flag in ("--backbone", "--epochs", "--momentum", "--weight-decay", "--seed", "--out", "--stages"):
        assert len(command_flag_help(("search",), flag)) > 30, flag
    stages = command_flag_help(("search",), "--stages")
    assert "comma-separated" in stages and "layer2,layer3,layer4" in stages


LAZY = """
import contextlib, io, json, sys
from natsdeploy.cli import COMMANDS, main
loaded = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0, argv
    loaded.append(sorted({module for module, _ in COMMANDS.values()} & set(sys.modules)))
print(json.dumps(loaded))
"""


def test_a_command_imports_only_its_own_module():
    r = subprocess.run([sys.executable, "-c", LAZY, json.dumps([["--help"], ["--version"], ["check", "--help"]])],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == [[], [], ["natsdeploy.verify.cli"]]
