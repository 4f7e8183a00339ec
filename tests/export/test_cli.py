"""`natsdeploy export`'s flags and command (natsdeploy.export.cli): help with choices and defaults, the defaults
equal `ExportOptions`'s, flag-named errors, the alignment hint with the real arch path."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import shutil

import pytest

from natsdeploy.cli import build_parser, main
from tests.conftest import EXAMPLES
from tests.helpers import assert_exit_2

EX = EXAMPLES / "resnet18_nats_c.json"


def _help() -> str:
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), pytest.raises(SystemExit) as e:
        build_parser().parse_args(["export", "--help"])
    assert e.value.code == 0
    return " ".join(shown.getvalue().split())  # argparse wraps lines; compare on single spaces


def _export_parser():
    sub = build_parser()._subparsers._group_actions[0]
    return sub.choices["export"]


def test_help_shows_choices_and_defaults():
    text = _help()
    for choices in ("--form {branches,sum,rows,function,auto}", "--outputs {features,logits}",
                    "--precision {fp32,fp16,int8}", "--openvino {f32,bf16,f16,off}", "--trt {auto,tensorrt,rtx}",
                    "--int8-activations {s8,u8}", "--target {ort-cpu,openvino-cpu,ort-cpu-int8,openvino-cpu-int8,"
                    "cuda-fp16,cuda-int8}"):
        assert choices in text, choices
    for default in ("NxCxHxW (default: 1x3x800x1216)", "0 skips timing (default: 20)",
                    "warm-up seconds before timing (default: 2)", "runs faster here (default: branches)",
                    "c2..c5 and logits (default: features)", "(default: fp32; fp16 with --fp16)",
                    "no OpenVINO (default: f32)", "(default: auto: tensorrt, else rtx)",
                    "images to calibrate on (default: 64; all there are if fewer)", "(default: s8)", "input (default: 0)"):
        assert default in text, default
    for action in _export_parser()._actions:  # every flag that takes a value says its default
        if action.option_strings and action.nargs != 0 and action.dest != "help":
            assert "default: " in action.help, action.option_strings


def test_command_defaults_are_the_library_defaults():
    from natsdeploy.export.api import ExportOptions
    from natsdeploy.export.cli import options_from_args

    args = build_parser().parse_args(["export", str(EX)])
    assert options_from_args(args) == ExportOptions()
    args = build_parser().parse_args(["export", str(EX), "--openvino", "off", "--outputs", "logits", "--fp16"])
    assert options_from_args(args) == ExportOptions(openvino=None, logits=True, precision="fp16")


@pytest.mark.parametrize("args, contains", [
    (["--trt", "cuda"], "--trt: got 'cuda', expected one of ['auto', 'tensorrt', 'rtx']"),
    (["--form", "fancy"], "--form: got 'fancy', expected one of ['branches', 'sum', 'rows', 'function', 'auto']"),
    (["--form", "rows", "--opset", "17"], "--opset: got 17, expected 18 or newer for form 'rows'"),
    (["--warmup-s", "-1"], "--warmup-s: got '-1', expected a number >= 0"),
])
def test_bad_flags_name_the_flag_exit_2_and_write_nothing(tmp_path, capsys, args, contains):
    out = tmp_path / "o"
    assert_exit_2(["export", str(EX), *args, "--out", str(out)], capsys, contains=contains, absent=[out])


def test_alignment_hint_carries_the_real_arch_path(tmp_path, capsys):
    """The fix line names the arch file given, shell-quoted as `natsdeploy check` prints it, not a placeholder."""
    arch = tmp_path / "my arch's.json"
    shutil.copy(EX, arch)
    code = main(["export", str(arch), "--input-shape", "1x3x64x96", "--latency-pairs", "0", "--openvino", "off",
                 "--target", "cuda-int8", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    al = json.loads((tmp_path / "o" / "report.json").read_text())["alignment"]
    assert code == 0 and not al["aligned"]
    aligned = tmp_path / "my arch's_a32.json"
    command = f"natsdeploy align {shlex.quote(str(arch))} --multiple 32 -o {shlex.quote(str(aligned))}"
    assert f"(warning; fix: {command})" in out
    assert "ARCH.json" not in out
    main(["check", str(arch), "--input-shape", "1x3x64x96", "--target", "cuda-int8"])
    assert command in capsys.readouterr().out  # as check says it
    assert main(shlex.split(command)[1:]) == 0 and aligned.is_file()  # and it runs as printed
