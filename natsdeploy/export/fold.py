"""A deployable, backend-neutral form of a (transformed) ResNet trunk, and the rewrites on it.

`fold_trunk` reads a torchvision-compatible ResNet module and returns a `Trunk`: convs with
BatchNorm folded into weight and bias (per branch for transformed convs), ReLU attached to the
conv (per branch) that feeds it, and every permutation already folded into weights (the module
built by `build_backbone` carries it there). The rewrites (`merge_same_dilation`,
`order_branches`) return new trunks that compute the same function; the ONNX writer only emits.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

__all__ = ["ConvOp", "SplitConv", "Block", "Trunk", "fold_trunk", "merge_same_dilation", "order_branches", "rewrite"]


@dataclass(frozen=True)
class ConvOp:
    """A conv with folded bias and optional fused ReLU."""

    name: str
    weight: np.ndarray  # [C_out, C_in / groups, kh, kw], float32
    bias: np.ndarray  # [C_out], float32
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    relu: bool = False

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1] * self.groups)

    @property
    def macs_per_pixel(self) -> int:
        return int(np.prod(self.weight.shape))


@dataclass(frozen=True)
class SplitConv:
    """A transformed conv: branches on the same input (grouped: on consecutive input slices), concatenated."""

    name: str
    branches: tuple[ConvOp, ...]
    grouped: bool = False

    @property
    def out_channels(self) -> int:
        return sum(b.out_channels for b in self.branches)

    @property
    def relu(self) -> bool:
        return all(b.relu for b in self.branches)


Conv = ConvOp | SplitConv


@dataclass(frozen=True)
class Block:
    """A residual block: `path` convs in order, then add `downsample(x)` (or x) and ReLU."""

    name: str
    path: tuple[Conv, ...]
    downsample: ConvOp | None = None


@dataclass(frozen=True)
class Trunk:
    stem: ConvOp
    blocks: tuple[Block, ...]
    fc_weight: np.ndarray
    fc_bias: np.ndarray
    stage_ends: dict[str, str] = field(default_factory=dict)
    """Output name (c2..c5) -> name of the block that produces it."""


# -- folding -----------------------------------------------------------------------------------
def _bn_scale_shift(bn) -> tuple[np.ndarray, np.ndarray]:
    g = bn.weight.detach().double().cpu().numpy()
    b = bn.bias.detach().double().cpu().numpy()
    m = bn.running_mean.detach().double().cpu().numpy()
    v = bn.running_var.detach().double().cpu().numpy()
    scale = g / np.sqrt(v + bn.eps)
    return scale, b - m * scale


def _fold(name: str, conv, scale: np.ndarray, shift: np.ndarray, relu: bool) -> ConvOp:
    w = conv.weight.detach().double().cpu().numpy() * scale[:, None, None, None]
    bias = shift
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double().cpu().numpy() * scale
    return ConvOp(name=name, weight=w.astype(np.float32), bias=bias.astype(np.float32),
                  stride=int(conv.stride[0]), padding=tuple(int(p) for p in conv.padding),
                  dilation=tuple(int(d) for d in conv.dilation), groups=int(conv.groups), relu=relu)


def _fold_any(name: str, conv, bn, relu: bool) -> Conv:
    from natsdeploy.models.mixed_conv import MixedDilationConv

    scale, shift = _bn_scale_shift(bn)
    if not isinstance(conv, MixedDilationConv):
        return _fold(name, conv, scale, shift, relu)
    branches, o = [], 0
    for i, c in enumerate(conv.branches):
        n = c.out_channels
        branches.append(_fold(f"{name}/b{i}", c, scale[o:o + n], shift[o:o + n], relu))
        o += n
    return SplitConv(name=name, branches=tuple(branches), grouped=conv.groups > 1)


def fold_trunk(model) -> Trunk:
    """Fold a torchvision-compatible ResNet (eval-mode BN) into a `Trunk`."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    stem = _fold_any("conv1", model.conv1, model.bn1, relu=True)
    blocks, ends = [], {}
    for li in range(1, 5):
        layer = getattr(model, f"layer{li}")
        for bi, blk in enumerate(layer):
            p = f"layer{li}.{bi}"
            if isinstance(blk, Bottleneck):
                path = (_fold_any(f"{p}.conv1", blk.conv1, blk.bn1, True),
                        _fold_any(f"{p}.conv2", blk.conv2, blk.bn2, True),
                        _fold_any(f"{p}.conv3", blk.conv3, blk.bn3, False))
            elif isinstance(blk, BasicBlock):
                path = (_fold_any(f"{p}.conv1", blk.conv1, blk.bn1, True),
                        _fold_any(f"{p}.conv2", blk.conv2, blk.bn2, False))
            else:
                raise TypeError(f"{p}: unsupported block type {type(blk).__name__}")
            ds = None
            if blk.downsample is not None:
                ds = _fold_any(f"{p}.downsample", blk.downsample[0], blk.downsample[1], False)
            blocks.append(Block(name=p, path=path, downsample=ds))
        ends[f"c{li + 1}"] = blocks[-1].name
    fc_w = model.fc.weight.detach().float().cpu().numpy()
    fc_b = model.fc.bias.detach().float().cpu().numpy()
    return Trunk(stem=stem, blocks=tuple(blocks), fc_weight=fc_w, fc_bias=fc_b, stage_ends=ends)


