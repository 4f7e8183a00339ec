"""Planted-arch recovery: the search machinery finds a known arch, and a wrong group mapping is caught."""

from __future__ import annotations

import pytest
import torch

from natsdeploy import decode
from natsdeploy.search.planted import group_dilations, plant_alphas, plant_arch, recover_planted, recovery
from natsdeploy.search.supernet import ChannelMixedConv

# ResNet-18 at 128 px: layer4 maps are 4x4, where (4,4) and (5,5) are the same function, so a
# group planted with one of them may decode to the other; the rest is identifiable.
# 40 steps (measured): softmax recovers 47/48 groups, layer2 and layer3 all, loss down to 0.3% of its start
SETTINGS = dict(groups=8, input_size=128, steps=40, lr=0.1, batch_size=2, seed=0)


def test_planted_arch_follows_the_decode_mapping():
    alphas = plant_alphas("resnet18", preset="NATS-C", groups=8, seed=3)
    arch = plant_arch("resnet18", preset="NATS-C", groups=8, seed=3)
    dils = group_dilations(arch, groups=8)
    genos = {"layer2": 5, "layer3": 5, "layer4": 9}
    assert set(dils) == set(alphas)
    for name, a in alphas.items():
        assert a.shape == (8, genos[name.split(".")[0]])
        from natsdeploy.search.decode import genotypes

        assert dils[name] == [genotypes("NATS-C", name.split(".")[0])[g] for g in a.argmax(1).tolist()]
    assert recovery(arch, arch, groups=8) == (1.0, {"layer2": 1.0, "layer3": 1.0, "layer4": 1.0})
    assert plant_arch("resnet18", preset="NATS-C", groups=8, seed=4).convs != arch.convs


def test_softmax_supernet_recovers_a_planted_arch():
    r = recover_planted("resnet18", **SETTINGS)
    assert r.n_groups == 48 and r.steps == 40
    assert r.loss_last < 0.1 * r.loss_first
    assert r.recovery >= 0.9, r.to_dict()
    assert r.per_stage["layer2"] == 1.0 and r.per_stage["layer3"] == 1.0, r.per_stage
    # the same alphas read with the groups shifted by one (a wrong group -> channel mapping) fail
    rolled = {k: v.roll(1, dims=0) for k, v in r.alphas.items()}
    assert recovery(decode(rolled, "resnet18", "NATS-C"), r.planted, groups=8)[0] < 0.5


def test_gumbel_supernet_recovers_a_planted_arch():
    # one drawn genotype per group and step, alpha learning through the default "local" estimator
    # (GDAS's straight-through one recovers about half of these groups: benchmarks/README.md section 3)
    r = recover_planted("resnet18", **{**SETTINGS, "steps": 100}, sampling="gumbel")
    assert r.settings["estimator"] == "local"
    assert r.loss_last < 0.1 * r.loss_first
    assert r.recovery >= 0.9, r.to_dict()


def test_a_supernet_that_maps_groups_to_the_wrong_channels_fails_recovery(monkeypatch):
    # the bug this guards against: group i's weight applied to channels i, i+N, i+2N, ... instead of
    # the contiguous block decode assigns to it (every other test of the super-net would still pass)
    def interleaved(self):
        return torch.softmax(self.alpha, dim=1).t().repeat(1, self.group_width)

    monkeypatch.setattr(ChannelMixedConv, "channel_weights", interleaved)
    r = recover_planted("resnet18", **{**SETTINGS, "steps": 40})
    assert r.recovery < 0.6, r.to_dict()


def test_recover_planted_rejects_unknown_stages():
    from natsdeploy.errors import ArchError

    with pytest.raises(ArchError, match="stages: got"):
        recover_planted("resnet18", stages=("layer1",), steps=0)
