"""The decode rule (paper 3.3, ARCH_FORMAT.md "Decode"), pinned with hand-built alphas."""

import numpy as np
import pytest
import torch

from natsdeploy import ArchError
from natsdeploy.search.decode import PRESETS, decode
from natsdeploy.specs import BACKBONES

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


# -- aligned decode (ARCH_FORMAT "Aligned decode") ------------------------------------------------
LOW = -1000.0  # exp(LOW - max) underflows to exactly 0: softmax rows of exact 0s and 1s, exact mass ties


def _rows(choices, n_geno, extra=None):
    a = np.full((len(choices), n_geno), LOW)
    for i, g in enumerate(choices):
        a[i, g] = 0.0
        for h, v in (extra or {}).get(g, {}).items():
            a[i, h] = v
    return a


def _groups_of(ct, width):
    """genotype dilation per search group, read back from the arch (branch owning its channels)."""
    out, perm, o = {}, ct.perm(), 0
    for b in ct.branches:
        chans = perm[o:o + b.channels]
        assert chans == sorted(chans)  # each branch owns its groups' channels in increasing order
        for c in chans[::width]:
            out[c // width] = b.dilation
        o += b.channels
    return [out[i] for i in range(len(out))]


def test_aligned_decode_unchanged_when_group_width_is_a_multiple_of_n():
    a = np.random.default_rng(0).normal(size=(4, 5))  # layer2.0.conv2: 4 groups of 32 channels
    plain = decode({"layer2.0.conv2": a}, "resnet50")
    for n in (8, 16, 32):
        arch = decode({"layer2.0.conv2": a}, "resnet50", align=n)
        assert arch.convs == plain.convs and arch.provenance["align"] == n
    assert "align" not in plain.provenance


@pytest.mark.parametrize("g2_likes_g1, widths", [
    (True, [32, 64, 32]),   # n_g / q = 1.5 1.5 1: the tie on .5 goes to the larger mass (genotype 1)
    (False, [64, 32, 32]),  # masses exactly equal (6 and 6): the tie goes to the lower index
])
def test_aligned_decode_rounds_units_with_the_mass_tie_break(g2_likes_g1, widths):
    choices = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0, 1]  # 16 groups of 8 channels: 6, 6, 4
    a = _rows(choices, 5, {2: {1: -1.0}} if g2_likes_g1 else None)
    arch = decode({"layer2.0.conv2": a}, "resnet50", align=32)  # q = 32 / 8 = 4
    ct = arch.convs["layer2.0.conv2"]
    assert [(b.dilation, b.channels) for b in ct.branches] == list(zip(C34[:3], widths))
    assert arch.provenance["align"] == 32
    got = _groups_of(ct, 8)
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    total = sum(p[i, list(C34).index(d)] for i, d in enumerate(got))
    if g2_likes_g1:  # optimum: g0 keeps 4 of its 6 and gives 2 to g1 (prob 0), g1 and g2 keep theirs
        assert total == pytest.approx(4 + 6 + 4 * p[2, 2], abs=1e-12)
        assert [got[i] for i in (2, 5, 8, 11)] == [C34[2]] * 4
    else:  # g0 keeps its 6 and takes 2 (prob 0); g1 and g2 keep 4 each of theirs
        assert total == pytest.approx(6 + 4 + 4, abs=1e-12)


def _round_units(counts, mass, q):
    """The rounding rule, written independently: floor, then largest fraction, larger mass, lower index."""
    x = [c / q for c in counts]
    units = [int(v) for v in x]
    order = sorted(range(len(x)), key=lambda g: (-(x[g] - units[g]), -mass[g], g))
    for g in order[:round(sum(x)) - sum(units)]:
        units[g] += 1
    return units


@pytest.mark.parametrize("seed", range(6))
def test_aligned_assignment_is_optimal_against_brute_force(seed):
    import itertools

    a = np.random.default_rng(seed).normal(scale=0.7, size=(8, 5))  # layer2.0.conv2: 8 groups of 16
    ct = decode({"layer2.0.conv2": a}, "resnet50", align=32).convs["layer2.0.conv2"]  # q = 2
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    caps = [2 * u for u in _round_units(np.bincount(a.argmax(1), minlength=5), p.sum(0), 2)]
    got = [list(C34).index(d) for d in _groups_of(ct, 16)]
    assert np.bincount(got, minlength=5).tolist() == caps
    assert all(b.channels % 32 == 0 for b in ct.branches)
    best = max(sum(p[i, g] for i, g in enumerate(order))
               for order in set(itertools.permutations([g for g in range(5) for _ in range(caps[g])])))
    assert sum(p[i, g] for i, g in enumerate(got)) == pytest.approx(best, abs=1e-12)


def test_aligned_decode_resnext_moves_whole_groups():
    a = np.random.default_rng(1).normal(size=(32, 5))  # layer3.0.conv2 of resnext101_32x4d: 32 groups of 16
    arch = decode({"layer3.0.conv2": a}, "resnext101_32x4d", align=64)  # q = 4; the Arch validates conv groups
    assert all(b.channels % 64 == 0 for b in arch.convs["layer3.0.conv2"].branches)


@pytest.mark.parametrize("backbone, name, groups, n, msg", [
    ("resnet50", "layer2.0.conv2", 16, 48, "align: got 48, expected a divisor of 128 (out_channels of layer2.0.conv2)"),
    ("resnet50", "layer2.0.conv2", 16, 0, "align: got 0, expected a positive int"),
    ("resnet50", "layer2.0.conv2", 16, 2.0, "align: got 2.0, expected a positive int"),
    ("resnext101_32x4d", "layer3.0.conv2", 32, 8, "align: got 8, expected a multiple of 16 (conv-group width"),
])
def test_aligned_decode_rejections(backbone, name, groups, n, msg):
    with pytest.raises(ArchError) as e:
        decode({name: np.zeros((groups, 5))}, backbone, align=n)
    assert msg in str(e.value)


