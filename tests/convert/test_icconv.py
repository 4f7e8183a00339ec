"""IC-Conv import (ARCH_FORMAT.md, "Imported formats")."""

from __future__ import annotations

import json

import pytest

from natsdeploy import ArchError, load_arch
from natsdeploy.convert import from_ic_conv, load_ic_conv
from natsdeploy.specs import BACKBONES
from tests.conftest import ICCONV, needs_icconv


def _uniform(backbone, entry_for):
    return [entry_for(info) for info in BACKBONES[backbone].convs.values()]


def test_keys_map_to_dilation_plus_one_in_file_order():
    pat = _uniform("resnet18", lambda i: {"(0, 0)": i.out_channels - 3, "(2, 0)": 0, "(0, 1)": 2, "(3,3)": 1})
    arch = from_ic_conv(pat, "resnet18")
    ct = arch.convs["layer2.0.conv1"]
    assert [(b.dilation, b.channels) for b in ct.branches] == [((1, 1), 125), ((1, 2), 2), ((4, 4), 1)]
    assert ct.permutation is None
    assert len(arch.convs) == 16  # both convs of every basic block


@needs_icconv
@pytest.mark.parametrize("name, backbone, n", [("detection_ic_resnet50_k9.json", "resnet50", 16),
                                               ("detection_ic_resnet101_k9.json", "resnet101", 33),
                                               ("segmentation_ic_resnet50_k9.json", "resnet50", 16)])
def test_published_patterns(name, backbone, n):
    raw = json.loads((ICCONV / name).read_text())
    arch = load_ic_conv(ICCONV / name, backbone)
    assert len(arch.convs) == n
    first = arch.convs["layer1.0.conv2"]
    assert [b.channels for b in first.branches] == [v for v in raw[0].values() if v]
    assert max(len(ct.branches) for ct in arch.convs.values()) <= 16


@pytest.mark.parametrize("pat, msg", [
    ({"a": 1}, "JSON list"),
    ([{"(0, 0)": 64}], "expected 16"),
])
def test_bad_patterns(pat, msg):
    with pytest.raises(ArchError, match=msg):
        from_ic_conv(pat, "resnet50")


def test_bad_key_and_count():
    pat = _uniform("resnet50", lambda i: {"(0, 0)": i.out_channels})
    pat[3] = {"d1": 64}
    with pytest.raises(ArchError, match=r"pattern\[3\] key"):
        from_ic_conv(pat, "resnet50")
    pat[3] = {"(0, 0)": 60}
    with pytest.raises(ArchError, match=r"summing to 60, expected 128"):
        from_ic_conv(pat, "resnet50")


def test_cli_convert(tmp_path):
    from natsdeploy.cli import main

    pat = _uniform("resnet34", lambda i: {"(0, 0)": i.out_channels // 2, "(1, 1)": i.out_channels // 2})
    (tmp_path / "p.json").write_text(json.dumps(pat))
    out = tmp_path / "arch.json"
    assert main(["convert", "--from", "ic-conv", str(tmp_path / "p.json"), "--backbone", "resnet34", "-o", str(out)]) == 0
    assert load_arch(out).convs["layer4.2.conv2"].branches[1].dilation == (2, 2)
