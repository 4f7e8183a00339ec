"""The decode rule (paper 3.3, ARCH_FORMAT.md "Decode"), pinned with hand-built alphas."""

import numpy as np
import pytest
import torch

from natsdeploy import ArchError
from natsdeploy.search.decode import PRESETS, decode

C34 = PRESETS["NATS-C"]["layer2"]  # (1,1), (2,2), (3,3), (1,3), (3,1)


def _alpha(choices, n_geno):
    a = np.zeros((len(choices), n_geno))
    for i, g in enumerate(choices):
        a[i, g] = 1.0
    return a


def test_branches_in_preset_order_with_groups_channels():
    # layer2.0.conv2 of resnet50: 128 channels, 4 groups of 32
    a = _alpha([3, 0, 3, 1], 5)
    arch = decode({"layer2.0.conv2": a}, "resnet50", "NATS-C")
    ct = arch.convs["layer2.0.conv2"]
    assert [(b.dilation, b.channels) for b in ct.branches] == [((1, 1), 32), ((2, 2), 32), ((1, 3), 64)]
    expected = list(range(32, 64)) + list(range(96, 128)) + list(range(0, 32)) + list(range(64, 96))
    assert list(ct.permutation) == expected


def test_ties_go_to_lowest_index_and_unused_genotypes_drop():
    a = np.array([[0.5, 0.5, 0.1, 0.0, 0.0], [0.2, 0.9, 0.9, 0.0, 0.0]])
    ct = decode({"layer3.0.conv2": a}, "resnet50").convs["layer3.0.conv2"]
    assert [(b.dilation, b.channels) for b in ct.branches] == [((1, 1), 128), ((2, 2), 128)]
    assert ct.permutation is None  # groups already in order: identity is written as no permutation


def test_torch_tensors_and_provenance():
    a = torch.tensor(_alpha([8, 8, 0, 4], 9), dtype=torch.float32)
    arch = decode({"layer4.1.conv2": a}, "resnet50", "NATS-C")
    ct = arch.convs["layer4.1.conv2"]
    assert [(b.dilation, b.channels) for b in ct.branches] == [((1, 1), 128), ((5, 5), 128), ((5, 1), 256)]
    sm = arch.provenance["alpha_softmax"]["layer4.1.conv2"]
    assert len(sm) == 4 and abs(sum(sm[0]) - 1) < 1e-3
    assert arch.provenance["search_space"] == "NATS-C" and arch.provenance["groups"] == 4


def test_intensity_rule():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 5))
    ct = decode({"layer3.2.conv2": a}, "resnet50").convs["layer3.2.conv2"]
    ind = a.argmax(1)
    for b in ct.branches:
        g = list(C34).index(b.dilation)
        assert b.channels == 256 * (ind == g).sum() / 16
    # every pretrained filter keeps the dilation its own group chose
    perm, o = ct.perm(), 0
    for b in ct.branches:
        g = list(C34).index(b.dilation)
        assert all(ind[c // 16] == g for c in perm[o:o + b.channels])
        o += b.channels


@pytest.mark.parametrize("alphas, msg", [
    ({"layer2.0.conv2": np.zeros((4, 3))}, "expected [N_groups, 5]"),
    ({"layer2.0.conv2": np.zeros((5, 5))}, "divisor of 128"),
    ({"layer1.0.conv2": np.zeros((4, 5))}, "stage"),
    ({"layer2.0.conv9": np.zeros((4, 5))}, "unknown conv"),
])
def test_bad_alphas(alphas, msg):
    with pytest.raises(ArchError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        decode(alphas, "resnet50")


def test_resnext_group_width():
    with pytest.raises(ArchError, match="multiple of 16"):
        decode({"layer3.0.conv2": np.zeros((64, 5))}, "resnext101_32x4d")
    arch = decode({"layer3.0.conv2": _alpha([1, 0] * 16, 5)}, "resnext101_32x4d")
    assert arch.convs["layer3.0.conv2"].branches[0].channels == 256
