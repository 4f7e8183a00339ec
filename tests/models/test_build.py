"""build_backbone: ARCH_FORMAT semantics end to end, weight transfer and its inverse."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natsdeploy import Arch, build_backbone, build_baseline, transformed_state_dict_to_baseline
from natsdeploy.convert import load_ic_conv
from natsdeploy.models.build import WeightsError
from natsdeploy.models.mixed_conv import MixedDilationConv
from tests.helpers import (ALL, ALL_PARAMS, SMALL, assert_features_close, model_features, random_arch,
                           reference_features, seeded_state_dict)

BIG = [b for b in ALL if b not in SMALL]


@pytest.mark.parametrize("backbone", ALL_PARAMS)
def test_dilation_one_with_random_permutation_reproduces_baseline(backbone):
    sd = seeded_state_dict(backbone)
    arch = random_arch(backbone, random.Random(3), p_conv=1.0, dilation_one=True)
    assert any(ct.permutation is not None for ct in arch.convs.values())
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model_features(build_backbone(arch, sd), x)
        base = model_features(build_baseline(backbone, sd), x)
    assert_features_close(got, base)


@pytest.mark.parametrize("backbone", ALL_PARAMS)
def test_transformed_matches_independent_reference(backbone):
    sd = seeded_state_dict(backbone, seed=5)
    arch = random_arch(backbone, random.Random(7), p_conv=0.8)
    x = torch.randn(1, 3, 67, 93, generator=torch.Generator().manual_seed(1))  # odd sizes, stride-2 blocks
    with torch.no_grad():
        got = model_features(build_backbone(arch, sd), x)
        ref = reference_features(sd, arch, x)
        base = model_features(build_baseline(backbone, sd), x)
    assert_features_close(got, ref)
    assert not torch.allclose(got["c5"], base["c5"], rtol=1e-3, atol=1e-3)  # the transformation did something


def test_resnet50_icconv_matches_reference(icconv_dir):
    arch = load_ic_conv(icconv_dir / "detection_ic_resnet50_k9.json", "resnet50")
    sd = seeded_state_dict("resnet50", seed=9)
    x = torch.randn(2, 3, 97, 65, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model_features(build_backbone(arch, sd), x)
        ref = reference_features(sd, arch, x)
    assert_features_close(got, ref)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), backbone=st.sampled_from(SMALL),
       h=st.integers(32, 70), w=st.integers(32, 70))
def test_random_archs_match_reference(seed, backbone, h, w):
    rng = random.Random(seed)
    arch = random_arch(backbone, rng, max_dilation=4)
    sd = seeded_state_dict(backbone, seed=seed % 1000)
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert_features_close(model_features(build_backbone(arch, sd), x), reference_features(sd, arch, x))


@pytest.mark.parametrize("backbone", ALL_PARAMS)
def test_weights_round_trip(backbone):
    sd = seeded_state_dict(backbone)
    arch = random_arch(backbone, random.Random(11), p_conv=1.0)
    model = build_backbone(arch, sd)
    assert isinstance(model.get_submodule(next(iter(arch.convs))), MixedDilationConv)
    back = transformed_state_dict_to_baseline(model.state_dict(), arch)
    assert set(back) == set(sd)
    for k in sd:
        torch.testing.assert_close(back[k], sd[k], rtol=0, atol=0, msg=k)


def test_torchvision_attribute_names_and_forward():
    arch = Arch.from_dict({"format": "natsdeploy-arch", "version": 1, "backbone": "resnet18",
                           "convs": {"layer4.1.conv1": {"branches": [{"dilation": 2, "channels": 512}]}}})
    m = build_backbone(arch)
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"):
        assert hasattr(m, name)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_init_without_weights_follows_torch_seed():
    arch = random_arch("resnet18", random.Random(0), dilation_one=True)
    torch.manual_seed(42)
    a = build_backbone(arch)
    torch.manual_seed(42)
    b = build_baseline("resnet18")
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert_features_close(model_features(a, x), model_features(b, x))


def test_given_weights_draw_nothing_from_the_global_rng():
    """Weights passed in fill every value: building draws no init (the caller's RNG stream is untouched),
    and an omitted classifier and BN counters get nn.Linear's init and 0."""
    arch = random_arch("resnet18", random.Random(2))
    sd = seeded_state_dict("resnet18")
    no_fc = {k: v for k, v in sd.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a, b = build_backbone(arch, no_fc).state_dict(), build_baseline("resnet18", sd).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(b["fc.weight"], sd["fc.weight"]) and a["layer1.0.bn1.num_batches_tracked"].item() == 0
    bound = 1 / 512 ** 0.5  # nn.Linear(512, 1000): U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    assert a["fc.weight"].shape == (1000, 512) and 0.9 * bound < a["fc.weight"].abs().max() <= bound
    assert 0.9 * bound < a["fc.bias"].abs().max() <= bound
    torch.manual_seed(5)
    build_backbone(arch)  # without weights: torchvision's init, drawn exactly as torchvision's constructor draws it
    after_init = torch.get_rng_state()
    torch.manual_seed(5)
    build_baseline("resnet18")
    assert torch.equal(torch.get_rng_state(), after_init) and not torch.equal(after_init, before)


def test_weights_from_checkpoint_files(tmp_path):
    sd = seeded_state_dict("resnet18")
    arch = random_arch("resnet18", random.Random(1))
    ref = build_backbone(arch, sd).state_dict()
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ddp.pth")
    no_fc = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    for name in ("plain.pth", "ckpt.pth", "ddp.pth"):
        got = build_backbone(arch, tmp_path / name).state_dict()
        for k in ref:
            assert torch.equal(got[k], ref[k]), (name, k)
    got = build_backbone(arch, no_fc).state_dict()  # detector backbones have no classifier
    assert torch.equal(got["layer4.1.bn2.weight"], ref["layer4.1.bn2.weight"])


def test_bad_weights(tmp_path):
    arch = Arch(backbone="resnet18")
    with pytest.raises(WeightsError, match="expected an existing .pth"):
        build_backbone(arch, tmp_path / "missing.pth")
    torch.save(seeded_state_dict("resnet34"), tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="layer1.0.conv1.weight|unexpected key|missing"):
        build_backbone(arch, tmp_path / "r34.pth")
    sd50 = seeded_state_dict("resnet50")
    with pytest.raises(WeightsError, match=r"got shape"):
        build_backbone(arch, sd50)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="torch.load"):
        build_backbone(arch, tmp_path / "junk.pth")
    t = build_backbone(random_arch("resnet18", random.Random(0), p_conv=1.0)).state_dict()
    with pytest.raises(WeightsError, match="transformed-layout"):
        build_backbone(arch, t)


def test_imagenet_weights_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: must try the network

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr("torch.hub.load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match="pass a local file"):
        build_backbone(Arch(backbone="resnet18"), "imagenet")
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        build_backbone(Arch(backbone="resnext101_32x4d"), "imagenet")
