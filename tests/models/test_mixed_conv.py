"""MixedDilationConv against the dense zero-filled-kernel form of a dilated conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from natsdeploy.arch import Branch
from natsdeploy.models.mixed_conv import MixedDilationConv
from tests.helpers import dense_kernel


def test_dense_kernel_reference_is_a_dilated_conv():
    # sanity of the reference itself against torch's dilation argument
    torch.manual_seed(0)
    x, w = torch.randn(1, 4, 13, 11), torch.randn(6, 4, 3, 3)
    for dh, dw in [(1, 1), (2, 2), (1, 3), (4, 2)]:
        torch.testing.assert_close(F.conv2d(x, dense_kernel(w, dh, dw), padding=(dh, dw)),
                                   F.conv2d(x, w, padding=(dh, dw), dilation=(dh, dw)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(17, 23), (16, 16), (9, 31)])
def test_branches_equal_dense_reference(stride, hw):
    torch.manual_seed(1)
    branches = [Branch((1, 1), 5), Branch((2, 2), 3), Branch((1, 3), 4), Branch((5, 1), 4)]
    m = MixedDilationConv(8, branches, stride=stride)
    x = torch.randn(2, 8, *hw)
    w = torch.cat([c.weight for c in m.branches])
    outs, o = [], 0
    for b in branches:
        dh, dw = b.dilation
        outs.append(F.conv2d(x, dense_kernel(w[o:o + b.channels], dh, dw), stride=stride, padding=(dh, dw)))
        o += b.channels
    ref = torch.cat(outs, 1)
    base = F.conv2d(x, w, stride=stride, padding=1)
    y = m(x)
    assert y.shape == base.shape  # same spatial size as the baseline conv, stride 2 and odd sizes too
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_grouped_branches_read_their_own_groups():
    torch.manual_seed(2)
    groups, k, ipg = 4, 3, 2
    branches = [Branch((1, 1), 2 * k), Branch((3, 2), k), Branch((2, 2), k)]
    m = MixedDilationConv(groups * ipg, branches, stride=2, groups=groups)
    assert [c.groups for c in m.branches] == [2, 1, 1]
    x = torch.randn(1, groups * ipg, 15, 12)
    w = torch.cat([c.weight for c in m.branches])
    outs, o = [], 0
    for b in branches:
        full = F.conv2d(x, dense_kernel(w, *b.dilation), stride=2, padding=b.dilation, groups=groups)
        outs.append(full[:, o:o + b.channels])
        o += b.channels
    torch.testing.assert_close(m(x), torch.cat(outs, 1), rtol=1e-5, atol=1e-5)
