"""The ``rows`` form of a transformed conv: row-decomposed remainders shifted and added by Col2Im.

Why: ONNX Runtime's CPU convs run in NCHWc blocks of 16 channels. Every branch conv's outputs are
zero-padded up to a multiple of 16 and every branch re-reads the whole input, so a transformed conv
with narrow, odd-width branches (IC-Conv patterns) costs up to 2.5x the plain conv
(benchmarks/ort_forms/results.md, "rows_col2im"). This form has exactly the Conv parameters and
MACs of the plain conv (every output channel keeps its 9 x C weights) and avoids most of that cost.

What, for a non-grouped `SplitConv` on X (C channels), branch b = (W_b [w_b, C, 3, 3], B_b, (dh, dw)):

1. direct part: the first a_b = 16 * floor(w_b / 16) channels stay a dilated `Conv` (+ `Relu`);
2. remainders (the other r_b < 16 channels), grouped by dw: one `Conv` per group with kernel [1, 3],
   dilations [1, dw], pads [0, dw, 0, dw] and 3 outputs per channel (the kernel rows, flipped), no
   bias; `Split` per branch, `Reshape` to [N, 3 r_b, H*W], `Col2Im(block [3, 1], dilations [dh, 1],
   pads [dh, 0, dh, 0])` adds the three rows at their vertical offsets: exactly the dilated 3x3 conv;
3. the consumer: a 1x1 conv that feeds the residual add (bottleneck conv3) is split by input
   columns into Conv3_A (direct parts, with bias) and Conv3_R (remainders), added as
   Add(Add(shortcut, Conv3_A), Conv3_R) so ORT fuses both Adds and the block's Relu into the convs;
   another conv consumer (basic conv1 -> conv2) takes Concat(direct..., remainders) with the
   channel reorder folded into its input channels; an output that feeds the residual add directly
   (basic conv2) is concatenated back in the original channel order;
4. stride 2: vertical phase split. Even tap rows come from a stride-2 rows conv on X; for odd dh the
   two odd rows come from a stride-2 rows conv on X[:, :, 1:] (padded one row at the bottom, so it
   has exactly the output's rows for any H) and are added by a [2, 1] Col2Im.

Falls back to the ``branches`` form (byte-identical nodes) for grouped convs (ResNeXt), for convs
that are not 3x3 with padding = dilation and stride 1 or 2, and where no branch has a remainder.

Dynamic shapes: Col2Im's image shape comes from `Shape` of the first rows conv (start 2, end 4); as
ONNX shape inference cannot see through it, a zero-channel `Slice` of that conv joins the remainders'
`Concat`, which gives later nodes (and MAC counting) their full shapes again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from natsdeploy.export.fold import Block, Conv, ConvOp, SplitConv
from natsdeploy.export.graph import GraphBuilder, emit_conv, emit_residual

__all__ = ["MIN_OPSET", "BLOCK", "opset_message", "start_hw", "plan_split", "emit_block"]

MIN_OPSET = 18  # Col2Im
BLOCK = 16  # ORT's NCHWc block on AVX-512 (MlasNchwcGetBlockSize)
_END = int(np.iinfo(np.int64).max)


def opset_message(opset: int) -> str:
    """The one-line error for an opset without Col2Im."""
    return f"--opset: got {opset}, expected 18 or newer for form 'rows' (Col2Im)"


# -- shapes ------------------------------------------------------------------------------------
HW = tuple[int, int] | None  # static spatial size, None for dynamic graphs


def _out_hw(hw: HW, op: Conv) -> HW:
    """Spatial size after `op` (None stays None)."""
    if hw is None:
        return None
    c = op.branches[0] if isinstance(op, SplitConv) else op
    k = c.weight.shape[2:]
    return tuple((n + 2 * c.padding[j] - c.dilation[j] * (k[j] - 1) - 1) // c.stride + 1
                 for j, n in enumerate(hw))  # type: ignore[return-value]


def start_hw(input_shape: Sequence[int], stem: ConvOp, dynamic: bool) -> HW:
    """Spatial size after the stem conv and the 3x3/2 max pool (None if dynamic)."""
    if dynamic:
        return None
    h, w = _out_hw((int(input_shape[2]), int(input_shape[3])), stem)  # type: ignore[misc]
    return (h - 1) // 2 + 1, (w - 1) // 2 + 1


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """Part of one branch: a `ConvOp` holding its channels, and where they sit in the split's output."""

    op: ConvOp
    cols: np.ndarray
    branch: int


