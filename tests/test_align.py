"""ARCH_FORMAT.md "Alignment", "Aligning an existing arch": every sentence pinned on hand-built cases."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch

from natsdeploy import Arch, ArchError, Branch, ConvTransform, build_backbone, load_arch
from natsdeploy.align import (align_arch, align_report, check_alignment, format_align_report, format_alignment,
                              round_shares, unaligned_branches, validate_multiple)
from natsdeploy.targets import Target, get_target
from natsdeploy.verify.check import check_arch
from tests.helpers import random_arch, seeded_state_dict

D = [(1, 1), (2, 2), (3, 3), (1, 3), (3, 1), (4, 4), (5, 5)]  # distinct dilations, by branch index


def one(backbone: str, name: str, widths, perm=None, dilations=None) -> Arch:
    """An arch with one listed conv: branch b has width widths[b] and dilation D[b] (or dilations[b])."""
    dil = dilations or D
    ct = ConvTransform(tuple(Branch(dil[b], w) for b, w in enumerate(widths)), None if perm is None else tuple(perm))
    return Arch(backbone=backbone, convs={name: ct})


def widths(arch: Arch, name: str):
    return [(b.dilation, b.channels) for b in arch.convs[name].branches]


# -- rounding -------------------------------------------------------------------------------
def test_rounding_floor_then_largest_fractional_part():
    assert round_shares([Fraction(5, 4), Fraction(1), Fraction(1, 2), Fraction(5, 4)], [40, 32, 16, 40]) == [1, 1, 1, 1]
    assert round_shares([Fraction(7, 4), Fraction(3, 4), Fraction(3, 2)], [0, 0, 0]) == [2, 1, 1]


def test_rounding_ties_go_to_larger_tiebreak_then_lower_index():
    half = Fraction(1, 2)
    assert round_shares([half, half, 1], [1, 2, 0]) == [0, 1, 1]  # larger tie-break wins
    assert round_shares([half, half, 1], [2, 2, 0]) == [1, 0, 1]  # then the lower index
    assert round_shares([half, half, half, half], [1, 3, 3, 2]) == [0, 1, 1, 0]


def test_rounding_ties_on_branch_width_when_aligning():
    # x = c/32 = 1.5, .5, .5, 1.5: fractional parts tie; the larger widths win; zero-unit branches drop
    a = align_arch(one("resnet50", "layer2.0.conv2", [48, 16, 16, 48]), 32)
    assert widths(a, "layer2.0.conv2") == [(D[0], 64), (D[3], 64)]
    # equal widths and fractions: the lower index wins
    a = align_arch(one("resnet50", "layer2.0.conv2", [16, 16, 16, 16, 32, 32]), 32)
    assert widths(a, "layer2.0.conv2") == [(D[0], 32), (D[1], 32), (D[4], 32), (D[5], 32)]


# -- permutable convs: which filters move --------------------------------------------------------
def test_shrinking_branches_give_up_their_last_filters_to_growing_branches_in_order():
    p = list(reversed(range(128)))  # a non-trivial permutation: filter identities matter
    arch = one("resnet50", "layer2.0.conv2", [40, 24, 40, 24], p)  # x = 1.25 .75 1.25 .75 -> 1 1 1 1
    ct = align_arch(arch, 32).convs["layer2.0.conv2"]
    assert [b.channels for b in ct.branches] == [32, 32, 32, 32]
    # A keeps p[0:32] and releases p[32:40]; C keeps p[64:96] and releases p[96:104]; B then D append them
    assert list(ct.permutation) == p[0:32] + p[40:64] + p[32:40] + p[64:96] + p[104:128] + p[96:104]


def test_released_filters_in_branch_order_then_inner_order_across_growing_branches():
    # resnet18 layer1.0.conv1 (64 ch), N=16: x = .75 .75 1.75 .75 -> ties on .75: C (widest), then A, B
    ct = align_arch(one("resnet18", "layer1.0.conv1", [12, 12, 28, 12]), 16).convs["layer1.0.conv1"]
    assert [(b.dilation, b.channels) for b in ct.branches] == [(D[0], 16), (D[1], 16), (D[2], 32)]
    d = list(range(52, 64))  # branch D is dropped: all its filters are released, in order
    assert list(ct.permutation) == list(range(0, 12)) + d[0:4] + list(range(12, 24)) + d[4:8] + list(range(24, 52)) + d[8:12]


def test_one_growing_branch_takes_released_filters_from_several_branches():
    # x = 1.25 .25 1.25 1.25 -> one extra unit, ties at .25 between the 20-wide branches: A (lowest index)
    ct = align_arch(one("resnet18", "layer1.0.conv1", [20, 4, 20, 20]), 16).convs["layer1.0.conv1"]
    assert [(b.dilation, b.channels) for b in ct.branches] == [(D[0], 32), (D[2], 16), (D[3], 16)]
    released = [20, 21, 22, 23] + list(range(40, 44)) + list(range(60, 64))  # B (dropped), C's last 4, D's last 4
    assert list(ct.permutation) == list(range(0, 20)) + released + list(range(24, 40)) + list(range(44, 60))


def test_identity_is_written_as_absent():
    ct = align_arch(one("resnet18", "layer1.0.conv1", [60, 4]), 16).convs["layer1.0.conv1"]
    assert [b.channels for b in ct.branches] == [64] and ct.permutation is None
    explicit = one("resnet18", "layer1.0.conv1", [32, 32], perm=range(64))
    assert explicit.convs["layer1.0.conv1"].permutation is not None
    assert align_arch(explicit, 16).convs["layer1.0.conv1"].permutation is None
    assert "permutation" not in align_arch(explicit, 16).to_dict()["convs"]["layer1.0.conv1"]


# -- non-permutable convs -----------------------------------------------------------------------
def test_basic_block_conv2_keeps_identity_and_moves_boundaries():
    arch = one("resnet18", "layer1.0.conv2", [20, 24, 20])  # feeds the residual add: not permutable
    assert not arch.spec.convs["layer1.0.conv2"].permutable and arch.spec.convs["layer1.0.conv1"].permutable
    aligned = align_arch(arch, 16)
    ct = aligned.convs["layer1.0.conv2"]
    assert [(b.dilation, b.channels) for b in ct.branches] == [(D[0], 16), (D[1], 32), (D[2], 16)]
    assert ct.permutation is None
    # filters 16..19 go from d1 to d2, 44..47 from d3 to d2
    row = align_report(arch, aligned).convs[0]
    assert row.name == "layer1.0.conv2" and row.changed == 8


# -- ResNeXt -----------------------------------------------------------------------------------
def test_resnext_moves_whole_conv_groups_and_stays_valid(tmp_path):
    info = Arch(backbone="resnext101_32x4d").spec.convs["layer1.0.conv2"]
    assert (info.out_channels, info.channels_per_group) == (128, 4)
    groups = list(range(32))
    random.Random(0).shuffle(groups)
    perm = [c for grp in groups for c in range(4 * grp, 4 * grp + 4)]
    # N=8: x = 1.5 2.5 4.5 7.5, all fractions tie: the two widest (D, C) take the two spare units
    arch = one("resnext101_32x4d", "layer1.0.conv2", [12, 20, 36, 60], perm)
    aligned = align_arch(arch, 8)
    ct = aligned.convs["layer1.0.conv2"]
    assert [b.channels for b in ct.branches] == [8, 16, 40, 64]
    g = [perm[i:i + 4] for i in range(0, 128, 4)]  # conv groups in transformed order: A 0-2, B 3-7, C 8-16, D 17-31
    expected = g[0:2] + g[3:7] + g[8:17] + [g[2]] + g[17:32] + [g[7]]  # A's, then B's last group released
    assert list(ct.permutation) == [c for grp in expected for c in grp]
    load_arch(aligned.save(tmp_path / "x.json"))  # valid under the file rules (whole groups, widths)


@pytest.mark.parametrize("name, n, msg", [
    ("layer1.0.conv2", 2, "multiple of 4 (conv-group width of layer1.0.conv2, groups=32)"),
    ("layer3.0.conv2", 8, "multiple of 16 (conv-group width of layer3.0.conv2"),
    ("layer4.0.conv2", 16, "multiple of 32"),
])
def test_resnext_multiple_must_be_a_multiple_of_the_group_width(name, n, msg):
    info = Arch(backbone="resnext101_32x4d").spec.convs[name]
    arch = one("resnext101_32x4d", name, [info.out_channels])
    with pytest.raises(ArchError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        align_arch(arch, n)
    assert align_arch(arch, info.channels_per_group).convs == arch.convs


# -- rejections ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n, msg", [
    (0, "multiple: got 0, expected a positive int"),
    (-16, "got -16, expected a positive int"),
    (1.5, "got 1.5, expected a positive int"),
    ("16", "got '16', expected a positive int"),
    (True, "got True, expected a positive int"),
    (48, "multiple: got 48, expected a divisor of 128 (out_channels of layer2.0.conv2)"),
    (256, "expected a divisor of 128"),
])
def test_bad_multiple_is_rejected_naming_the_conv(n, msg):
    arch = Arch(backbone="resnet50", convs={
        "layer2.0.conv2": ConvTransform((Branch((1, 1), 64), Branch((2, 2), 64))),
        "layer3.0.conv2": ConvTransform((Branch((1, 1), 128), Branch((2, 2), 128)))})
    with pytest.raises(ArchError) as e:
        align_arch(arch, n)
    assert msg in str(e.value) and "\n" not in str(e.value)
    assert "valid here: 1, 2, 4, 8, 16, 32, 64, 128" in str(e.value)
    with pytest.raises(ArchError, match="^--multiple: "):
        validate_multiple(arch, n, field="--multiple")


# -- properties on many archs ----------------------------------------------------------------------
BACKBONES_N = [("resnet18", 16), ("resnet18", 32), ("resnet50", 16), ("resnet50", 32), ("resnext101_32x4d", 32)]


@pytest.mark.parametrize("backbone, n", BACKBONES_N)
def test_aligned_idempotent_and_cost_equal(backbone, n):
    arch = random_arch(backbone, random.Random(n), p_conv=0.9, max_dilation=5)
    aligned = align_arch(arch, n)
    assert all(b.channels % n == 0 for ct in aligned.convs.values() for b in ct.branches)  # aligned to N
    assert list(aligned.convs) == list(arch.convs) and aligned.provenance == {"align": n}
    again = align_arch(aligned, n)
    assert again.convs == aligned.convs and again.dumps() == aligned.dumps()  # aligning an aligned arch: unchanged
    r = check_arch(aligned, (1, 3, 64, 96))
    assert r.equal and r.transformed.macs == check_arch(arch, (1, 3, 64, 96)).transformed.macs


def test_provenance_is_copied_and_records_align():
    arch = Arch(backbone="resnet18", convs={}, provenance={"search_space": "NATS-C"})
    assert align_arch(arch, 8).provenance == {"search_space": "NATS-C", "align": 8}
    assert align_arch(Arch(backbone="resnet18", provenance="note"), 8).provenance == {"previous": "note", "align": 8}
    with pytest.raises(ArchError, match="positive int"):
        align_arch(Arch(backbone="resnet18"), 0)


def _min_changed(old: list[tuple[tuple[int, int], int]], new: list[tuple[tuple[int, int], int]]) -> int:
    """Brute force over every integer matrix moving the old branch widths onto the new ones (filters of one
    branch are interchangeable): the fewest filters whose dilation differs. Memoised on what is left to fill."""
    from functools import lru_cache

    @lru_cache(maxsize=None)
    def rest(i: int, left: tuple[int, ...]) -> float:
        if i == len(old):
            return 0 if not any(left) else float("inf")
        best = float("inf")

        def place(j: int, remaining: int, left: tuple[int, ...], cost: int) -> None:
            nonlocal best
            if j == len(new):
                if remaining == 0:
                    best = min(best, cost + rest(i + 1, left))
                return
            for m in range(min(remaining, left[j]) + 1):
                place(j + 1, remaining - m, left[:j] + (left[j] - m,) + left[j + 1:],
                      cost + (m if new[j][0] != old[i][0] else 0))

        place(0, old[i][1], left, 0)
        return best

    return int(rest(0, tuple(c for _, c in new)))


def _channel_of(ct: ConvTransform | None, f: int) -> int:
    return ct.perm().index(f) if ct is not None else f


def _same_function_bound(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per filter, the most two fp32 evaluations of the same conv output can differ (any summation order).

    Each output is a dot product of K = C_in/G * kh * kw terms. In fp32 (u = 2^-24) any order of
    summation is within gamma_K * sum|w_i x_i| of the exact value, gamma_K = K u / (1 - K u) (Higham,
    Accuracy and Stability of Numerical Algorithms, 3.1), so two orders differ by at most twice that,
    and sum|w_i x_i| <= ||w_f||_1 * max|x|. Kernels pick the order by branch width and ISA (AVX2 and
    AVX-512 block channels differently), so "computes the same channel" can only mean this bound.
    """
    k = weight[0].numel()
    u = 2.0 ** -24
    gamma = k * u / (1 - k * u)
    return 2 * gamma * weight.abs().flatten(1).sum(1) * x.abs().max()


