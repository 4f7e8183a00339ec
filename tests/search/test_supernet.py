"""The channel-level mixed conv (paper eq. 3) against a direct computation."""

import pytest
import torch
import torch.nn.functional as F

from natsdeploy import ArchError
from natsdeploy.search.supernet import (ChannelMixedConv, arch_parameters, build_supernet_backbone,
                                        supernet_alphas, weight_parameters)

DILS = [(1, 1), (2, 2), (1, 3)]


def _ref(x, w, alpha, stride, width):
    p = torch.softmax(alpha, 1)
    out = 0
    for g, d in enumerate(DILS):
        y = F.conv2d(x, w, stride=stride, padding=d, dilation=d)
        out = out + y * p[:, g].repeat_interleave(width).view(1, -1, 1, 1)
    return out


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_conv_equals_eq3(stride):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 8, 3, stride=stride, padding=1, bias=False)
    m = ChannelMixedConv(conv, DILS, group_width=2)
    with torch.no_grad():
        m.alpha.copy_(torch.randn(4, 3))
    x = torch.randn(2, 6, 13, 11)
    torch.testing.assert_close(m(x), _ref(x, conv.weight, m.alpha, stride, 2), rtol=1e-5, atol=1e-5)
    assert m(x).shape == conv(x).shape


def test_one_hot_alpha_selects_a_dilation_per_group():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    m = ChannelMixedConv(conv, DILS, group_width=2)
    with torch.no_grad():
        m.alpha.copy_(torch.tensor([[60.0, 0, 0], [0, 60.0, 0], [0, 0, 60.0]]))
    x = torch.randn(1, 4, 9, 9)
    y = m(x)
    for i, d in enumerate(DILS):
        ref = F.conv2d(x, conv.weight, padding=d, dilation=d)[:, 2 * i:2 * i + 2]
        torch.testing.assert_close(y[:, 2 * i:2 * i + 2], ref, rtol=1e-5, atol=1e-5)


def test_recompute_matches_plain_forward_and_grads():
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)
    a, b = ChannelMixedConv(conv, DILS, 2), ChannelMixedConv(conv, DILS, 2, recompute=True)
    with torch.no_grad():
        a.alpha.normal_()
        b.alpha.copy_(a.alpha)
    x = torch.randn(2, 4, 10, 10)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    torch.testing.assert_close(a.alpha.grad, b.alpha.grad)
    torch.testing.assert_close(a.weight.grad, b.weight.grad)


def test_supernet_backbone_replicas_copy_pretrained():
    torch.manual_seed(3)
    net = build_supernet_backbone("resnet18", groups=16)
    alphas = supernet_alphas(net)
    assert set(alphas) == {"layer2.0.conv1", "layer2.1.conv1", "layer3.0.conv1", "layer3.1.conv1",
                           "layer4.0.conv1", "layer4.1.conv1"}  # basic conv2 feeds the residual add
    m = net.layer4[0].conv1
    assert m.weight.shape[0] == 9 and torch.equal(m.weight[0], m.weight[8])  # NATS-C stage-5 has 9 genotypes
    assert alphas["layer4.0.conv1"].shape == (16, 9)
    assert len(arch_parameters(net)) == 6 and all(p.shape[0] == 16 for p in arch_parameters(net))
    ids = {id(p) for p in arch_parameters(net)}
    assert not any(id(p) in ids for p in weight_parameters(net))


def test_channels_per_group_and_resnext_rules():
    net = build_supernet_backbone("resnet50", groups=None, channels_per_group=32, stages=("layer3",))
    assert supernet_alphas(net)["layer3.0.conv2"].shape == (8, 5)
    with pytest.raises(ArchError, match="multiple of 8"):
        build_supernet_backbone("resnext101_32x4d", groups=64, stages=("layer2",))
    with pytest.raises(ArchError, match="divisor"):
        build_supernet_backbone("resnet50", groups=7)