@dataclass(frozen=True)
class Plan:
    direct: tuple[Piece, ...]  # branch order
    rest: tuple[Piece, ...]  # by dw ascending, then branch order
    stride: int
    relu: bool


def plan_split(split: SplitConv, block: int = BLOCK) -> Plan | None:
    """Direct parts and remainders of `split`, or None where the form falls back to ``branches``."""
    bs = split.branches
    first = bs[0]
    if split.grouped or first.stride not in (1, 2):
        return None
    for b in bs:
        if (b.weight.shape[2:] != (3, 3) or b.groups != 1 or tuple(b.padding) != tuple(b.dilation)
                or b.stride != first.stride or b.relu != first.relu):
            return None
    direct, rest, o = [], [], 0
    for i, b in enumerate(bs):
        w = b.out_channels
        a = block * (w // block)
        cols = np.arange(o, o + w)
        o += w
        if a == w:
            direct.append(Piece(b, cols, i))
            continue
        if a:
            direct.append(Piece(replace(b, weight=b.weight[:a], bias=b.bias[:a]), cols[:a], i))
        rest.append(Piece(replace(b, name=f"{b.name}/rest", weight=b.weight[a:], bias=b.bias[a:]), cols[a:], i))
    if not rest:
        return None
    rest.sort(key=lambda p: p.op.dilation[1])  # stable: branch order within a dw group
    return Plan(tuple(direct), tuple(rest), first.stride, first.relu)


# -- small emitters ----------------------------------------------------------------------------
def _i64(g: GraphBuilder, name: str, values: Sequence[int]) -> str:
    return g.init(name, np.asarray(values, dtype=np.int64))


def _split4(g: GraphBuilder, z: str, sizes: list[int], name: str) -> list[str]:
    """Channel `Split` of a conv output (none for one piece)."""
    return [z] if len(sizes) == 1 else g.split(z, sizes, name)


def _rows_weight(w: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """[r, C, 3, 3] -> [r * len(rows), C, 1, 3]: for each channel, the kernel rows `rows` in order."""
    return w[:, :, list(rows), :].transpose(0, 2, 1, 3).reshape(-1, w.shape[1], 1, 3)


def _rows_conv(g: GraphBuilder, x: str, name: str, items: list[tuple[Piece, list[int]]], dw: int, stride: int,
               pad_bottom: int) -> tuple[str, list[str]]:
    """One bias-free [1, 3] conv giving the kernel rows of several pieces; its output and one tensor per piece."""
    w = np.concatenate([_rows_weight(p.op.weight, rows) for p, rows in items])
    z = g.node("Conv", [x, g.init(f"{name}.weight", w)], f"{name}:out", name, kernel_shape=[1, 3],
               strides=[stride, stride], pads=[0, dw, pad_bottom, dw], dilations=[1, dw], group=1)
    return z, _split4(g, z, [len(rows) * p.op.out_channels for p, rows in items], name)


def _col2im(g: GraphBuilder, z: str, k: int, r: int, img: str, blk: str, dil: int, pads: tuple[int, int], name: str) -> str:
    """Vertical shift-and-add of the k rows per channel in `z` [N, k r, H, W] -> [N, r, H, W]."""
    z3 = g.node("Reshape", [z, _i64(g, f"{name}.shape", [0, k * r, -1])], f"{name}/reshape:out", f"{name}/reshape")
    return g.node("Col2Im", [z3, img, blk], f"{name}/col2im:out", f"{name}/col2im",
                  dilations=[dil, 1], pads=[pads[0], 0, pads[1], 0], strides=[1, 1])


def _emit_rest(g: GraphBuilder, x: str, split: SplitConv, plan: Plan, hw: HW) -> tuple[list[str], str]:
    """The remainders' conv results without bias (one [N, r_b, Ho, Wo] tensor per piece, plan order),
    and the first rows conv's output (its shape is the output's)."""
    name = split.name
    xo = None
    if plan.stride == 2 and any(p.op.dilation[0] % 2 for p in plan.rest):
        xo = g.node("Slice", [x, _i64(g, f"{name}/odd.starts", [1]), _i64(g, f"{name}/odd.ends", [_END]),
                              _i64(g, f"{name}/odd.axes", [2])], f"{name}/odd:out", f"{name}/odd")
    blk3 = _i64(g, f"{name}.block3", [3, 1])
    blk2 = _i64(g, f"{name}.block2", [2, 1]) if xo is not None else ""
    first = img = ""
    res: dict[int, str] = {}
    for gi, dw in enumerate(sorted({p.op.dilation[1] for p in plan.rest})):
        grp = [(j, p) for j, p in enumerate(plan.rest) if p.op.dilation[1] == dw]
        odd_dh = [(j, p) for j, p in grp if plan.stride == 2 and p.op.dilation[0] % 2]
        odd_j = {j for j, _ in odd_dh}
        even = [(p, [1] if j in odd_j else [2, 1, 0]) for j, p in grp]
        z, ze = _rows_conv(g, x, f"{name}/rows{gi}", even, dw, plan.stride, 0)
        zo: list[str] = []
        if odd_dh:
            _, zo = _rows_conv(g, xo, f"{name}/rows{gi}o", [(p, [2, 0]) for _, p in odd_dh], dw, 2, 1)
        if not first:
            first = z
            img = (_i64(g, f"{name}.image_shape", list(hw)) if hw is not None else
                   g.node("Shape", [z], f"{name}/image_shape:out", f"{name}/image_shape", start=2, end=4))
        odd_of = {j: t for (j, _), t in zip(odd_dh, zo)}
        for (j, p), t in zip(grp, ze):
            dh, r, pn = p.op.dilation[0], p.op.out_channels, p.op.name
            if plan.stride == 1:
                res[j] = _col2im(g, t, 3, r, img, blk3, dh, (dh, dh), pn)
            elif j not in odd_of:
                res[j] = _col2im(g, t, 3, r, img, blk3, dh // 2, (dh // 2, dh // 2), pn)
            else:
                o = _col2im(g, odd_of[j], 2, r, img, blk2, dh, ((dh - 1) // 2, (dh + 1) // 2), pn)
                res[j] = g.node("Add", [t, o], f"{pn}/rows:out", f"{pn}/rows")
    return [res[j] for j in range(len(plan.rest))], first


def _anchor(g: GraphBuilder, z: str, name: str, hw: HW) -> list[str]:
    """Dynamic graphs only: a [N, 0, Ho, Wo] slice of `z` that restores shapes through a Concat."""
    if hw is not None:
        return []
    zero = _i64(g, f"{name}/anchor.zero", [0])
    return [g.node("Slice", [z, zero, zero, _i64(g, f"{name}/anchor.axes", [1])], f"{name}/anchor:out",
                   f"{name}/anchor")]


def _concat(g: GraphBuilder, ys: list[str], name: str) -> str:
    return ys[0] if len(ys) == 1 else g.node("Concat", ys, f"{name}:out", name, axis=1)


def _bias_relu(g: GraphBuilder, y: str, bias: np.ndarray, relu: bool, name: str) -> str:
    y = g.node("Add", [y, g.init(f"{name}.bias", bias.reshape(1, -1, 1, 1))], f"{name}/bias:out", f"{name}/bias")
    return g.node("Relu", [y], f"{name}/relu:out", f"{name}/relu") if relu else y


def _remainders(g: GraphBuilder, x: str, split: SplitConv, plan: Plan, hw: HW) -> str:
    """All remainders, plan order: Concat -> Add bias -> Relu."""
    ys, z = _emit_rest(g, x, split, plan, hw)
    cat = _concat(g, ys + _anchor(g, z, f"{split.name}/rest", hw), f"{split.name}/rest/concat")
    return _bias_relu(g, cat, np.concatenate([p.op.bias for p in plan.rest]), plan.relu, f"{split.name}/rest")


def _cols(pieces: Sequence[Piece]) -> np.ndarray:
    return np.concatenate([p.cols for p in pieces])


# -- the three consumers -----------------------------------------------------------------------
def emit_into_pointwise(g: GraphBuilder, x: str, split: SplitConv, plan: Plan, consumer: ConvOp, shortcut: str,
                        hw: HW) -> str:
    """Bottleneck conv2 -> conv3 -> + shortcut: Add(Add(shortcut, Conv3_A), Conv3_R), before the block Relu."""
    acc = shortcut
    if plan.direct:
        a = _concat(g, [g.conv(x, p.op) for p in plan.direct], f"{split.name}/direct/concat")
        ya = g.conv(a, consumer, weight=consumer.weight[:, _cols(plan.direct)], relu=False, tag="/A")
        acc = g.node("Add", [acc, ya], f"{consumer.name}/add_a:out", f"{consumer.name}/add_a")
    r = _remainders(g, x, split, plan, hw)
    yr = g.conv(r, consumer, weight=consumer.weight[:, _cols(plan.rest)], bias=not plan.direct, relu=False, tag="/R")
    return g.node("Add", [acc, yr], f"{consumer.name}/add_r:out", f"{consumer.name}/add_r")


def emit_reordered(g: GraphBuilder, x: str, split: SplitConv, plan: Plan, hw: HW) -> tuple[str, np.ndarray]:
    """Concat(direct..., remainders) and its channel order (original channel of each output channel)."""
    ys = [g.conv(x, p.op) for p in plan.direct] + [_remainders(g, x, split, plan, hw)]
    return _concat(g, ys, f"{split.name}/concat"), _cols(plan.direct + plan.rest)


def emit_ordered(g: GraphBuilder, x: str, split: SplitConv, plan: Plan, hw: HW) -> str:
    """The split's output in its original channel order (for an output that feeds the residual add):
    per-remainder bias (+Relu), then one Concat interleaving direct parts and remainders."""
    ys, z = _emit_rest(g, x, split, plan, hw)
    rest = {p.branch: _bias_relu(g, y, p.op.bias, plan.relu, p.op.name) for p, y in zip(plan.rest, ys)}
    direct = {p.branch: g.conv(x, p.op) for p in plan.direct}
    out = [t for i in range(len(split.branches)) for t in (direct.get(i), rest.get(i)) if t is not None]
    return _concat(g, out + _anchor(g, z, split.name, hw), f"{split.name}/concat")


def permute_inputs(op: Conv, order: np.ndarray) -> Conv:
    """`op` reading its input channels in `order` (channel j of the new input = channel order[j] of the old)."""
    if isinstance(op, SplitConv):
        return replace(op, branches=tuple(replace(b, weight=np.ascontiguousarray(b.weight[:, order]))
                                          for b in op.branches))
    return replace(op, weight=np.ascontiguousarray(op.weight[:, order]))


def _permutable(op: Conv | None) -> bool:
    if isinstance(op, SplitConv):
        return not op.grouped
    return op is not None and op.groups == 1


def _pointwise_tail(op: Conv | None, last: bool) -> bool:
    return (last and isinstance(op, ConvOp) and op.weight.shape[2:] == (1, 1) and op.groups == 1
            and not op.relu)


# -- a block -----------------------------------------------------------------------------------
def emit_block(g: GraphBuilder, x: str, blk: Block) -> str:
    """One residual block in the ``rows`` form (reads and advances `g.hw`)."""
    path = list(blk.path)
    hw = g.hw
    y = x
    for i, op in enumerate(path):
        hw_out = _out_hw(hw, op)
        nxt = path[i + 1] if i + 1 < len(path) else None
        chosen = isinstance(op, SplitConv) and (g.rows_only is None or op.name in g.rows_only)
        plan = plan_split(op) if chosen else None
        if plan is None:
            y = emit_conv(g, y, op)
        elif _pointwise_tail(nxt, i + 2 == len(path)):
            idn = g.conv(x, blk.downsample) if blk.downsample is not None else x
            s = emit_into_pointwise(g, y, op, plan, nxt, idn, hw_out)  # type: ignore[arg-type]
            g.hw = _out_hw(hw_out, nxt)  # type: ignore[arg-type]
            return g.node("Relu", [s], f"{blk.name}:out", f"{blk.name}/relu")
        elif nxt is not None and _permutable(nxt):
            y, order = emit_reordered(g, y, op, plan, hw_out)
            path[i + 1] = permute_inputs(nxt, order)
        else:
            y = emit_ordered(g, y, op, plan, hw_out)
        hw = hw_out
    g.hw = hw
    return emit_residual(g, x, y, blk)
