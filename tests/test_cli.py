"""The `natsdeploy` command: exit codes and one-line errors."""

from __future__ import annotations

import json
import random

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


# -- alignment: check --target and the align command ------------------------------------------------
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


def test_align_writes_an_aligned_arch_and_reports(tmp_path, capsys):
    from natsdeploy import load_arch

    out = tmp_path / "a32.json"
    assert main(["align", str(EXAMPLES / "resnet50_nats_c.json"), "--multiple", "32", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    arch = load_arch(out)
    assert all(b.channels % 32 == 0 for ct in arch.convs.values() for b in ct.branches)
    assert arch.provenance["align"] == 32
    assert "  layer2.0.conv2  d2:40 d3:32 d(1,3):16 d(3,1):40 -> d2:32 d3:32 d(1,3):32 d(3,1):32  " \
           "(16 of 128 filters changed dilation)" in text
    assert "total: " in text and "retrain or fine-tune" in text and f"wrote {out}" in text
    assert main(["check", str(out), "--input-shape", "1x3x64x64", "--target", "cuda-int8"]) == 0
    assert "every branch is a multiple of 32" in capsys.readouterr().out


@pytest.mark.parametrize("arch_file, n, expected", [
    ("resnet50_nats_c.json", "0", "--multiple: got '0', expected an integer >= 1"),
    ("resnet50_nats_c.json", "-16", "--multiple: got '-16'"),
    ("resnet50_nats_c.json", "1.5", "--multiple: got '1.5'"),
    ("resnet50_nats_c.json", "sixteen", "--multiple: got 'sixteen'"),
    ("resnet50_nats_c.json", "48", "--multiple: got 48, expected a divisor of 128 (out_channels of layer2.0.conv2)"),
    ("RESNEXT", "2", "--multiple: got 2, expected a multiple of 4 (conv-group width of layer1.0.conv2"),
])
def test_align_bad_multiple_exits_2_and_writes_nothing(tmp_path, capsys, arch_file, n, expected):
    if arch_file == "RESNEXT":
        from natsdeploy import Arch, Branch, ConvTransform

        src = Arch(backbone="resnext101_32x4d", convs={"layer1.0.conv2": ConvTransform((
            Branch((1, 1), 64), Branch((2, 2), 64)))}).save(tmp_path / "x.json")
    else:
        src = EXAMPLES / arch_file
    out = tmp_path / "out.json"
    assert main(["align", str(src), "--multiple", n, "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and captured.err.count("\n") == 1 and captured.out == ""
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["x.json"] if arch_file == "RESNEXT" else [])
