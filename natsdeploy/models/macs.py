"""Multiply-accumulate counts of a backbone from its spec alone (no torch).

Alignment diagnostics need the MACs of each 3x3 conv (and of the whole network, for a share)
where no model is built: `natsdeploy check` before counting, the export report, library users.
The convention is that of `natsdeploy.verify.count`: Conv and Linear MACs only; a transformed
conv costs what the baseline conv costs, and a branch costs its share of output channels.
"""

from __future__ import annotations

from collections.abc import Sequence

from natsdeploy.specs import BackboneSpec

__all__ = ["conv3x3_macs_per_channel", "backbone_macs"]


def _out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _walk(spec: BackboneSpec, input_shape: Sequence[int]) -> tuple[dict[str, int], int]:
    """(MACs per output channel of every 3x3 conv, MACs of the whole network with fc)."""
    n, c, h, w = (int(d) for d in input_shape)
    h, w = _out(h, 7, 2, 3), _out(w, 7, 2, 3)
    total = n * h * w * 64 * c * 49  # stem conv
    h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)  # max pool
    per_channel: dict[str, int] = {}
    for b in spec.blocks:
        p = b.prefix
        ho, wo = _out(h, 3, b.stride, 1), _out(w, 3, b.stride, 1)
        if spec.block == "basic":
            per_channel[f"{p}.conv1"] = n * ho * wo * b.in_channels * 9
            per_channel[f"{p}.conv2"] = n * ho * wo * b.planes * 9
            total += b.planes * (per_channel[f"{p}.conv1"] + per_channel[f"{p}.conv2"])
        else:
            per_channel[f"{p}.conv2"] = n * ho * wo * (b.width // spec.groups) * 9
            total += n * h * w * b.width * b.in_channels  # conv1, 1x1 at the block's input size
            total += b.width * per_channel[f"{p}.conv2"]
            total += n * ho * wo * b.out_channels * b.width  # conv3
        if b.stride != 1 or b.in_channels != b.out_channels:
            total += n * ho * wo * b.out_channels * b.in_channels  # downsample 1x1
        h, w = ho, wo
    total += n * spec.blocks[-1].out_channels * 1000  # fc
    return per_channel, total


def conv3x3_macs_per_channel(spec: BackboneSpec, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs per output channel of each 3x3 conv at `input_shape` (NxCxHxW); a branch of `c`
    channels costs `c` times this, whatever its dilation (padding keeps the output size)."""
    return _walk(spec, input_shape)[0]


def backbone_macs(spec: BackboneSpec, input_shape: Sequence[int]) -> int:
    """MACs of the whole torchvision network (stem, blocks, downsample, fc) at `input_shape`."""
    return _walk(spec, input_shape)[1]
