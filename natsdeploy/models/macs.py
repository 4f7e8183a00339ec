"""Multiply-accumulate counts of a backbone from its spec alone (no torch).

Alignment diagnostics need the MACs of each 3x3 conv (and of the whole network, for a share)
where no model is built: `natsdeploy check` before counting, the export report, library users.
The convention is that of `natsdeploy.verify.count`: Conv and Linear MACs only; a transformed
conv costs what the baseline conv costs, and a branch costs its share of output channels.
"""

from __future__ import annotations

from collections.abc import Sequence

from natsdeploy.models.specs import BackboneSpec

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
    inplanes = 64
    for li, blocks in enumerate(spec.layers, start=1):
        planes = 64 * 2 ** (li - 1)
        for bi in range(blocks):
            stride = 2 if (li > 1 and bi == 0) else 1
            p = f"layer{li}.{bi}"
            ho, wo = _out(h, 3, stride, 1), _out(w, 3, stride, 1)
            out_planes = planes * spec.expansion
            if spec.block == "basic":
                per_channel[f"{p}.conv1"] = n * ho * wo * inplanes * 9
                per_channel[f"{p}.conv2"] = n * ho * wo * planes * 9
                total += planes * (per_channel[f"{p}.conv1"] + per_channel[f"{p}.conv2"])
            else:
                width = int(planes * (spec.width_per_group / 64.0)) * spec.groups
                per_channel[f"{p}.conv2"] = n * ho * wo * (width // spec.groups) * 9
                total += n * h * w * width * inplanes  # conv1, 1x1 at the block's input size
                total += width * per_channel[f"{p}.conv2"]
                total += n * ho * wo * out_planes * width  # conv3
            if stride != 1 or inplanes != out_planes:
                total += n * ho * wo * out_planes * inplanes  # downsample 1x1
            inplanes, h, w = out_planes, ho, wo
    total += n * inplanes * 1000  # fc
    return per_channel, total


def conv3x3_macs_per_channel(spec: BackboneSpec, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs per output channel of each 3x3 conv at `input_shape` (NxCxHxW); a branch of `c`
    channels costs `c` times this, whatever its dilation (padding keeps the output size)."""
    return _walk(spec, input_shape)[0]


def backbone_macs(spec: BackboneSpec, input_shape: Sequence[int]) -> int:
    """MACs of the whole torchvision network (stem, blocks, downsample, fc) at `input_shape`."""
    return _walk(spec, input_shape)[1]
