"""The `natsdeploy` command: exit codes and one-line errors."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from natsdeploy.cli import main
from tests.conftest import EXAMPLES
from tests.helpers import ALL, random_arch


@pytest.mark.parametrize("backbone", ALL)
def test_check_valid_arch_exits_0_with_equal(tmp_path, capsys, backbone):
    p = random_arch(backbone, random.Random(5), max_dilation=5).save(tmp_path / "a.json")
    assert main(["check", str(p), "--input-shape", "1x3x512x768"]) == 0
    out = capsys.readouterr().out
    assert "verdict: equal" in out and "DIFFERENT" not in out
    assert "stage-5 (layer4)" in out


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_check_shipped_examples(capsys, path):
    assert main(["check", str(path)]) == 0
    assert "verdict: equal" in capsys.readouterr().out


BAD = [
    ("", "empty"),
    ("{", "invalid JSON"),
    (json.dumps({"format": "natsdeploy-arch", "version": 1, "backbone": "resnet50",
                 "convs": {"layer3.0.conv2": {"branches": [{"dilation": 2, "channels": 255}]}}}), "summing to 256"),
    (json.dumps({"format": "natsdeploy-arch", "version": 3, "backbone": "resnet50", "convs": {}}), "version"),
    (json.dumps({"format": "natsdeploy-arch", "version": 1, "backbone": "resnet50", "convs": {}, "x": 1}), "only keys"),
]


@pytest.mark.parametrize("content, expected", BAD)
def test_check_malformed_exits_2_one_line(tmp_path, capsys, content, expected):
    p = tmp_path / "bad.json"
    p.write_text(content)
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and err.startswith("natsdeploy: error: ")


@pytest.mark.parametrize("args, expected", [
    (["check", "EX", "--input-shape", "1x3x800"], "--input-shape"),
    (["check", "EX", "--input-shape", "1x4x800x800"], "C = 3"),
    (["check", "/nonexistent/arch.json"], "existing file"),
    (["bogus"], "invalid choice"),
])
def test_usage_errors_exit_2(capsys, args, expected):
    args = [str(EXAMPLES / "resnet18_nats_c.json") if a == "EX" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_console_script_has_no_traceback(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("[]")
    r = subprocess.run([sys.executable, "-m", "natsdeploy.cli", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0


def test_check_exits_1_when_counts_differ(monkeypatch, capsys):
    import natsdeploy.verify.check as check_mod
    from natsdeploy.verify.count import Counts

    real = check_mod.check_arch

    def skewed(arch, shape):
        r = real(arch, shape)
        return check_mod.CheckResult(r.arch, r.input_shape, Counts(r.transformed.params, r.transformed.macs + 1),
                                     r.baseline)

    monkeypatch.setattr(check_mod, "check_arch", skewed)
    assert main(["check", str(EXAMPLES / "resnet18_nats_c.json"), "--input-shape", "1x3x64x64"]) == 1
    assert "DIFFERENT" in capsys.readouterr().out
