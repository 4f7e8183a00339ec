"""Every rule of ARCH_FORMAT.md, pinned: parsing, validation messages, canonical round-trip."""

from __future__ import annotations

import copy
import json
import random

import pytest

from natsdeploy import Arch, ArchError, Branch, ConvTransform, load_arch
from natsdeploy.arch import format_dilation
from natsdeploy.specs import BACKBONES
from tests.helpers import ALL, random_arch

GOOD = {
    "format": "natsdeploy-arch",
    "version": 1,
    "backbone": "resnet50",
    "convs": {
        "layer2.0.conv2": {"branches": [
            {"dilation": [1, 1], "channels": 64}, {"dilation": [2, 2], "channels": 32},
            {"dilation": [1, 3], "channels": 32}]},
        "layer4.2.conv2": {"branches": [{"dilation": 3, "channels": 256}, {"dilation": [5, 1], "channels": 256}],
                           "permutation": list(range(511, -1, -1))},
    },
    "provenance": {"search_space": "NATS-C", "groups": 16},
}


def test_parses_example():
    a = Arch.from_dict(GOOD)
    ct = a.convs["layer2.0.conv2"]
    assert ct.branches == (Branch((1, 1), 64), Branch((2, 2), 32), Branch((1, 3), 32))
    assert ct.permutation is None and ct.offsets() == [0, 64, 96]
    assert a.convs["layer4.2.conv2"].branches[0].dilation == (3, 3)  # int d means [d, d]
    assert a.provenance == {"search_space": "NATS-C", "groups": 16}


def test_arch_is_frozen():
    a = Arch.from_dict(GOOD)
    with pytest.raises(Exception):
        a.backbone = "resnet18"  # type: ignore[misc]
    with pytest.raises(TypeError):
        a.convs["layer1.0.conv2"] = None  # type: ignore[index]


def test_save_load_round_trip_is_byte_identical(tmp_path):
    a = Arch.from_dict(GOOD)
    p1 = a.save(tmp_path / "a.json")
    b = load_arch(p1)
    p2 = b.save(tmp_path / "b.json")
    assert p1.read_bytes() == p2.read_bytes()
    assert b == a and b.to_dict() == a.to_dict()
    assert json.loads(p1.read_text())["convs"]["layer2.0.conv2"]["branches"][0] == {"dilation": [1, 1], "channels": 64}


@pytest.mark.parametrize("backbone", ALL)
def test_random_archs_round_trip(tmp_path, backbone):
    for seed in range(3):
        a = random_arch(backbone, random.Random(seed))
        p = a.save(tmp_path / f"{seed}.json")
        assert load_arch(p) == a
        assert load_arch(p).dumps() == p.read_text()


def test_conv_order_is_canonical():
    d = copy.deepcopy(GOOD)
    d["convs"] = dict(reversed(list(d["convs"].items())))
    assert list(Arch.from_dict(d).convs) == ["layer2.0.conv2", "layer4.2.conv2"]


def _bad(mutate) -> str:
    d = copy.deepcopy(GOOD)
    mutate(d)
    with pytest.raises(ArchError) as e:
        Arch.from_dict(d)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _set(path, value):
    def f(d):
        obj = d
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return f


C2 = ["convs", "layer2.0.conv2"]
B = C2 + ["branches"]


