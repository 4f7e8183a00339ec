"""IC-Conv patterns <-> arch files (ARCH_FORMAT.md, "Imported formats"), checked against IC-Conv's ICConv2d re-typed."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from natsdeploy import ArchError, load_arch
from natsdeploy.arch import Arch, Branch, ConvTransform
from natsdeploy.cli import main
from natsdeploy.convert import from_ic_conv, load_ic_conv, to_ic_conv
from natsdeploy.specs import BACKBONES
from tests.conftest import ICCONV, needs_icconv
from tests.helpers import assert_exit_2, assert_features_close, model_features, plain_model, random_arch
from tests.helpers import reference_features, seeded_state_dict


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


# -- export: arch -> IC-Conv pattern ----------------------------------------------------------------------------
class ICConv2d(torch.nn.Module):
    """IC-Conv's module re-typed (yifan123/IC-Conv model/ic_conv2d.py l.6-29): key "(a, b)" is dilation
    [a + 1, b + 1] with padding (k + 2 (d - 1)) // 2 per axis, zero counts skipped, outputs concatenated in key
    order. Its filters are the baseline conv's, in order (IC-Conv has no channel permutation)."""

    def __init__(self, pattern: dict, conv: torch.nn.Conv2d):
        super().__init__()
        self.conv_list = torch.nn.ModuleList()
        o = 0
        for key, channel in pattern.items():
            a, b = (int(v) + 1 for v in re.findall(r"\d+\.?\d*", key))
            if channel > 0:
                c = torch.nn.Conv2d(conv.in_channels, channel, 3, stride=conv.stride, bias=False, dilation=(a, b),
                                    padding=((3 + 2 * (a - 1)) // 2, (3 + 2 * (b - 1)) // 2))
                c.weight.data = conv.weight.data[o:o + channel].clone()
                o += channel
                self.conv_list.append(c)

    def forward(self, x):
        return torch.cat([conv(x) for conv in self.conv_list], dim=1)


def ic_resnet(backbone: str, patterns: list, sd: dict) -> torch.nn.Module:
    """A torchvision ResNet with `sd` whose 3x3 convs are ICConv2d from `patterns` (block order, as ic_resnet.py)."""
    model = plain_model(backbone)
    model.load_state_dict(sd)
    for name, pattern in zip(BACKBONES[backbone].convs, patterns, strict=True):
        parent, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), attr, ICConv2d(pattern, model.get_submodule(name)))
    return model.eval()


def _unpermuted(arch: Arch) -> Arch:
    """The arch with every conv listed, no permutation, and neighbouring equal dilations merged."""
    convs = {}
    for name, info in arch.spec.convs.items():
        ct = arch.convs.get(name, ConvTransform((Branch((1, 1), info.out_channels),)))
        merged: list[Branch] = []
        for b in ct.branches:
            if merged and merged[-1].dilation == b.dilation:
                merged[-1] = Branch(b.dilation, merged[-1].channels + b.channels)
            else:
                merged.append(b)
        convs[name] = ConvTransform(tuple(merged))
    return Arch(backbone=arch.backbone, convs=convs)


@pytest.mark.parametrize("backbone, seed", [("resnet18", 0), ("resnet34", 1), ("resnet50", 2), ("resnet101", 3)])
def test_round_trip_arch_ic_conv_arch_is_identity(backbone, seed):
    arch = _unpermuted(random_arch(backbone, random.Random(seed), p_conv=0.7, max_dilation=4))
    back = from_ic_conv(json.loads(to_ic_conv(arch).dumps()), backbone)
    assert dict(back.convs) == dict(arch.convs)


@needs_icconv
@pytest.mark.parametrize("name, backbone", [("detection_ic_resnet50_k9.json", "resnet50"),
                                            ("detection_ic_resnet101_k9.json", "resnet101")])
def test_published_pattern_exports_as_published_without_zero_counts(name, backbone):
    raw = json.loads((ICCONV / name).read_text())
    out = to_ic_conv(load_ic_conv(ICCONV / name, backbone))
    assert out.dropped == ()
    assert [list(p.items()) for p in out.patterns] == [[(k, v) for k, v in p.items() if v] for p in raw]