# --- gumbel sampling (GDAS): one genotype per group and step, straight-through -------------------

def _per_group_ref(x, w, dils, index, width, groups=1):
    """Each group's channels computed by its own genotype's full conv, then sliced (independent of the gather)."""
    parts = [F.conv2d(x, w, padding=dils[g], dilation=dils[g], groups=groups)[:, i * width:(i + 1) * width]
             for i, g in enumerate(index.tolist())]
    return torch.cat(parts, 1)


@pytest.mark.parametrize("conv_groups", [1, 4])
def test_gumbel_forward_is_the_sampled_genotype_per_group(conv_groups):
    torch.manual_seed(4)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False, groups=conv_groups)
    m = ChannelMixedConv(conv, DILS, group_width=4, sampling="gumbel", tau=0.5)
    with torch.no_grad():
        m.alpha.copy_(torch.tensor([[0.0, 5, 0], [5, 0, 0], [0, 0, 5], [0, 5, 0]]))
    x = torch.randn(2, 8, 11, 9)
    y = m.train()(x)
    assert len(set(m.last_index.tolist())) > 1  # several genotypes drawn: the gather/scatter is exercised
    torch.testing.assert_close(y, _per_group_ref(x, conv.weight, DILS, m.last_index, 4, conv_groups),
                               rtol=1e-5, atol=1e-5)


