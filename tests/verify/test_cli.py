"""`natsdeploy check` (natsdeploy/verify/cli.py over verify/check.py): exit codes, the report, alignment warnings and
their fix, one-line errors."""

from __future__ import annotations

import json
import random
import shlex
import shutil

import pytest

from natsdeploy.cli import main
from tests.conftest import EXAMPLES
from tests.helpers import ALL_PARAMS, assert_exit_2, random_arch


@pytest.mark.parametrize("backbone", ALL_PARAMS)
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
    assert_exit_2(["check", p], capsys, contains=expected)


def test_check_exits_1_when_counts_differ(monkeypatch, capsys):
    import natsdeploy.verify.check as check_mod
    from natsdeploy.verify.count import Counts

    real = check_mod.check_arch

    def skewed(arch, shape, **kw):
        r = real(arch, shape, **kw)
        return check_mod.CheckResult(r.arch, r.input_shape, Counts(r.transformed.params, r.transformed.macs + 1),
                                     r.baseline, r.alignment)

    monkeypatch.setattr(check_mod, "check_arch", skewed)
    assert main(["check", str(EXAMPLES / "resnet18_nats_c.json"), "--input-shape", "1x3x64x64"]) == 1
    assert "DIFFERENT" in capsys.readouterr().out


# -- alignment: check --target ------------------------------------------------------------------------
def test_check_warns_about_unaligned_branches_but_exit_status_stays_0(capsys):
    ex = str(EXAMPLES / "resnet50_nats_c.json")
    assert main(["check", ex, "--input-shape", "1x3x64x64", "--target", "cuda-int8"]) == 0
    out = capsys.readouterr().out
    assert "alignment for cuda-int8" in out and "not a multiple of 32 channels" in out
    assert "  layer2.1.conv2: " in out and "d(1,3) 8 ch" in out
    assert "share of MACs in unaligned branches: " in out
    assert f"suggestion: natsdeploy align {ex} --multiple 32" in out
    assert out.rstrip().endswith("verdict: equal")
    assert main(["check", ex, "--input-shape", "1x3x64x64", "--target", "cuda-fp16"]) == 0
    assert "every branch is a multiple of 8 channels" in capsys.readouterr().out


def test_check_result_dict_carries_alignment():
    from natsdeploy import load_arch
    from natsdeploy.verify.check import check_arch

    r = check_arch(load_arch(EXAMPLES / "resnet50_nats_c.json"), (1, 3, 64, 64), target="cuda-int8")
    d = r.to_dict()["alignment"]
    assert d["target"] == "cuda-int8" and d["block"] == 32 and not d["aligned"] and 0 < d["mac_share"] < 1
    assert d["total_macs"] == r.transformed.macs and r.equal


def test_check_bad_target_exits_2(capsys):
    assert_exit_2(["check", EXAMPLES / "resnet18_nats_c.json", "--target", "tpu"], capsys,
                  contains="--target: got 'tpu', expected one of")


@pytest.mark.parametrize("target", ["cuda-int8", "ort-cpu"])
def test_every_align_command_check_prints_runs_as_printed(tmp_path, monkeypatch, capsys, target):
    """The fixes `check` prints (the block, and the full-rate width where wider) are whole commands: quoted paths,
    a concrete output file; each runs and writes an arch aligned to its multiple."""
    from natsdeploy import load_arch

    monkeypatch.chdir(tmp_path)
    src = tmp_path / "my arch.json"  # a space: the printed path must be quoted
    shutil.copy(EXAMPLES / "resnet50_nats_c.json", src)
    assert main(["check", str(src), "--input-shape", "1x3x64x64", "--target", target]) == 0
    fixes = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if "natsdeploy align" in line]
    assert fixes and all(f.startswith("natsdeploy align ") for f in fixes)
    for fix in fixes:
        argv = shlex.split(fix)
        multiple, out = int(argv[argv.index("--multiple") + 1]), argv[argv.index("-o") + 1]
        assert argv[2] == str(src) and out == str(tmp_path / f"my arch_a{multiple}.json")
        assert main(argv[1:]) == 0
        assert all(b.channels % multiple == 0 for ct in load_arch(out).convs.values() for b in ct.branches)