def test_contiguous_permutation_exports_exactly_and_ic_conv_computes_the_arch():
    """A permutation that moves whole dilation blocks is written in baseline order; IC-Conv's module then computes
    the arch on the same (unpermuted) weights."""
    perm = tuple(range(64, 128)) + tuple(range(64))
    arch = Arch(backbone="resnet18", convs={
        "layer2.0.conv1": ConvTransform((Branch((1, 1), 64), Branch((2, 1), 64)), perm),
        "layer3.1.conv2": ConvTransform((Branch((1, 3), 100), Branch((2, 2), 156))),
        "layer4.0.conv1": ConvTransform((Branch((3, 3), 512),), tuple(reversed(range(512))))})
    out = to_ic_conv(arch)
    names = list(BACKBONES["resnet18"].convs)
    assert out.dropped == ()
    assert out.patterns[names.index("layer2.0.conv1")] == {"(1, 0)": 64, "(0, 0)": 64}
    assert out.patterns[names.index("layer4.0.conv1")] == {"(2, 2)": 512}
    assert out.patterns[names.index("layer1.0.conv1")] == {"(0, 0)": 64}
    sd = seeded_state_dict("resnet18")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model_features(ic_resnet("resnet18", out.patterns, sd), x)
    assert_features_close(got, reference_features(sd, arch, x))


def _scattered_arch() -> Arch:
    info = BACKBONES["resnet50"].convs["layer3.0.conv2"]
    perm = list(range(info.out_channels))
    random.Random(0).shuffle(perm)
    return Arch(backbone="resnet50", convs={
        "layer3.0.conv2": ConvTransform((Branch((1, 1), 128), Branch((2, 2), 64), Branch((1, 3), 64)), tuple(perm)),
        "layer4.1.conv2": ConvTransform((Branch((1, 1), 256), Branch((3, 3), 128), Branch((1, 1), 128))),
        "layer2.1.conv2": ConvTransform((Branch((2, 2), 128),), tuple(reversed(range(128))))})  # lossless


def test_permuted_arch_exits_2_unless_drop_permutation(tmp_path, capsys):
    arch = _scattered_arch()
    src = arch.save(tmp_path / "arch.json")
    out = tmp_path / "ic.json"
    err = assert_exit_2(["convert", "--to", "ic-conv", src, "-o", out], capsys, absent=[out],
                        contains=['convs["layer3.0.conv2"]: got a permutation', "(and 1 more convs)",
                                  "contiguous channel groups", "--drop-permutation",
                                  "the pretrained-weight mapping no longer holds"])
    assert "layer2.1.conv2" not in err
    assert main(["convert", "--to", "ic-conv", str(src), "-o", str(out), "--drop-permutation"]) == 0
    printed = capsys.readouterr().out
    assert "dropped the channel order of 2 convs (layer2.1.conv2" not in printed
    assert "dropped the channel order of 2 convs (layer3.0.conv2, layer4.1.conv2)" in printed
    patterns = json.loads(out.read_text())
    names = list(BACKBONES["resnet50"].convs)
    assert patterns[names.index("layer3.0.conv2")] == {"(0, 0)": 128, "(1, 1)": 64, "(0, 2)": 64}
    assert patterns[names.index("layer4.1.conv2")] == {"(0, 0)": 384, "(2, 2)": 128}
    assert patterns[names.index("layer2.1.conv2")] == {"(1, 1)": 128}
    back = load_ic_conv(out, "resnet50")
    assert back.branch_mix() == arch.branch_mix()  # same channels per dilation in every stage: params, MACs


def test_split_branches_of_one_dilation_are_named_as_such():
    arch = Arch(backbone="resnet18", convs={
        "layer1.1.conv2": ConvTransform((Branch((1, 1), 16), Branch((2, 2), 16), Branch((1, 1), 32)))})
    with pytest.raises(ArchError, match=r'layer1.1.conv2"\]: got branches of one dilation apart'):
        to_ic_conv(arch)
    assert to_ic_conv(arch, drop_permutation=True).dropped == ("layer1.1.conv2",)


def test_grouped_backbone_exits_2(tmp_path, capsys):
    src = Arch(backbone="resnext101_32x4d").save(tmp_path / "arch.json")
    assert_exit_2(["convert", "--to", "ic-conv", src, "-o", tmp_path / "ic.json"], capsys,
                  contains=["backbone: got 'resnext101_32x4d' (conv groups=32)", "ICConv2d"],
                  absent=[tmp_path / "ic.json"])