# -- rewrites --------------------------------------------------------------------------------
def _concat_ops(name: str, ops: list[ConvOp], grouped: bool) -> ConvOp:
    """One conv for neighbouring same-dilation branches (grouped: their conv groups add up)."""
    first = ops[0]
    groups = sum(o.groups for o in ops) if grouped else first.groups
    return replace(first, name=name, weight=np.concatenate([o.weight for o in ops]),
                   bias=np.concatenate([o.bias for o in ops]), groups=groups)


def _apply_channel_order(split: SplitConv, order: list[int], nxt: Conv) -> tuple[SplitConv, Conv]:
    """Reorder branches to `order`; the consumer's input channels follow (no Gather in the graph)."""
    offsets = np.cumsum([0] + [b.out_channels for b in split.branches])
    cols = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in order])
    new_split = replace(split, branches=tuple(split.branches[i] for i in order))
    if isinstance(nxt, SplitConv):
        new_next = replace(nxt, branches=tuple(replace(b, weight=np.ascontiguousarray(b.weight[:, cols]))
                                               for b in nxt.branches))
        return new_split, new_next
    return new_split, replace(nxt, weight=np.ascontiguousarray(nxt.weight[:, cols]))


def _rename(split: SplitConv) -> SplitConv:
    return replace(split, branches=tuple(replace(b, name=f"{split.name}/b{i}") for i, b in enumerate(split.branches)))


def _merge_neighbours(split: SplitConv) -> SplitConv:
    runs: list[list[ConvOp]] = []
    for b in split.branches:
        if runs and runs[-1][-1].dilation == b.dilation:
            runs[-1].append(b)
        else:
            runs.append([b])
    return _rename(replace(split, branches=tuple(_concat_ops(r[0].name, r, split.grouped) if len(r) > 1 else r[0] for r in runs)))


def _map_splits(trunk: Trunk, fn) -> Trunk:
    blocks = []
    for blk in trunk.blocks:
        path = list(blk.path)
        for i, op in enumerate(path):
            if isinstance(op, SplitConv):
                nxt = path[i + 1] if i + 1 < len(path) else None
                if isinstance(nxt, SplitConv) and nxt.grouped:
                    nxt = None  # a grouped consumer's input order is tied to its groups
                path[i], new_next = fn(op, nxt)
                if new_next is not None:
                    path[i + 1] = new_next
        blocks.append(replace(blk, path=tuple(path)))
    return replace(trunk, blocks=tuple(blocks))


def merge_same_dilation(trunk: Trunk, *, any_order: bool = True) -> Trunk:
    """Merge branches that share a dilation into one conv.

    Neighbours always merge. With `any_order`, branches of a conv whose output feeds another conv
    (not the residual add) are first grouped by dilation, first appearance order, with the consumer's
    input channels reordered to match; grouped convs only merge neighbours.
    """

    def fn(split: SplitConv, nxt: Conv | None):
        if any_order and nxt is not None and not split.grouped:
            seen: list[tuple[int, int]] = []
            for b in split.branches:
                if b.dilation not in seen:
                    seen.append(b.dilation)
            order = [i for d in seen for i, b in enumerate(split.branches) if b.dilation == d]
            if order != list(range(len(order))):
                split, nxt = _apply_channel_order(split, order, nxt)
        return _merge_neighbours(split), nxt

    return _map_splits(trunk, fn)


def order_branches(trunk: Trunk, *, key: Literal["aligned_first", "wide_first"], block: int = 16) -> Trunk:
    """Reorder branches (consumer follows) so block-aligned / wide branches come first."""

    def rank(b: ConvOp) -> tuple:
        if key == "aligned_first":
            return (b.out_channels % block != 0, -b.out_channels)
        return (-b.out_channels,)

    def fn(split: SplitConv, nxt: Conv | None):
        if nxt is None or split.grouped:
            return split, nxt
        order = sorted(range(len(split.branches)), key=lambda i: (rank(split.branches[i]), i))
        if order == list(range(len(order))):
            return split, nxt
        new_split, new_next = _apply_channel_order(split, order, nxt)
        return _rename(new_split), new_next

    return _map_splits(trunk, fn)


def iter_splits(trunk: Trunk):
    for blk in trunk.blocks:
        for op in blk.path:
            if isinstance(op, SplitConv):
                yield op


Form = Literal["branches"]


def rewrite(trunk: Trunk, *, merge: bool = True) -> Trunk:
    """The exporter's graph rewrites (each preserves the function): merge same-dilation branches."""
    return merge_same_dilation(trunk, any_order=True) if merge else trunk