SMALL_CASES = [("resnet18", "layer1.0.conv1", [20, 4, 20, 20], 16), ("resnet18", "layer1.0.conv1", [12, 12, 28, 12], 16),
               ("resnet18", "layer1.1.conv2", [20, 24, 20], 16), ("resnet18", "layer1.0.conv1", [5, 7, 11, 41], 8),
               ("resnet18", "layer1.0.conv1", [24, 8, 24, 8], 16), ("resnet18", "layer1.1.conv2", [3, 9, 17, 35], 16)]


@pytest.mark.parametrize("backbone, name, w, n", SMALL_CASES)
def test_fewest_filters_change_dilation_and_kept_filters_compute_the_same(backbone, name, w, n):
    info = Arch(backbone=backbone).spec.convs[name]
    perm = list(range(info.out_channels))
    if info.permutable:
        random.Random(1).shuffle(perm)
    arch = one(backbone, name, w, perm if info.permutable else None)
    aligned = align_arch(arch, n)
    before, after = arch.convs[name], aligned.convs[name]
    report = align_report(arch, aligned)
    if info.permutable:  # "so the smallest possible number of filters changes dilation"
        assert report.changed == _min_changed(widths(arch, name), widths(aligned, name))
    else:  # boundaries move: filters between an old and a new boundary change (here: more than the minimum)
        assert report.changed >= _min_changed(widths(arch, name), widths(aligned, name))
    # numerically: a filter that keeps its dilation computes the same channel, the others do not
    sd = seeded_state_dict(backbone)
    x = torch.randn(1, info.in_channels, 11, 13, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y0 = build_backbone(arch, sd).get_submodule(name)(x)
        y1 = build_backbone(aligned, sd).get_submodule(name)(x)
    w = sd[f"{name}.weight"]
    bound = _same_function_bound(w, x)
    diff = torch.stack([(y0[0, _channel_of(before, f)] - y1[0, _channel_of(after, f)]).abs().max()
                        for f in range(info.out_channels)])
    same = diff <= bound
    assert int((~same).sum()) == report.changed > 0, (diff / bound).tolist()
    # a filter that changed dilation computes another function: far outside the accumulation bound
    assert (diff[~same] > 100 * bound[~same]).all(), (diff / bound)[~same].tolist()


def test_report_lists_widths_changes_total_and_the_retraining_note():
    arch = Arch(backbone="resnet18", convs={
        "layer1.0.conv1": ConvTransform((Branch((1, 1), 20), Branch((2, 2), 44))),
        "layer1.0.conv2": ConvTransform((Branch((1, 1), 64),)),
        "layer2.0.conv1": ConvTransform((Branch((1, 3), 72), Branch((3, 1), 56)))})
    aligned = align_arch(arch, 16)
    rep = align_report(arch, aligned)
    assert [(c.name, c.changed) for c in rep.convs] == [("layer1.0.conv1", 4), ("layer1.0.conv2", 0),
                                                        ("layer2.0.conv1", 8)]
    assert rep.changed == 12 and rep.filters == 64 + 64 + 128
    text = format_align_report(rep, 16)
    assert "layer1.0.conv1  d1:20 d2:44 -> d1:16 d2:48  (4 of 64 filters changed dilation)" in text
    assert "d(1,3):72 d(3,1):56 -> d(1,3):80 d(3,1):48" in text  # x = 4.5 3.5: the tie goes to the wider
    assert "total: 12 of 256 filters in 3 convs changed dilation (4.7%)" in text
    assert "different arch" in text and "retrain or fine-tune" in text
    assert rep.to_dict()["changed"] == 12


# -- diagnostics: unaligned branches and their MAC share ------------------------------------------
def _diag_arch() -> Arch:
    return Arch(backbone="resnet18", convs={
        "layer1.0.conv2": ConvTransform((Branch((1, 1), 24), Branch((2, 2), 40))),
        "layer2.0.conv1": ConvTransform((Branch((1, 1), 64), Branch((1, 3), 64))),
        "layer3.1.conv1": ConvTransform((Branch((3, 1), 8), Branch((2, 2), 232), Branch((1, 1), 16)))})


def test_unaligned_branches_in_network_order():
    arch = _diag_arch()
    assert unaligned_branches(arch, 16) == [("layer1.0.conv2", 0, (1, 1), 24), ("layer1.0.conv2", 1, (2, 2), 40),
                                            ("layer3.1.conv1", 0, (3, 1), 8), ("layer3.1.conv1", 1, (2, 2), 232)]
    assert unaligned_branches(arch, 8) == []
    assert unaligned_branches(align_arch(arch, 16), 16) == []
    with pytest.raises(ArchError, match="block: got 0"):
        unaligned_branches(arch, 0)


def test_mac_share_against_counted_model():
    from natsdeploy.verify.count import count

    arch, shape = _diag_arch(), (1, 3, 64, 96)
    with torch.device("meta"):
        counted = count(build_backbone(arch), shape)
    per_conv = {n: counted.per_module[n][1] // arch.spec.convs[n].out_channels for n in arch.convs}
    expected = per_conv["layer1.0.conv2"] * 64 + per_conv["layer3.1.conv1"] * 240
    res = check_alignment(arch, get_target("cuda-fp16"), shape)
    assert res.target.block == 8 and res.aligned and res.unaligned_macs == 0
    res = check_alignment(arch, get_target("ort-cpu", flags={"avx2", "avx512f"}), shape)
    assert res.unaligned_macs == expected and res.total_macs == counted.macs
    assert res.mac_share == pytest.approx(expected / counted.macs, rel=1e-12)
    d = res.to_dict()
    assert d["block"] == 16 and d["target"] == "ort-cpu" and len(d["unaligned_branches"]) == 4
    assert d["unaligned_branches"][2] == {"conv": "layer3.1.conv1", "branch": 0, "dilation": [3, 1], "channels": 8}
    lines = format_alignment(res, arch_path="a.json")
    assert "4 branches in 2 convs are not a multiple of 16" in lines[0]
    assert "  layer3.1.conv1: branch 0 d(3,1) 8 ch, branch 1 d2 232 ch" in lines
    assert any(f"{res.mac_share:.1%}" in ln for ln in lines)
    assert "  suggestion: natsdeploy align a.json --multiple 16 -o a_a16.json" in lines
    assert check_alignment(arch, get_target("ort-cpu"), shape, total_macs=10 ** 12).total_macs == 10 ** 12


def test_full_rate_note_names_branches_narrower_than_the_runtimes_full_width():
    arch, shape = _diag_arch(), (1, 3, 64, 96)
    ort = get_target("ort-cpu", flags={"avx512f"})
    assert (ort.block, ort.full_rate) == (16, 64)
    a16 = align_arch(arch, 16)
    res = check_alignment(a16, ort, shape)
    assert res.aligned and res.narrow == tuple(unaligned_branches(a16, 64)) and res.narrow
    from natsdeploy.verify.count import count

    with torch.device("meta"):
        counted = count(build_backbone(a16), shape)
    per_conv = {n: counted.per_module[n][1] // a16.spec.convs[n].out_channels for n in a16.convs}
    assert res.narrow_macs == sum(per_conv[u.conv] * u.channels for u in res.narrow) > 0
    convs = {u.conv for u in res.narrow}
    lines = format_alignment(res, arch_path="a.json")
    assert lines[0].endswith("every branch is a multiple of 16 channels")
    assert lines[1].startswith(f"  full rate: {len(res.narrow)} branches in {len(convs)} convs are not a "
                               "multiple of 64 channels")
    assert lines[2] == "  for the baseline's speed on ort-cpu: natsdeploy align a.json --multiple 64 -o a_a64.json"
    a64 = align_arch(arch, 64)
    res64 = check_alignment(a64, ort, shape)
    assert res64.narrow == () and res64.narrow_macs == 0 and len(format_alignment(res64)) == 1
    d = res.to_dict()
    assert d["full_rate"] == 64 and d["narrow_macs"] == res.narrow_macs and d["full_rate_alignable"]
    assert [(b["conv"], b["branch"], b["channels"]) for b in d["narrow_branches"]] == \
        [(u.conv, u.index, u.channels) for u in res.narrow]
    assert d["narrow_share"] == pytest.approx(res.narrow_macs / res.total_macs, rel=1e-12)
    # a full-rate width some listed conv cannot take (layer1 is 64 wide): said, and no command offered
    wide = Target("t", 16, "r", full_rate=128, full_rate_reason="")
    res128 = check_alignment(a16, wide, shape)
    assert not res128.full_rate_alignable
    lines = format_alignment(res128, arch_path="a.json")
    assert "; on this target narrower branches cost more per channel" in lines[1]
    assert lines[2] == "  aligning to 128 is not possible for this arch (a listed conv's width does not allow it)"
    gpu = check_alignment(a16, get_target("cuda-fp16"), shape)  # full rate is the block: no note
    assert gpu.target.full_rate == 8 and len(format_alignment(gpu)) == 1
