"""ERF maps and radii (natsdeploy.verify.erf) and the `natsdeploy erf` command."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from natsdeploy.arch import Arch, Branch, ConvTransform
from natsdeploy.cli import main
from natsdeploy.specs import BACKBONES
from natsdeploy.verify.erf import erf_maps, erf_of, erf_radius, erf_report, strip_relu
from tests.conftest import EXAMPLES
from tests.helpers import random_arch


# -- a single dilated conv --------------------------------------------------------------------
@pytest.mark.parametrize("dilation", [(1, 1), (2, 2), (3, 3), (1, 3)])
def test_single_dilated_conv_support_is_its_nine_taps(dilation):
    torch.manual_seed(0)
    dh, dw = dilation
    conv = nn.Conv2d(3, 4, 3, padding=dilation, dilation=dilation, bias=False)
    m = erf_of(conv, 33)
    assert m.shape == (33, 33)
    c = 16
    expected = np.zeros_like(m, dtype=bool)
    for oy in (-dh, 0, dh):
        for ox in (-dw, 0, dw):
            expected[c + oy, c + ox] = True
    assert (m[expected] > 0).all()
    assert (m[~expected] == 0).all()
    assert m.sum() == pytest.approx(1.0)
    # the value at each tap is sum_c |sum_k w[k, c, tap]|, normalised
    w = conv.weight.detach().double()
    taps = w.sum(0).abs().sum(0).numpy()
    np.testing.assert_allclose(m[c - dh:c + dh + 1:dh, c - dw:c + dw + 1:dw], taps / taps.sum(), rtol=1e-5)


def test_strip_relu_replaces_every_relu_on_a_copy():
    from torchvision.models import resnet18

    model = resnet18()
    stripped = strip_relu(model)
    assert not any(isinstance(m, nn.ReLU) for m in stripped.modules())
    assert isinstance(model.relu, nn.ReLU) and isinstance(model.layer1[0].relu, nn.ReLU)
    assert any(isinstance(m, nn.MaxPool2d) for m in stripped.modules())


# -- radius ---------------------------------------------------------------------------------------
def test_radius_of_a_single_point_is_zero():
    m = np.zeros((65, 65))
    m[32, 32] = 3.0
    assert erf_radius(m, 0.5) == 0.0 and erf_radius(m, 0.9) == 0.0
    m = np.zeros((64, 64))
    m[32, 32] = 1.0  # even size: the centre is index N // 2
    assert erf_radius(m, 0.9) == 0.0


@pytest.mark.parametrize("share", [0.25, 0.5, 0.9])
@pytest.mark.parametrize("radius", [20.0, 57.5])
def test_radius_of_a_uniform_disc(share, radius):
    n = 161
    yy, xx = np.indices((n, n))
    m = (np.hypot(yy - n // 2, xx - n // 2) <= radius).astype(float)
    assert abs(erf_radius(m, share) - radius * np.sqrt(share)) <= 1.0


def test_radius_rejects_bad_input():
    with pytest.raises(ValueError):
        erf_radius(np.zeros((9, 9)), 0.5)
    with pytest.raises(ValueError):
        erf_radius(np.ones((9, 9)), 0.0)
    with pytest.raises(ValueError):
        erf_radius(np.ones(9), 0.5)


# -- resnet18 -------------------------------------------------------------------------------------
def _dilate_late_stages(backbone: str, d: int) -> Arch:
    spec = BACKBONES[backbone]
    convs = {name: ConvTransform((Branch((d, d), info.out_channels),))
             for name, info in spec.convs.items() if info.stage in ("layer3", "layer4")}
    return Arch(backbone=backbone, convs=convs)


def test_dilated_layer3_layer4_enlarge_resnet18_erf():
    arch = _dilate_late_stages("resnet18", 3)
    base, trans = erf_maps(arch, input_size=256, seed=0)
    assert base.shape == trans.shape == (256, 256)
    assert base.sum() == pytest.approx(1.0) and trans.sum() == pytest.approx(1.0)
    assert erf_radius(trans, 0.9) > erf_radius(base, 0.9)
    rep = erf_report(base, trans)
    r90 = next(r for r in rep["radii"] if r["share"] == 0.9)
    assert r90["ratio_transformed_over_baseline"] > 1.0
    json.dumps(rep)


def test_dilation_one_arch_with_permutation_gives_the_baseline_map():
    arch = random_arch("resnet18", random.Random(3), p_conv=1.0, dilation_one=True)
    assert any(ct.permutation is not None for ct in arch.convs.values())
    base, trans = erf_maps(arch, input_size=128, seed=1)
    torch.testing.assert_close(torch.from_numpy(trans), torch.from_numpy(base), rtol=1e-4,
                               atol=1e-6 * float(base.max()))


def test_same_seed_same_maps_and_global_rng_untouched():
    arch = _dilate_late_stages("resnet18", 2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = erf_maps(arch, input_size=64, seed=7)
    after = torch.rand(1)
    b = erf_maps(arch, input_size=64, seed=7)
    assert torch.equal(before, after)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("size", [64, 65, 66, 67])
def test_strided_conv_map_is_recentred_on_the_unit(size):
    # stride 2: the centre unit (index h // 2) sits at input pixel 2 * (h // 2), which is not
    # size // 2 for every size; the map is zero-padded so the unit lands at index N // 2
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 3, stride=2, padding=1, bias=False)
    m = erf_of(conv, size)
    n = m.shape[0]
    assert m.shape == (n, n) and n >= size
    c = n // 2
    assert (m[c - 1:c + 2, c - 1:c + 2] > 0).all()
    assert m[c - 1:c + 2, c - 1:c + 2].sum() == pytest.approx(1.0)
    assert erf_radius(m, 0.05) <= 1.5


# -- command line ---------------------------------------------------------------------------------
def test_cli_writes_png_and_json(tmp_path, capsys):
    png, js = tmp_path / "out" / "erf.png", tmp_path / "erf.json"
    rc = main(["erf", str(EXAMPLES / "resnet18_nats_c.json"), "--input-size", "128", "--share", "0.5", "0.9",
               "-o", str(png), "--json", str(js)])
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads(js.read_text())
    assert rep["schema"] == "natsdeploy-erf/1" and rep["backbone"] == "resnet18" and rep["input_size"] == 128
    assert [r["share"] for r in rep["radii"]] == [0.5, 0.9]
    assert all(r["baseline_px"] > 0 and r["transformed_px"] > 0 for r in rep["radii"])
    out = capsys.readouterr().out
    assert "90% radius" in out and "wrote" in out
    assert not [p for p in tmp_path.rglob(".*.tmp")]


@pytest.mark.parametrize("extra, expected", [
    (["--share", "1.5"], "--share"),
    (["--share", "0"], "--share"),
    (["--share", "nan"], "--share"),
    (["--share", "abc"], "--share"),
    (["--input-size", "32"], "--input-size"),
    (["--input-size", "x"], "--input-size"),
    (["--json", "DIR"], "--json"),
    (["-o", "DIR"], "-o/--output"),
])
def test_cli_bad_flags_exit_2_one_line(tmp_path, capsys, extra, expected):
    extra = [str(tmp_path) if a == "DIR" else a for a in extra]
    args = ["erf", str(EXAMPLES / "resnet18_nats_c.json"), "-o", str(tmp_path / "e.png"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("natsdeploy: error: ") and err.count("\n") == 1 and expected in err
    assert not (tmp_path / "e.png").exists()


def test_cli_missing_arch_exits_2(tmp_path, capsys):
    assert main(["erf", str(tmp_path / "nope.json"), "-o", str(tmp_path / "e.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "existing file" in err
    assert not (tmp_path / "e.png").exists()
