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