@pytest.mark.parametrize("mutate, field, expected", [
    (_set(["format"], "nats"), "format", '"natsdeploy-arch"'),
    (_set(["version"], 2), "version", "1"),
    (_set(["version"], True), "version", "1"),
    (_set(["backbone"], "vgg16"), "backbone", "resnet50"),
    (_set(["convs", "layer2.0.conv9"], {"branches": [{"dilation": 1, "channels": 1}]}), 'convs["layer2.0.conv9"]', "3x3 conv"),
    (_set(["convs", "layer2.0.conv1"], {"branches": [{"dilation": 1, "channels": 128}]}), 'convs["layer2.0.conv1"]', "3x3 conv"),
    (_set(["convs", "conv1"], {"branches": [{"dilation": 1, "channels": 64}]}), 'convs["conv1"]', "3x3 conv"),
    (_set(B + [1, "dilation"], 0), 'convs["layer2.0.conv2"].branches[1].dilation', "positive"),
    (_set(B + [1, "dilation"], [1, 2, 3]), "branches[1].dilation", "pair"),
    (_set(B + [1, "dilation"], 1.5), "branches[1].dilation", "positive int"),
    (_set(B + [1, "dilation"], "2"), "branches[1].dilation", "positive int"),
    (_set(B + [1, "dilation"], [True, 1]), "branches[1].dilation", "positive int"),
    (_set(B + [2, "channels"], 0), 'convs["layer2.0.conv2"].branches[2].channels', "positive int"),
    (_set(B + [2, "channels"], 31.0), "branches[2].channels", "positive int"),
    (_set(B + [2, "channels"], 31), "channels", "summing to 128"),
    (_set(B, []), "branches", "non-empty"),
    (_set(B + [0, "stride"], 2), "branches[0].stride", "'dilation', 'channels'"),
    (_set(["extra"], 1), "extra", "'format'"),
    (_set(C2 + ["perm"], [0]), 'convs["layer2.0.conv2"].perm', "'branches', 'permutation'"),
    (_set(C2 + ["permutation"], list(range(127))), "permutation", "range(128)"),
    (_set(C2 + ["permutation"], [0] * 128), "permutation", "distinct"),
    (_set(C2 + ["permutation"], list(range(1, 129))), "permutation", "distinct"),
    (_set(C2 + ["permutation"], "identity"), "permutation", "list"),
    (_set(["convs"], []), "convs", "object"),
    (lambda d: d["convs"]["layer2.0.conv2"].pop("branches"), "branches", "non-empty"),
])
def test_bad_fields(mutate, field, expected):
    msg = _bad(mutate)
    assert field in msg and expected in msg, msg
    assert "got" in msg


def test_message_names_value_received():
    msg = _bad(_set(B + [2, "channels"], -7))
    assert msg.startswith('convs["layer2.0.conv2"].branches[2].channels: got -7')


def test_basic_block_second_conv_cannot_be_permuted():
    d = {"format": "natsdeploy-arch", "version": 1, "backbone": "resnet18",
         "convs": {"layer3.0.conv2": {"branches": [{"dilation": 2, "channels": 256}],
                                      "permutation": list(range(255, -1, -1))}}}
    with pytest.raises(ArchError, match="residual add"):
        Arch.from_dict(d)
    d["convs"] = {"layer3.0.conv1": d["convs"]["layer3.0.conv2"]}
    assert Arch.from_dict(d).convs["layer3.0.conv1"].permutation[0] == 255


RX = "layer3.0.conv2"  # resnext101_32x4d: 512 channels, 32 groups of 16


def _rx(branches, perm=None):
    d = {"format": "natsdeploy-arch", "version": 1, "backbone": "resnext101_32x4d",
         "convs": {RX: {"branches": branches}}}
    if perm is not None:
        d["convs"][RX]["permutation"] = perm
    return d


def test_resnext_branches_must_align_to_groups():
    assert BACKBONES["resnext101_32x4d"].convs[RX].channels_per_group == 16
    Arch.from_dict(_rx([{"dilation": 1, "channels": 496}, {"dilation": 2, "channels": 16}]))
    with pytest.raises(ArchError, match=r"branches\[0\].channels: got 500, expected a multiple of 16"):
        Arch.from_dict(_rx([{"dilation": 1, "channels": 500}, {"dilation": 2, "channels": 12}]))