def test_gumbel_alpha_gradient_is_the_straight_through_one():
    torch.manual_seed(5)
    conv = torch.nn.Conv2d(6, 8, 3, padding=1, bias=False)
    tau = 0.7
    m = ChannelMixedConv(conv, DILS, group_width=2, sampling="gumbel", tau=tau, estimator="st").train()
    with torch.no_grad():
        m.alpha.normal_()
    x, r = torch.randn(2, 6, 10, 10), torch.randn(2, 8, 10, 10)
    (m(x) * r).sum().backward()
    idx, p = m.last_index, m.last_probs
    # d/d(gate_i) = <r, y_i> over group i; gate_i = softmax((alpha + noise) / tau)_i[idx_i] in the backward
    s = (r * _per_group_ref(x, conv.weight, DILS, idx, 2)).view(2, 4, 2, 10, 10).sum(dim=(0, 2, 3, 4))
    p_sel = p.gather(1, idx[:, None])
    expected = s[:, None] / tau * p_sel * (F.one_hot(idx, 3).float() - p)
    assert m.alpha.grad.abs().sum() > 0
    torch.testing.assert_close(m.alpha.grad, expected, rtol=1e-4, atol=1e-5)
    # only the drawn (genotype, group) replicas get a gradient: a step updates as many filters as the baseline's
    drawn = [(k // 4 == idx[k % 4]).item() for k in range(12)]
    assert [p.grad is not None for p in m.replicas] == drawn


def _group_cost(r, n_groups):
    """The local estimator's cost, written out: per group, the mean of r^2 over its non-zero entries (NaN when
    there are none), over the mean of that across the groups that have some."""
    c = torch.stack([chunk[chunk != 0].square().mean() if chunk.any() else torch.tensor(float("nan"))
                     for chunk in r.chunk(n_groups, dim=1)])
    return c / c.nanmean()


def test_gumbel_local_alpha_gradient_is_the_per_group_score_function():
    from natsdeploy.search.estimators import BASELINE_MOMENTUM as M

    torch.manual_seed(6)
    conv = torch.nn.Conv2d(6, 8, 3, padding=1, bias=False)
    m = ChannelMixedConv(conv, DILS, group_width=2, sampling="gumbel").train()
    assert m.estimator == "local"
    with torch.no_grad():
        m.alpha.normal_()
    x = torch.randn(2, 6, 10, 10)
    r1 = torch.randn(2, 8, 10, 10)
    r2 = torch.randn(2, 8, 10, 10) * torch.tensor([1.0, 3, 1, 1, 0.2, 1, 1, 2]).view(1, -1, 1, 1)
    r2[:, 2:4] *= (torch.rand(2, 2, 10, 10) < 0.3)  # group 1: mostly zero, as behind a ReLU; the mean skips zeros
    r2[:, 6:8] = 0  # group 3: no signal at all
    y = m(x)  # the forward is exactly the drawn genotypes' network
    torch.testing.assert_close(y, _per_group_ref(x, conv.weight, DILS, m.last_index, 2), rtol=1e-5, atol=1e-5)
    (y * r1).sum().backward()  # dL/dy = r1
    c1 = _group_cost(r1, 4)
    assert torch.equal(m.alpha.grad, torch.zeros_like(m.alpha))  # the first step only sets the baseline
    torch.testing.assert_close(m.credit_baseline, c1)
    m.zero_grad(set_to_none=True)
    (m(x) * r2).sum().backward()
    idx, c2 = m.last_index, _group_cost(r2, 4)
    assert c2[:3].isfinite().all() and c2[3].isnan()
    c2 = torch.where(c2.isnan(), c1, c2)  # no signal: no credit, the baseline kept
    expected = (c2 - c1)[:, None] * (F.one_hot(idx, 3).float() - torch.softmax(m.alpha.detach(), 1))
    assert expected[:3].abs().sum() > 0 and expected[3].abs().sum() == 0
    torch.testing.assert_close(m.alpha.grad, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.credit_baseline, M * c1 + (1 - M) * c2)
    drawn = [(k // 4 == idx[k % 4]).item() for k in range(12)]  # only the drawn replicas learn, as with "st"
    assert [p.grad is not None for p in m.replicas] == drawn
    with torch.no_grad():  # no gradient, no credit: the baseline is left alone
        m(x)
    torch.testing.assert_close(m.credit_baseline, M * c1 + (1 - M) * c2)


def test_credit_state_round_trips_and_stays_out_of_the_state_dict():
    from natsdeploy.search.supernet import credit_state, load_credit_state

    net = build_supernet_backbone("resnet18", groups=8, sampling="gumbel").train()
    for p in arch_parameters(net):
        p.data.normal_()
    net(torch.randn(1, 3, 64, 64)).square().sum().backward()
    state = credit_state(net)
    assert set(state) == set(supernet_alphas(net)) and not any(v.isnan().any() for v in state.values())
    assert not any("credit" in k for k in net.state_dict())
    fresh = build_supernet_backbone("resnet18", groups=8, sampling="gumbel")
    assert all(v.isnan().all() for v in credit_state(fresh).values())
    load_credit_state(fresh, state, where="ck")
    assert all(torch.equal(credit_state(fresh)[k], v) for k, v in state.items())
    assert credit_state(build_supernet_backbone("resnet18", groups=8)) == {}
    from natsdeploy.errors import CheckpointError

    name = sorted(state)[0]
    for bad, text in [({**state, name: torch.zeros(1)}, rf"{name}: got \(1,\), expected a tensor of shape \(8,\)"),
                      ({k: v for k, v in state.items() if k != name}, rf"{name}: got nothing"),
                      ({**state, "layer9.conv": torch.zeros(8)}, r"layer9.conv: got \(8,\), expected no such conv")]:
        with pytest.raises(CheckpointError, match=rf"^ck: key 'credit': {text}"):
            load_credit_state(fresh, bad, where="ck")


def test_local_gradient_is_in_the_loss_units_under_amp_scaling_and_skips_overflow():
    torch.manual_seed(7)
    conv = torch.nn.Conv2d(6, 8, 3, padding=1, bias=False)
    plain, scaled, overflow = (ChannelMixedConv(conv, DILS, group_width=2, sampling="gumbel").train()
                               for _ in range(3))
    x, r1, r2 = torch.randn(2, 6, 10, 10), torch.randn(2, 8, 10, 10), torch.randn(2, 8, 10, 10)
    for m in (plain, scaled, overflow):
        with torch.no_grad():
            m.alpha.copy_(torch.linspace(-1, 1, 12).view(4, 3))
        torch.manual_seed(0)
        (m(x) * r1).sum().backward()
        m.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    (plain(x) * r2).sum().backward()
    scaled.loss_scale = 1024.0  # as set_loss_scale(model, GradScaler.get_scale()) does
    torch.manual_seed(1)
    (scaled(x) * r2 * 1024.0).sum().backward()  # a scaled loss
    assert plain.alpha.grad.abs().sum() > 0
    torch.testing.assert_close(scaled.alpha.grad / 1024.0, plain.alpha.grad)  # what GradScaler's unscale gives
    torch.testing.assert_close(scaled.credit_baseline, plain.credit_baseline)
    before = overflow.credit_baseline.clone()
    torch.manual_seed(1)
    (overflow(x) * r2.index_fill(1, torch.tensor([3]), float("inf"))).sum().backward()
    assert overflow.alpha.grad.isnan().all()  # GradScaler skips the step
    assert torch.equal(overflow.credit_baseline, before)


def _bn_eval_mixed_train(net):
    net.eval()
    for mod in net.modules():
        if isinstance(mod, ChannelMixedConv):
            mod.train()
    return net


def test_gumbel_tiny_tau_forward_equals_the_transformed_network_of_the_sample():
    from natsdeploy import build_backbone, decode
    from natsdeploy.search.supernet import sampled_alphas
    from tests.helpers import seeded_state_dict

    sd = seeded_state_dict("resnet18", seed=6)
    net = _bn_eval_mixed_train(build_supernet_backbone("resnet18", groups=16, weights=sd, sampling="gumbel",
                                                       tau=1e-6))
    torch.manual_seed(7)
    for p in arch_parameters(net):
        p.data.normal_()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    y = net(x)
    sample = sampled_alphas(net)
    torch.manual_seed(0)
    net(x)
    assert all(torch.equal(sample[k], v) for k, v in sampled_alphas(net).items())  # fixed seed, same sample
    arch = decode(sample, "resnet18", "NATS-C")
    assert all(len(ct.branches) > 1 for ct in arch.convs.values())
    torch.testing.assert_close(y, build_backbone(arch, sd)(x), rtol=1e-4, atol=1e-4)


def test_gumbel_eval_uses_the_argmax_arch_and_no_randomness():
    from natsdeploy import build_backbone, decode
    from tests.helpers import seeded_state_dict

    sd = seeded_state_dict("resnet18", seed=8)
    net = build_supernet_backbone("resnet18", groups=8, weights=sd, sampling="gumbel").eval()
    torch.manual_seed(9)
    for p in arch_parameters(net):
        p.data.normal_()
    x = torch.randn(1, 3, 64, 64)
    state = torch.get_rng_state()
    with torch.no_grad():
        y = net(x)
    assert torch.equal(torch.get_rng_state(), state)
    ref = build_backbone(decode(supernet_alphas(net), "resnet18", "NATS-C"), sd)
    torch.testing.assert_close(y, ref(x), rtol=1e-4, atol=1e-4)


def _fvcore_conv_macs(model, x):
    from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return fca.by_operator()["conv"]


def test_gumbel_training_forward_macs_equal_the_baseline_fvcore():
    from natsdeploy import build_baseline

    torch.manual_seed(10)
    x = torch.randn(1, 3, 64, 64)
    base = _fvcore_conv_macs(build_baseline("resnet18").train(), x)
    gumbel = build_supernet_backbone("resnet18", groups=8, sampling="gumbel").train()
    for p in arch_parameters(gumbel):
        p.data.normal_()
    torch.manual_seed(0)
    assert _fvcore_conv_macs(gumbel, x) == base
    assert len(set(gumbel.layer4[0].conv1.last_index.tolist())) > 1  # the sample was split over genotypes
    assert _fvcore_conv_macs(build_supernet_backbone("resnet18", groups=8).train(), x) > 2 * base  # softmax: all
    # a grouped conv (ResNeXt-style): the drawn genotypes' convs together cost the conv's MACs
    conv = torch.nn.Conv2d(16, 32, 3, padding=1, bias=False, groups=8)
    m = ChannelMixedConv(conv, DILS, group_width=8, sampling="gumbel").train()
    xs = torch.randn(1, 16, 12, 12)
    torch.manual_seed(1)
    assert _fvcore_conv_macs(m, xs) == _fvcore_conv_macs(conv, xs)


@pytest.mark.parametrize("estimator", ["local", "st"])
def test_gumbel_recompute_matches_and_settings_are_checked(estimator):
    from natsdeploy.search.supernet import set_tau

    torch.manual_seed(11)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)
    a = ChannelMixedConv(conv, DILS, 2, sampling="gumbel", estimator=estimator).train()
    b = ChannelMixedConv(conv, DILS, 2, sampling="gumbel", recompute=True, estimator=estimator).train()
    x = torch.randn(2, 4, 10, 10)
    for m in (a, b):
        for step in range(2):  # "local": the second step has a baseline, so a non-zero gradient
            m.zero_grad()
            torch.manual_seed(step)
            (m(x).square() * torch.arange(1.0, 9).view(1, -1, 1, 1) ** step).sum().backward()
    assert a.alpha.grad.abs().sum() > 0
    torch.testing.assert_close(a.alpha.grad, b.alpha.grad)
    for pa, pb in zip(a.replicas, b.replicas):
        assert (pa.grad is None) == (pb.grad is None)
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad)
    net = build_supernet_backbone("resnet18", groups=8, sampling="gumbel", tau=3.0)
    set_tau(net, 0.25)
    assert {m.tau for m in net.modules() if isinstance(m, ChannelMixedConv)} == {0.25}
    with pytest.raises(ArchError, match="sampling: got 'hard'"):
        build_supernet_backbone("resnet18", sampling="hard")
    with pytest.raises(ArchError, match="tau: got 0"):
        set_tau(net, 0)
    with pytest.raises(ArchError, match="estimator: got 'reinforce', expected one of"):
        build_supernet_backbone("resnet18", sampling="gumbel", estimator="reinforce")


def test_annealed_tau_linear_and_exponential():
    from natsdeploy.search.supernet import annealed_tau

    assert [annealed_tau(10, 0.1, step=s, total=3) for s in (-2, 0, 1, 2, 5)] == pytest.approx([10, 10, 5.05, 0.1, 0.1])
    assert [annealed_tau(4, 1, step=s, total=3, schedule="exp") for s in (0, 1, 2)] == pytest.approx([4, 2, 1])
    with pytest.raises(ArchError, match="tau schedule: got 'cos'"):
        annealed_tau(1, 0.5, step=0, total=2, schedule="cos")


def test_gumbel_state_dict_has_the_softmax_layout_both_ways():
    torch.manual_seed(12)
    soft = build_supernet_backbone("resnet18", groups=8)
    gumbel = build_supernet_backbone("resnet18", groups=8, sampling="gumbel")
    with torch.no_grad():
        for p in soft.parameters():
            p.add_(torch.randn_like(p))
    sd = soft.state_dict()
    assert gumbel.state_dict().keys() == sd.keys()
    gumbel.load_state_dict(sd)
    for k, v in gumbel.state_dict().items():
        assert torch.equal(v, sd[k]), k
    m = gumbel.layer4[0].conv1
    assert torch.equal(m.replica_weight(), soft.layer4[0].conv1.weight)
    assert torch.equal(m.replicas[2 * 8 + 3], soft.layer4[0].conv1.weight[2, 3 * 64:4 * 64])  # k = g * N + i
    soft.load_state_dict(gumbel.state_dict())
