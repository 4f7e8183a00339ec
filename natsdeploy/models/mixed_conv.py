"""The transformed conv: parallel dilated convs on one input, concatenated on channels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from natsdeploy.arch import Branch

__all__ = ["MixedDilationConv"]


class MixedDilationConv(nn.Module):
    """ARCH_FORMAT semantics 2, 3 and 5 as a module.

    Branch `b` is a 3x3 conv with padding = dilation = `branches[b].dilation` and the baseline's
    stride, so every branch has the baseline conv's output size. With `groups > 1` a branch owning
    `m` conv groups is a conv with `groups=m` over the input channels of exactly those groups; the
    builder arranges the input so those channels are contiguous.
    """

    def __init__(self, in_channels: int, branches: Sequence[Branch], *, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        out_channels = sum(b.channels for b in branches)
        k = out_channels // groups
        in_per_group = in_channels // groups
        self.in_channels, self.out_channels, self.groups, self.stride = in_channels, out_channels, groups, stride
        self.dilations = [tuple(b.dilation) for b in branches]
        self.branches = nn.ModuleList()
        self.in_slices: list[tuple[int, int]] = []
        o = 0
        for b in branches:
            if groups > 1:
                m = b.channels // k
                start = (o // k) * in_per_group
                self.in_slices.append((start, start + m * in_per_group))
                cin, g = m * in_per_group, m
            else:
                self.in_slices.append((0, in_channels))
                cin, g = in_channels, 1
            self.branches.append(
                nn.Conv2d(cin, b.channels, 3, stride=stride, padding=b.dilation, dilation=b.dilation,
                          groups=g, bias=False)
            )
            o += b.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return torch.cat([conv(x) for conv in self.branches], dim=1)
        return torch.cat([conv(x[:, s:e]) for conv, (s, e) in zip(self.branches, self.in_slices)], dim=1)

    def extra_repr(self) -> str:
        widths = [c.out_channels for c in self.branches]
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, groups={self.groups}, " \
               f"branches={list(zip(self.dilations, widths))}"
