"""The channel-level NATS super-net (paper section 3.2, eq. 3).

Each searched 3x3 conv becomes a `ChannelMixedConv`: one replica per genotype of its stage, each
initialised from the pretrained weight, run with its dilation (padding = dilation, same stride
and groups). The output channels are split into N groups; group i of the output is
sum_g softmax(alpha_i)_g * y_i^g.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from natsdeploy.arch import Arch, ArchError
from natsdeploy.models.specs import BACKBONES, ConvInfo
from natsdeploy.search.decode import decode, genotypes, searchable_convs

__all__ = ["ChannelMixedConv", "build_supernet_backbone", "supernet_alphas", "arch_parameters",
           "weight_parameters", "decode_supernet", "group_width"]


def group_width(info: ConvInfo, *, groups: int | None, channels_per_group: int | None) -> int:
    """Channels per search group for `info`, validated (ResNeXt: a multiple of the conv-group width)."""
    c = info.out_channels
    if (groups is None) == (channels_per_group is None):
        raise ArchError("search groups: got both or neither of --groups/--channels-per-group, expected exactly one")
    if groups is not None:
        if groups < 1 or c % groups:
            raise ArchError(f"--groups: got {groups}, expected a divisor of {c} ({info.name} out_channels)")
        width = c // groups
    else:
        width = int(channels_per_group)  # type: ignore[arg-type]
        if width < 1 or c % width:
            raise ArchError(f"--channels-per-group: got {width}, expected a divisor of {c} ({info.name} out_channels)")
    if info.groups > 1 and width % info.channels_per_group:
        raise ArchError(f"search group width: got {width} channels for {info.name}, expected a multiple of "
                        f"{info.channels_per_group} (its conv-group width; groups=32 works for ResNeXt)")
    return width


class ChannelMixedConv(nn.Module):
    """Mixed conv over genotypes with per-channel-group architecture weights `alpha` [N, G]."""

    def __init__(self, conv: nn.Conv2d, dilations: Sequence[tuple[int, int]], group_width: int, *,
                 recompute: bool = False) -> None:
        super().__init__()
        self.dilations = [tuple(d) for d in dilations]
        self.stride, self.groups = conv.stride, conv.groups
        self.out_channels = conv.out_channels
        self.group_width = group_width
        self.n_groups = conv.out_channels // group_width
        w = conv.weight.detach()
        # one replica per genotype, each a copy of the pretrained weight
        self.weight = nn.Parameter(w.unsqueeze(0).repeat(len(self.dilations), 1, 1, 1, 1).clone())
        self.alpha = nn.Parameter(torch.zeros(self.n_groups, len(self.dilations), dtype=w.dtype, device=w.device))
        self.recompute = recompute

    def channel_weights(self) -> torch.Tensor:
        """softmax(alpha) expanded to one weight per (genotype, output channel): [G, C_out]."""
        p = F.softmax(self.alpha, dim=1)  # [N, G]
        return p.t().repeat_interleave(self.group_width, dim=1)

    def _branch(self, x: torch.Tensor, g: int) -> torch.Tensor:
        d = self.dilations[g]
        return F.conv2d(x, self.weight[g], stride=self.stride, padding=d, dilation=d, groups=self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cw = self.channel_weights()
        out = None
        for g in range(len(self.dilations)):
            if self.recompute and torch.is_grad_enabled():
                y = checkpoint(self._weighted, x, cw[g], g, use_reentrant=False)
            else:
                y = self._weighted(x, cw[g], g)
            out = y if out is None else out + y
        return out

    def _weighted(self, x: torch.Tensor, w: torch.Tensor, g: int) -> torch.Tensor:
        return self._branch(x, g) * w.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"genotypes={self.dilations}, groups={self.n_groups}x{self.group_width}ch, recompute={self.recompute}"


def build_supernet_backbone(backbone: str, *, preset: str = "NATS-C", groups: int | None = 16,
                            channels_per_group: int | None = None,
                            stages: Sequence[str] = ("layer2", "layer3", "layer4"), weights=None,
                            recompute: bool = False) -> nn.Module:
    """A torchvision ResNet whose searchable 3x3 convs in `stages` are `ChannelMixedConv`s."""
    from natsdeploy.models.build import build_baseline

    if backbone not in BACKBONES:
        raise ArchError(f"--backbone: got {backbone!r}, expected one of {sorted(BACKBONES)}")
    for s in stages:
        genotypes(preset, s)  # validates preset and stage
    model = build_baseline(backbone, weights)
    spec = BACKBONES[backbone]
    for name in searchable_convs(backbone, stages):
        info = spec.convs[name]
        width = group_width(info, groups=groups, channels_per_group=channels_per_group)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        conv = getattr(parent, child)
        setattr(parent, child, ChannelMixedConv(conv, genotypes(preset, info.stage), width, recompute=recompute))
    return model


def supernet_alphas(model: nn.Module) -> dict[str, torch.Tensor]:
    """alpha of every mixed conv, keyed by the torchvision conv name (wrappers' prefixes removed)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, ChannelMixedConv):
            out[_conv_name(name)] = m.alpha.detach().cpu().clone()
    return out


def _conv_name(name: str) -> str:
    i = name.find("layer")
    return name[i:] if i >= 0 else name


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.alpha for m in model.modules() if isinstance(m, ChannelMixedConv)]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    alphas = {id(p) for p in arch_parameters(model)}
    return [p for p in model.parameters() if id(p) not in alphas and p.requires_grad]


def decode_supernet(alphas: Mapping[str, torch.Tensor], backbone: str, preset: str, *, extra: dict | None = None) -> Arch:
    arch = decode(alphas, backbone, preset)
    if extra:
        prov = dict(arch.provenance)
        prov.update(extra)
        arch = Arch(backbone=arch.backbone, convs=arch.convs, provenance=prov)
    return arch
