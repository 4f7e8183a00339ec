"""Counting: cross-checked against fvcore; transformed == baseline for any valid arch."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natsdeploy import build_backbone, build_baseline, count
from natsdeploy.convert import load_ic_conv
from natsdeploy.verify.check import check_arch
from tests.conftest import ICCONV, needs_icconv
from tests.helpers import ALL, ALL_PARAMS, random_arch


def _fvcore(model, shape):
    from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(model, torch.zeros(shape)).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_op = fca.by_operator()
    return sum(v for k, v in by_op.items() if k in ("conv", "linear", "addmm", "matmul"))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_macs_match_fvcore(backbone):
    shape = (1, 3, 96, 128)
    arch = random_arch(backbone, random.Random(0))
    for model in (build_baseline(backbone), build_backbone(arch)):
        c = count(model, shape)
        assert c.macs == _fvcore(model.eval(), shape)
        assert c.params == sum(p.numel() for p in model.parameters())


def test_known_resnet50_cost():
    c = count(build_baseline("resnet50"), (1, 3, 224, 224))
    assert c.params == 25_557_032  # torchvision's documented parameter count
    assert 4.08e9 < c.macs < 4.13e9  # the well-known ~4.1 GMACs at 224x224
    assert c.per_module["layer1.0.conv2"] == (64 * 64 * 9, 56 * 56 * 64 * 64 * 9)


@pytest.mark.parametrize("backbone", ALL_PARAMS)
def test_transformed_counts_equal_baseline(backbone):
    arch = random_arch(backbone, random.Random(1), p_conv=1.0, max_dilation=5)
    r = check_arch(arch, (1, 3, 800, 1216))
    assert r.equal, (r.transformed, r.baseline)
    for name in arch.convs:
        assert r.transformed.per_module[name] == r.baseline.per_module[name]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**9), backbone=st.sampled_from(ALL), h=st.integers(32, 1400), w=st.integers(32, 1400))
def test_counts_equal_for_random_archs(seed, backbone, h, w):
    r = check_arch(random_arch(backbone, random.Random(seed), max_dilation=6), (1, 3, h, w))
    assert r.transformed.params == r.baseline.params and r.transformed.macs == r.baseline.macs


@needs_icconv
def test_icconv_counts_equal():
    for f, bb in [("detection_ic_resnet50_k9.json", "resnet50"), ("detection_ic_resnet101_k9.json", "resnet101")]:
        assert check_arch(load_ic_conv(ICCONV / f, bb)).equal


def test_count_detects_a_difference():
    # the comparison is not vacuous: a wider input changes MACs, not params
    a = check_arch(random_arch("resnet18", random.Random(0)), (1, 3, 64, 64))
    b = check_arch(random_arch("resnet18", random.Random(0)), (1, 3, 64, 96))
    assert a.transformed.macs != b.transformed.macs and a.transformed.params == b.transformed.params