def test_align_neither_multiple_nor_divisor_of_the_group_width_is_rejected():
    from natsdeploy.specs import ConvInfo
    from natsdeploy.search.decode import groups_per_unit

    info = ConvInfo("x.conv2", 96, 96, 1, 1, "x.bn2", "x.conv3", None, None)  # 96 channels, groups of 24
    assert groups_per_unit(info, 24, 48) == 2 and groups_per_unit(info, 24, 8) is None
    with pytest.raises(ArchError, match=r"--align: got 16, expected a divisor or a multiple of 24"):
        groups_per_unit(info, 24, 16, field="--align")


def test_decode_is_importable_from_the_package():
    import natsdeploy

    assert natsdeploy.decode is decode


def test_sample_arch_is_a_seeded_uniform_draw_from_the_space():
    from collections import Counter

    from natsdeploy.search.decode import sample_arch, searchable_convs

    a, b, c = (sample_arch("resnet50", preset="NATS-C", groups=16, seed=s) for s in (3, 3, 4))
    assert a == b and a != c and a.provenance["random_seed"] == 3
    assert sorted(a.convs) == sorted(searchable_convs("resnet50"))
    counts: Counter = Counter()
    for seed in range(40):  # 40 draws x 4 layer4 convs x 16 groups = 2560 group choices over 9 genotypes
        arch = sample_arch("resnet50", preset="NATS-C", groups=16, seed=seed)
        for name, ct in arch.convs.items():
            if name.startswith("layer4"):
                w = BACKBONES["resnet50"].convs[name].out_channels // 16
                for br in ct.branches:
                    counts[br.dilation] += br.channels // w
    assert set(counts) == set(PRESETS["NATS-C"]["layer4"])
    expected = sum(counts.values()) / len(counts)
    # uniform: each genotype's count within 5 binomial standard deviations of n/9
    sd = (sum(counts.values()) * (1 / 9) * (8 / 9)) ** 0.5
    assert all(abs(v - expected) < 5 * sd for v in counts.values()), counts


def test_sample_arch_rejects_groups_that_do_not_divide():
    from natsdeploy.search.decode import sample_arch

    with pytest.raises(ArchError, match=r"groups: got 7, expected a divisor of"):
        sample_arch("resnet18", groups=7, seed=0)


# -- decode_checkpoint: a search checkpoint's alphas, backbone, preset and recorded --align ------------------------
def _search_checkpoint(path, alphas: dict, *, align=None):
    """A schema-complete search checkpoint (natsdeploy.checkpoint.SEARCH) holding `alphas` as the super-net's
    `*.alpha` entries, as `natsdeploy search` writes them (optimiser states from a tiny stand-in model)."""
    from natsdeploy.checkpoint import SEARCH, save_checkpoint
    from natsdeploy.runtime.rng import rng_state

    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2)
    model = {f"backbone.body.{name}.alpha": torch.as_tensor(a, dtype=torch.float32) for name, a in alphas.items()}
    model["backbone.body.conv1.weight"] = torch.zeros(1)
    config = {"backbone": "resnet18", "preset": "NATS-C", "detector": "faster_rcnn", "data": "synthetic",
              "stages": ["layer2"], "groups": 8, "channels_per_group": None, "detector_kwargs": {}, "align": align}
    return save_checkpoint(path, SEARCH, {
        "model": model, "scaler": torch.amp.GradScaler("cuda", enabled=False).state_dict(), "rng": rng_state(),
        "epoch": 2, "pretrained": False, "opt_w": opt.state_dict(), "opt_a": opt.state_dict(),
        "sched": sched.state_dict(), "history": [], "config": config})


def test_decode_checkpoint_decodes_its_alphas_with_the_recorded_align(tmp_path):
    from natsdeploy.search.decode import decode_checkpoint

    rng = np.random.default_rng(0)
    alphas = {"layer2.0.conv1": rng.standard_normal((8, 5)), "layer2.1.conv1": rng.standard_normal((8, 5))}
    plain = decode(alphas, "resnet18", "NATS-C")
    arch = decode_checkpoint(_search_checkpoint(tmp_path / "plain.pth", alphas))
    assert arch.convs == plain.convs
    assert {k: arch.provenance[k] for k in ("detector", "epochs_done", "data")} == {
        "detector": "faster_rcnn", "epochs_done": 2, "data": "synthetic"}
    recorded = _search_checkpoint(tmp_path / "a32.pth", alphas, align=32)
    aligned = decode(alphas, "resnet18", "NATS-C", align=32)
    assert aligned.convs != plain.convs  # these alphas decode differently aligned: the next lines tell them apart
    assert decode_checkpoint(recorded).convs == aligned.convs
    assert decode_checkpoint(recorded, align=1).convs == plain.convs  # an explicit align wins over the recorded one
    assert all(b.channels % 32 == 0 for ct in decode_checkpoint(recorded).convs.values() for b in ct.branches)


def test_decode_checkpoint_without_alphas_is_a_checkpoint_error(tmp_path):
    from natsdeploy.errors import CheckpointError
    from natsdeploy.search.decode import decode_checkpoint

    path = _search_checkpoint(tmp_path / "none.pth", {})
    with pytest.raises(CheckpointError, match=r"got no '\*\.alpha' entries"):
        decode_checkpoint(path)
