"""The ``function`` form: each multi-branch transformed conv as ONE node, `natsdeploy.MixedDilationConv`.

Why: a runtime plugin can then run a transformed conv as one kernel (the design card's "merge the
branches into one plugin"); TensorRT parses ONNX model-local functions since 9.0 and, since 10.7,
uses a registered plugin of the same name instead of the function's body.

What: the node takes X, W and B, where W [C_out, C_in / G, kh, kw] and B [C_out] are the
transformed conv's weights (BatchNorm folded, branches concatenated in output order; graph
initializers, so parameters are counted once and a plugin gets them as constant inputs). Its
model-local function body is the ``branches`` form: `Split` of W and B by branch width (and of X
by branch input width for a grouped conv), one `Conv` per branch with its dilation and padding,
`Relu` per branch where the branches form has it, `Concat` on channels. The node's attributes
describe the same conv for a plugin:

- ``widths``: output channels per branch, in output order; ``dilations`` and ``pads``: per branch,
  flattened as [dh_0, dw_0, dh_1, dw_1, ...] (pads symmetric: top = bottom, left = right);
- ``kernel_shape`` [kh, kw], ``strides`` [s, s], ``group`` (the whole conv's groups G; branch b has
  G * widths[b] / C_out of them and reads the matching slice of X), ``relu`` (0 or 1).

Each node has its own function, and TensorRT tells them apart only by name: its ONNX parser keys
model-local functions by the node's op type, ignoring domain and ``overload`` (measured with
TensorRT-RTX 1.7: with one name every node got the first conv's body; a domain per conv or a
function that takes its body as a graph attribute, through `If` and an attribute reference, fails the
same way or is rejected). So each node's op type is ``MixedDilationConv.<conv name>`` (`op_type`), in
domain `natsdeploy`, and names its own function; every one starts with ``MixedDilationConv.``
(`is_call`). Functions come in graph order, so the bytes are deterministic. A transformed conv with a
single branch (one dilation after `merge_same_dilation`) stays a plain `Conv`. ONNX Runtime,
`onnx.inliner` and TensorRT's parser all read the file as written.

Binding a plugin: TensorRT (>= 10.7) uses a registered plugin instead of a local function of the
same name, looked up by the node's op type (and optional ``plugin_version`` / ``plugin_namespace``
node attributes). Either write ``plugin_model(model)`` (every call becomes op type
``MixedDilationConv`` with the same inputs and attributes, functions dropped) and register one
plugin creator named ``MixedDilationConv``; or register the same creator under each op type that
`plugin_op_types(model)` lists. The plugin reads X, W, B and the attributes above.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from natsdeploy.export.fold import Block, SplitConv
from natsdeploy.export.graph import GraphBuilder, conv_attributes, emit_conv, emit_residual

__all__ = ["DOMAIN", "OP_TYPE", "ATTRIBUTES", "op_type", "is_call", "plugin_op_types", "plugin_model",
           "node_attributes", "function_proto", "emit_split", "emit_block"]

DOMAIN = "natsdeploy"
OP_TYPE = "MixedDilationConv"
ATTRIBUTES = ("dilations", "group", "kernel_shape", "pads", "relu", "strides", "widths")


def op_type(conv_name: str) -> str:
    """The op type (and function name) of `conv_name`'s node: unique, so TensorRT finds its own body."""
    return f"{OP_TYPE}.{conv_name}"


def is_call(node) -> bool:
    """True for a node (or function) of this form: domain `natsdeploy`, op type ``MixedDilationConv.*``."""
    name = getattr(node, "op_type", None) or getattr(node, "name", "")
    return node.domain == DOMAIN and name.startswith(OP_TYPE + ".")


def plugin_op_types(model) -> list[str]:
    """The op types a plugin creator must answer to in `model` as written, in graph order."""
    return [n.op_type for n in model.graph.node if is_call(n)]


def plugin_model(model):
    """A copy of `model` for a registered ``MixedDilationConv`` plugin: every call is op type
    `OP_TYPE` (inputs and attributes unchanged) and the model-local functions are gone."""
    out = type(model)()
    out.CopyFrom(model)
    for n in out.graph.node:
        if is_call(n):
            n.op_type = OP_TYPE
    del out.functions[:]
    return out


