"""`natsdeploy align` (natsdeploy/align_cli.py): the aligned arch, its report, one-line errors."""

from __future__ import annotations

import pytest

from natsdeploy.cli import main
from tests.conftest import EXAMPLES


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


def test_align_help_says_what_n_may_be():
    from tests.helpers import command_flag_help

    text = command_flag_help(("align",), "--multiple")
    assert "integer >= 1" in text and "divides" in text and "natsdeploy check --target" in text
