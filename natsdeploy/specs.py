"""Pure-Python descriptions of the supported backbones.

The arch validator needs every 3x3 conv's shape without building a network, so the
torchvision ResNet layouts are described here as data (no torch import).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

__all__ = ["ConvInfo", "BlockInfo", "BackboneSpec", "BACKBONES", "get_spec"]


@dataclass(frozen=True)
class ConvInfo:
    """One 3x3 conv of a backbone and the modules that read its output per channel."""

    name: str
    in_channels: int
    out_channels: int
    stride: int
    groups: int
    bn: str
    """The BatchNorm that normalises this conv's output."""
    next_conv: str | None
    """The conv that reads the (BN, ReLU) output; None when the output feeds the residual add."""
    prev_conv: str | None
    """The conv (with BN `prev_bn`) producing this conv's input inside the block, if any."""
    prev_bn: str | None

    @property
    def permutable(self) -> bool:
        return self.next_conv is not None

    @property
    def channels_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def stage(self) -> str:
        return self.name.split(".")[0]


@dataclass(frozen=True)
class BlockInfo:
    """One residual block of a backbone: its name prefix, widths and stride (the single walk of the layout)."""

    prefix: str
    """Module name prefix, e.g. `layer2.0`."""
    in_channels: int
    planes: int
    width: int
    """Channels of the block's 3x3 conv (`planes` for basic blocks)."""
    out_channels: int
    stride: int


@dataclass(frozen=True)
class BackboneSpec:
    """A torchvision ResNet/ResNeXt layout."""

    name: str
    block: Literal["basic", "bottleneck"]
    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64

    @property
    def expansion(self) -> int:
        return 1 if self.block == "basic" else 4

    @cached_property
    def blocks(self) -> tuple[BlockInfo, ...]:
        """Every residual block in network order; `convs` and the MAC count both walk this."""
        out: list[BlockInfo] = []
        inplanes = 64
        for li, n_blocks in enumerate(self.layers, start=1):
            planes = 64 * 2 ** (li - 1)
            width = planes if self.block == "basic" else int(planes * (self.width_per_group / 64.0)) * self.groups
            for bi in range(n_blocks):
                out.append(BlockInfo(prefix=f"layer{li}.{bi}", in_channels=inplanes, planes=planes, width=width,
                                     out_channels=planes * self.expansion, stride=2 if (li > 1 and bi == 0) else 1))
                inplanes = planes * self.expansion
        return tuple(out)

    @cached_property
    def convs(self) -> dict[str, ConvInfo]:
        """Every 3x3 conv in network order, keyed by torchvision module name."""
        out: dict[str, ConvInfo] = {}
        for b in self.blocks:
            p = b.prefix
            if self.block == "basic":
                out[f"{p}.conv1"] = ConvInfo(f"{p}.conv1", b.in_channels, b.planes, b.stride, 1,
                                             f"{p}.bn1", f"{p}.conv2", None, None)
                out[f"{p}.conv2"] = ConvInfo(f"{p}.conv2", b.planes, b.planes, 1, 1,
                                             f"{p}.bn2", None, None, None)
            else:
                out[f"{p}.conv2"] = ConvInfo(f"{p}.conv2", b.width, b.width, b.stride, self.groups,
                                             f"{p}.bn2", f"{p}.conv3", f"{p}.conv1", f"{p}.bn1")
        return out

    def torchvision_kwargs(self) -> dict[str, int]:
        return {"groups": self.groups, "width_per_group": self.width_per_group}


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        BackboneSpec("resnet18", "basic", (2, 2, 2, 2)),
        BackboneSpec("resnet34", "basic", (3, 4, 6, 3)),
        BackboneSpec("resnet50", "bottleneck", (3, 4, 6, 3)),
        BackboneSpec("resnet101", "bottleneck", (3, 4, 23, 3)),
        BackboneSpec("resnext101_32x4d", "bottleneck", (3, 4, 23, 3), groups=32, width_per_group=4),
        BackboneSpec("resnext101_32x8d", "bottleneck", (3, 4, 23, 3), groups=32, width_per_group=8),
    )
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}") from None