def _check(split: SplitConv) -> None:
    first = split.branches[0]
    for b in split.branches:
        if (b.stride, b.weight.shape[1:], b.relu) != (first.stride, first.weight.shape[1:], first.relu):
            raise ValueError(f"{split.name}: branches differ in stride, kernel or ReLU; expected one conv's branches")


def node_attributes(split: SplitConv) -> dict[str, Any]:
    """The attributes a `MixedDilationConv` node carries for `split` (see the module docstring)."""
    _check(split)
    bs = split.branches
    groups = sum(b.groups for b in bs) if split.grouped else bs[0].groups
    return {"dilations": [int(d) for b in bs for d in b.dilation], "group": int(groups),
            "kernel_shape": [int(k) for k in bs[0].weight.shape[2:]],
            "pads": [int(p) for b in bs for p in b.padding], "relu": int(split.relu),
            "strides": [int(bs[0].stride)] * 2, "widths": [b.out_channels for b in bs]}


def function_proto(split: SplitConv, opset: int):
    """The model-local function for `split`: inputs X, W, B; output Y; body = the branches form."""
    from onnx import helper

    _check(split)
    name, bs = split.name, split.branches
    nodes = []

    def const(tensor: str, values: list[int]) -> str:
        nodes.append(helper.make_node("Constant", [], [tensor], name=f"{name}/{tensor}", value_ints=values))
        return tensor

    def split_of(x: str, sizes: list[int], axis: int) -> list[str]:
        outs = [f"{x}/split:{i}" for i in range(len(sizes))]
        nodes.append(helper.make_node("Split", [x, const(f"{x}.split_sizes", sizes)], outs, name=f"{name}/{x}/split",
                                      axis=axis))
        return outs

    xs = split_of("X", [b.in_channels for b in bs], 1) if split.grouped else ["X"] * len(bs)
    widths = [b.out_channels for b in bs]
    ws, bias = split_of("W", widths, 0), split_of("B", widths, 0)
    ys = []
    for i, b in enumerate(bs):
        y = f"{b.name}:out"
        nodes.append(helper.make_node("Conv", [xs[i], ws[i], bias[i]], [y], name=b.name, **conv_attributes(b)))
        if b.relu:
            nodes.append(helper.make_node("Relu", [y], [f"{b.name}:relu"], name=f"{b.name}/relu"))
            y = f"{b.name}:relu"
        ys.append(y)
    nodes.append(helper.make_node("Concat", ys, ["Y"], name=f"{name}/concat", axis=1))
    f = helper.make_function(DOMAIN, op_type(name), ["X", "W", "B"], ["Y"], nodes, [helper.make_opsetid("", opset)],
                             attributes=list(ATTRIBUTES),
                             doc_string="Parallel dilated convs on split weights, concatenated on channels; "
                                        "a runtime plugin may replace this body (see natsdeploy.export.function).")
    return f


def emit_split(g: GraphBuilder, x: str, split: SplitConv) -> str:
    """One `MixedDilationConv` node (and its function) for a multi-branch `split`; a plain conv otherwise."""
    if len(split.branches) == 1:
        return emit_conv(g, x, split)
    from onnx import helper

    attrs = node_attributes(split)
    w = g.init(f"{split.name}.weight", np.concatenate([b.weight for b in split.branches]))
    b = g.init(f"{split.name}.bias", np.concatenate([b.bias for b in split.branches]))
    g.functions.append(function_proto(split, g.opset))
    g.nodes.append(helper.make_node(op_type(split.name), [x, w, b], [f"{split.name}:out"], name=split.name,
                                    domain=DOMAIN, **attrs))
    return f"{split.name}:out"


def emit_block(g: GraphBuilder, x: str, blk: Block) -> str:
    """One residual block in the ``function`` form."""
    y = x
    for op in blk.path:
        y = emit_split(g, y, op) if isinstance(op, SplitConv) else g.conv(y, op)
    return emit_residual(g, x, y, blk)
