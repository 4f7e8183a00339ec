"""RF-Next structure files (mmcv RFSearchHook) <-> arch files.

The test files copy the shape of mmdetection's configs/rfnext/search_log/*/local_search_config_stepN.json
(`{"search": {...}, "structure": {"module.backbone....": [dh, dw], "module.neck...": ...}}`, 4-space indent);
those logs are all Res2Net, HRNet, ConvNeXt or PVT, so these are written for ResNets. The numeric tests apply a
structure the way mmcv's `RFSearchHook.set_model` does (re-typed below from mmcv/cnn/rfsearch/search.py) to a
torchvision ResNet and compare with the independent reference of tests/helpers.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from natsdeploy import ArchError, load_arch
from natsdeploy.arch import Arch, Branch, ConvTransform
from natsdeploy.cli import main
from natsdeploy.convert import baseline_dilations, from_rf_next, load_rf_next, to_rf_next
from natsdeploy.convert.rfnext import MODE_ASSUMPTION, SKIP_LAYER
from natsdeploy.specs import BACKBONES
from tests.helpers import assert_exit_2, assert_features_close, model_features, plain_model, reference_features
from tests.helpers import seeded_state_dict

# layer3/layer4 conv2 of resnet50, ints and [dh, dw] as mmcv 1.x / 2.x write them; [3, 1] and [1, 5] non-square
R50_DILATIONS = {"layer3.0.conv2": 1, "layer3.1.conv2": 2, "layer3.2.conv2": [2, 2], "layer3.3.conv2": [3, 1],
                 "layer3.4.conv2": 1, "layer3.5.conv2": [1, 1], "layer4.0.conv2": 3, "layer4.1.conv2": [1, 5],
                 "layer4.2.conv2": 8}
NECK_HEADS = {**{f"module.neck.fpn_convs.{i}.conv": [1 + i % 2, 1 + i % 2] for i in range(4)},
              "module.rpn_head.rpn_conv": [3, 3],
              **{f"module.roi_head.mask_head.convs.{i}.conv": [1, 1] for i in range(4)}}


def resnet_log(dilations: dict, *, extra: dict | None = None, skip_layer=("stem", "conv1", "layer1", "layer2")) -> dict:
    """A search log shaped like mmdetection's (search block of configs/rfnext's Res2Net log, mmcv 2.x keys)."""
    search = {"step": 11, "max_step": 12, "search_interval": 1, "exp_rate": 0.5, "init_alphas": 0.01, "mmin": 1,
              "mmax": 24, "num_branches": 2, "skip_layer": list(skip_layer)}
    structure = {f"module.backbone.{k}": v for k, v in dilations.items()}
    structure.update(NECK_HEADS if extra is None else extra)
    return {"search": search, "structure": structure}


def write(tmp_path, data, name="local_search_config_step11.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data, indent=4))
    return p


# -- mmcv's set_model, re-typed (open-mmlab/mmcv a8073c7, mmcv/cnn/rfsearch/search.py l.185-239, utils.py l.64-67) --
def mmcv_set_model(model: nn.Module, structure: dict, skip_layer=(), prefix: str = "") -> None:
    """Set each odd-kernel (> 1) Conv2d's dilation and padding from structure[full name], as RFSearchHook does."""
    for name, module in model.named_children():
        fullname = "module." + name if prefix == "" else prefix + "." + name
        if any(layer in fullname for layer in skip_layer):
            continue
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size
            if 1 < k[0] and k[0] % 2 != 0 or 1 < k[1] and k[1] % 2 != 0:
                s = structure[fullname]
                s = [s, s] if isinstance(s, int) else s
                module.dilation = (s[0], s[1])
                module.padding = tuple(((module.stride[i] - 1) + s[i] * (k[i] - 1)) // 2 for i in range(2))
        else:
            mmcv_set_model(module, structure, skip_layer, fullname)


def mmcv_backbone(backbone: str, structure: dict, sd: dict) -> nn.Module:
    """A torchvision ResNet with `sd`, as `module.backbone` of a detector, set up by mmcv's set_model."""
    model = plain_model(backbone)
    model.load_state_dict(sd)
    mmcv_set_model(nn.ModuleDict({"backbone": model}), structure, skip_layer=SKIP_LAYER)
    return model.eval()


# -- import ---------------------------------------------------------------------------------------------------
def test_import_leaves_out_neck_and_heads_and_keeps_unlisted_convs_at_1():
    got = from_rf_next(resnet_log(R50_DILATIONS), "resnet50", source="log.json")
    arch = got.arch
    assert {k: ct.branches for k, ct in arch.convs.items()} == {
        "layer3.1.conv2": (Branch((2, 2), 256),), "layer3.2.conv2": (Branch((2, 2), 256),),
        "layer3.3.conv2": (Branch((3, 1), 256),), "layer4.0.conv2": (Branch((3, 3), 512),),
        "layer4.1.conv2": (Branch((1, 5), 512),), "layer4.2.conv2": (Branch((8, 8), 512),)}
    assert all(ct.permutation is None for ct in arch.convs.values())
    assert dict(got.outside) == {"neck": 4, "rpn_head": 1, "roi_head": 4}
    assert got.missing == tuple(n for n in BACKBONES["resnet50"].convs if n.startswith(("layer1", "layer2")))
    assert arch.provenance == {"imported_from": "rf-next", "mode": "fixed_single_branch", "source": "log.json"}


def test_cli_import_prints_assumption_left_out_and_defaults(tmp_path, capsys):
    src = write(tmp_path, resnet_log(R50_DILATIONS, extra={**NECK_HEADS, "module.backbone.conv1": [1, 1]}))
    out = tmp_path / "arch.json"
    assert main(["convert", "--from", "rf-next", str(src), "--backbone", "resnet50", "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == MODE_ASSUMPTION and "fixed_multi_branch" in lines[0]
    assert lines[1].startswith("rf-next: left out 9 entries outside the backbone (neck: 4, rpn_head: 1, roi_head: 4) "
                               "and 1 stem entry at dilation 1 (module.backbone.conv1)")
    assert lines[2].startswith("rf-next: 7 of resnet50's 16 3x3 convs have no entry (layer1.0.conv2, layer1.1.conv2, "
                               "layer1.2.conv2, ...): kept at dilation 1")
    assert lines[3] == f"wrote {out} (resnet50, 6 convs)" and len(lines) == 4
    assert load_arch(out).convs["layer3.3.conv2"].branches == (Branch((3, 1), 256),)


def test_value_is_dh_dw_as_mmcv_sets_it():
    """[3, 1] is dilation 3 on the height axis: the imported arch computes what mmcv's set_model makes of the file."""
    dil = {"layer2.0.conv1": [3, 1], "layer2.0.conv2": [1, 2], "layer3.1.conv1": 2, "layer4.0.conv2": [2, 3]}
    log = resnet_log(dil, extra={})
    arch = from_rf_next(log, "resnet18").arch
    assert arch.convs["layer2.0.conv1"].branches[0].dilation == (3, 1)
    full = {**log["structure"], **{f"module.backbone.{n}": 1 for n in BACKBONES["resnet18"].convs
                                   if n not in dil}, "module.backbone.conv1": 1}
    sd = seeded_state_dict("resnet18")
    x = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model_features(mmcv_backbone("resnet18", full, sd), x)
    assert_features_close(got, reference_features(sd, arch, x))
    swapped = Arch(backbone="resnet18", convs={"layer2.0.conv1": ConvTransform((Branch((1, 3), 128),))})
    assert not torch.allclose(reference_features(sd, swapped, x)["c3"], got["c3"], rtol=1e-3, atol=1e-3)


OUT_OF_SPACE = [  # (entry, value, text the one line names)
    ("module.backbone.layer3.0.convs.1", 2, "Res2Net"),
    ("module.backbone.layer3.0.conv1", 1, "no 3x3 conv"),  # a bottleneck's 1x1: RF-Next never writes one
    ("module.backbone.layer3.0.downsample.0", 1, "no 3x3 conv"),
    ("module.backbone.conv1", [2, 2], "7x7 stem"),
    ("module.backbone.stem.0", 1, "deep-stem"),
    ("module.backbone.layer3.6.conv2", 2, "is --backbone right?"),  # resnet101's layer3 is deeper
]


@pytest.mark.parametrize("entry, value, text", OUT_OF_SPACE, ids=[e for e, _, _ in OUT_OF_SPACE])
def test_out_of_space_entry_exits_2_naming_it(tmp_path, capsys, entry, value, text):
    src = write(tmp_path, resnet_log(R50_DILATIONS, extra={**NECK_HEADS, entry: value}))
    out = tmp_path / "arch.json"
    err = assert_exit_2(["convert", "--from", "rf-next", src, "--backbone", "resnet50", "-o", out], capsys,
                        contains=[f'structure["{entry}"]', text], absent=[out])
    assert "layer1.0.conv2 ... layer4.2.conv2, 16 in all" in err


@pytest.mark.parametrize("data, text", [
    ({"structure": {"module.backbone.layer3.1.conv2": [0, 1]}},
     'structure["module.backbone.layer3.1.conv2"]: got [0, 1]'),
    ({"structure": {"module.backbone.layer3.1.conv2": "2"}}, "positive int or [dh, dw]"),
    ({"structure": {"module.neck.fpn_convs.0.conv": [1, 2, 3]}}, 'structure["module.neck.fpn_convs.0.conv"]'),
    ({"structure": {"module.backbone.layer3.1.conv2": True}}, "got True"),
    ({"structure": {"module.backbone.layer3.1.conv2": 2, "backbone.layer3.1.conv2": 2}}, "a second entry"),
    ({"structure": {"module.neck.fpn_convs.0.conv": 2}}, "no backbone entries (1 outside it)"),
    ({"search": {}}, 'a "structure" object'),
    ([{"(0, 0)": 64}], "use --from ic-conv"),
])
def test_bad_structure_files(tmp_path, capsys, data, text):
    src = write(tmp_path, data)
    assert_exit_2(["convert", "--from", "rf-next", src, "--backbone", "resnet50", "-o", tmp_path / "a.json"], capsys,
                  contains=text, absent=[tmp_path / "a.json"])


def test_unreadable_files(tmp_path):
    with pytest.raises(ArchError, match="expected an existing file"):
        load_rf_next(tmp_path / "missing.json", "resnet50")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ArchError, match="invalid JSON"):
        load_rf_next(tmp_path / "bad.json", "resnet50")
    with pytest.raises(ArchError, match="--backbone"):
        from_rf_next({"structure": {}}, "resnet9")


# -- export ----------------------------------------------------------------------------------------------------
def _single_dilation_arch(backbone: str) -> Arch:
    spec = BACKBONES[backbone]
    pick = {n: d for n, d in zip(list(spec.convs)[3::2], [(2, 2), (3, 1), (1, 5), (4, 4), (2, 3), (6, 6), (1, 2)])}
    return Arch(backbone=backbone, convs={n: ConvTransform((Branch(d, spec.convs[n].out_channels),))
                                          for n, d in pick.items()})


def test_export_covers_every_conv_mmcv_looks_up_with_the_documented_skip_layer():
    arch = _single_dilation_arch("resnet50")
    data = to_rf_next(arch).data
    assert list(data) == ["search", "structure"] and data["search"]["skip_layer"] == ["neck", "head"]
    structure = data["structure"]
    with torch.device("meta"):
        detector = nn.ModuleDict({"backbone": plain_model("resnet50"),
                                  "neck": nn.ModuleDict({"fpn_convs": nn.ModuleList([nn.Conv2d(8, 8, 3)])}),
                                  "rpn_head": nn.ModuleDict({"rpn_conv": nn.Conv2d(8, 8, 3)})})
    looked_up = [n for n, m in detector.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1
                 and n.startswith("backbone.")]
    assert sorted(structure) == sorted("module." + n for n in looked_up)  # the stem and every 3x3, no 1x1
    mmcv_set_model(detector, structure, skip_layer=SKIP_LAYER)  # no KeyError
    convs = dict(detector["backbone"].named_modules())
    assert {n: convs[n].dilation for n in arch.convs} == {n: ct.branches[0].dilation for n, ct in arch.convs.items()}
    assert convs["layer1.0.conv2"].dilation == (1, 1) and convs["conv1"].padding == (3, 3)
    with pytest.raises(KeyError, match="module.neck.fpn_convs.0"):
        mmcv_set_model(detector, structure)  # without skip_layer mmcv looks up the neck too


def test_export_computes_the_arch_in_mmcv():
    arch = _single_dilation_arch("resnet18")
    sd = seeded_state_dict("resnet18")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model_features(mmcv_backbone("resnet18", to_rf_next(arch).data["structure"], sd), x)
    assert_features_close(got, reference_features(sd, arch, x))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_round_trip_arch_rf_next_arch(tmp_path, capsys, backbone):
    arch = _single_dilation_arch(backbone)
    src = arch.save(tmp_path / "arch.json")
    assert main(["convert", "--to", "rf-next", str(src), "-o", str(tmp_path / "rf.json")]) == 0
    out = capsys.readouterr().out
    assert "skip_layer=['neck', 'head']" in out and "mode='fixed_single_branch'" in out
    text = (tmp_path / "rf.json").read_text()
    assert text.startswith('{\n    "search": {') and json.loads(text) == to_rf_next(arch).data
    assert main(["convert", "--from", "rf-next", str(tmp_path / "rf.json"), "--backbone", backbone,
                 "-o", str(tmp_path / "back.json")]) == 0
    back = load_arch(tmp_path / "back.json")
    assert dict(back.convs) == dict(arch.convs)
    assert "left out 1 stem entry at dilation 1" in capsys.readouterr().out  # and nothing else outside


def test_round_trip_drops_a_single_dilation_permutation_losslessly():
    info = BACKBONES["resnet18"].convs["layer3.0.conv1"]
    perm = tuple(reversed(range(info.out_channels)))
    arch = Arch(backbone="resnet18", convs={
        "layer3.0.conv1": ConvTransform((Branch((2, 1), 100), Branch((2, 1), 156)), perm)})
    back = from_rf_next(to_rf_next(arch).data, "resnet18").arch
    assert back.convs["layer3.0.conv1"] == ConvTransform((Branch((2, 1), 256),))
    assert baseline_dilations(back.convs["layer3.0.conv1"]) == baseline_dilations(arch.convs["layer3.0.conv1"])
    sd = seeded_state_dict("resnet18")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert_features_close(reference_features(sd, back, x), reference_features(sd, arch, x))


def test_multi_dilation_conv_exits_2_naming_it(tmp_path, capsys):
    arch = Arch(backbone="resnet50", convs={
        "layer3.2.conv2": ConvTransform((Branch((1, 1), 128), Branch((2, 2), 128))),
        "layer4.0.conv2": ConvTransform((Branch((1, 1), 256), Branch((3, 1), 256)))})
    src = arch.save(tmp_path / "arch.json")
    out = tmp_path / "rf.json"
    assert_exit_2(["convert", "--to", "rf-next", src, "-o", out], capsys,
                  contains=['convs["layer3.2.conv2"]: got 2 dilations [[1, 1], [2, 2]] (and 1 more convs)',
                            "one dilation per conv", "--to ic-conv"], absent=[out])