def test_resnext_permutation_moves_whole_groups():
    groups = list(range(32))
    random.Random(0).shuffle(groups)
    ok = [c for g in groups for c in range(16 * g, 16 * g + 16)]
    Arch.from_dict(_rx([{"dilation": 1, "channels": 512}], ok))
    split = list(ok)
    split[0], split[1] = split[1], split[0]  # reorders inside a group
    with pytest.raises(ArchError, match=r"permutation\[0:16\].*whole conv group"):
        Arch.from_dict(_rx([{"dilation": 1, "channels": 512}], split))
    shifted = list(range(8, 512)) + list(range(8))  # blocks straddle two groups
    with pytest.raises(ArchError, match="whole conv group"):
        Arch.from_dict(_rx([{"dilation": 1, "channels": 512}], shifted))


@pytest.mark.parametrize("content, expected", [
    ("", "empty"), ("   \n", "empty"), ("{not json", "invalid JSON"), ("[1, 2]", "JSON object"),
    ("null", "JSON object"),
])
def test_bad_files(tmp_path, content, expected):
    p = tmp_path / "a.json"
    p.write_text(content)
    with pytest.raises(ArchError, match=expected):
        load_arch(p)


def test_missing_file(tmp_path):
    with pytest.raises(ArchError, match="existing file"):
        load_arch(tmp_path / "nope.json")


def test_arch_built_in_code_is_validated():
    with pytest.raises(ArchError, match="summing to 128"):
        Arch(backbone="resnet50", convs={"layer2.0.conv2": ConvTransform((Branch((1, 1), 100),))})
    with pytest.raises(ArchError, match="backbone"):
        Arch(backbone="resnet9000")


def test_error_is_value_error():
    assert issubclass(ArchError, ValueError)


def test_branch_mix_counts_unlisted_convs_as_d1():
    a = Arch.from_dict(GOOD)
    mix = a.branch_mix()
    assert mix["layer2"] == {(1, 1): 64 + 3 * 128, (2, 2): 32, (1, 3): 32}
    assert sum(mix["layer4"].values()) == 3 * 512


def test_an_ic_conv_pattern_points_to_the_convert_command_that_imports_it(tmp_path, monkeypatch, capsys):
    """A pattern list given where an arch is expected: the error names `natsdeploy convert` with the backbone
    the pattern fits, and that command runs as printed (from the working folder)."""
    import shlex

    from natsdeploy.cli import main
    from tests.conftest import EXAMPLES

    arch = load_arch(EXAMPLES / "resnet18_nats_c.json")
    pattern = []
    for name, info in BACKBONES["resnet18"].convs.items():  # IC-Conv: one object per 3x3 conv, key (a-1, b-1)
        ct = arch.convs.get(name)
        branches = ct.branches if ct else (Branch((1, 1), info.out_channels),)
        pattern.append({f"({b.dilation[0] - 1}, {b.dilation[1] - 1})": b.channels for b in branches})
    src = tmp_path / "ic pattern.json"
    src.write_text(json.dumps(pattern))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArchError) as e:
        load_arch(src)
    command = str(e.value).split("import it with: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:7] == ["natsdeploy", "convert", "--from", "ic-conv", str(src), "--backbone", "resnet18"]
    assert main(argv[1:]) == 0 and f"wrote {argv[-1]}" in capsys.readouterr().out
    imported = load_arch(tmp_path / argv[-1])

    def branches(a: Arch) -> dict:
        return {n: a.convs[n].branches if n in a.convs else (Branch((1, 1), info.out_channels),)
                for n, info in BACKBONES["resnet18"].convs.items()}

    assert imported.backbone == "resnet18" and branches(imported) == branches(arch)


def test_a_list_that_fits_no_backbone_says_so(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps([{"(0, 0)": 64}, {"(1, 1)": 64}]))
    with pytest.raises(ArchError, match=r"its 2 entries fit no backbone's 3x3 convs \(resnet18 16, .*would refuse"):
        load_arch(p)


def test_format_dilation_is_the_one_the_reports_share():
    from natsdeploy import align
    from natsdeploy.verify import check

    assert [format_dilation(d) for d in ((1, 1), (3, 3), (1, 2), (5, 1))] == ["d1", "d3", "d(1,2)", "d(5,1)"]
    assert align.format_dilation is format_dilation and check.format_dilation is format_dilation

