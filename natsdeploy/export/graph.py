"""A small ONNX graph builder shared by every export form, and the branch-form emitters.

`GraphBuilder` collects nodes, initializers and model-local functions in emission order (so the
serialised bytes are deterministic); the emitters below write the ``branches`` form of a
transformed conv and of a residual block. The other forms (``sum`` and the form dispatch in
`natsdeploy.export.onnx`, ``rows`` in `natsdeploy.export.rows`, ``function`` in
`natsdeploy.export.function`), export's autotune and the per-conv benchmarks build on these.
This module imports no other export form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from natsdeploy.export.fold import Block, ConvOp, SplitConv

__all__ = ["GraphBuilder", "conv_attributes", "branch_inputs", "emit_split", "emit_conv", "emit_residual", "emit_block"]


class GraphBuilder:
    """Nodes, initializers and local functions of one ONNX graph, in emission order.

    `hw` and `rows_only` are state of the ``rows`` form (static spatial size of the current block
    input; the transformed convs that take the rows form, None for all eligible); `opset` is the
    default-domain opset that model-local function bodies import.
    """

    def __init__(self, *, opset: int = 17) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.functions: list = []
        self.opset = int(opset)
        self.hw: tuple[int, int] | None = None
        self.rows_only: frozenset[str] | None = None
        self._names: set[str] = set()

    def init(self, name: str, array: np.ndarray) -> str:
        """Add an initializer (names are unique) and return its name."""
        from onnx import numpy_helper

        assert name not in self._names, name
        self._names.add(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name=name))
        return name

    def node(self, op: str, inputs: Sequence[str], output: str, name: str, **attrs: Any) -> str:
        """Add a one-output node and return its output name."""
        from onnx import helper

        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attrs))
        return output

    def split(self, x: str, sizes: Sequence[int], name: str) -> list[str]:
        """Channel `Split` of `x` into `sizes` (outputs ``{name}/split:i``, sizes as an initializer)."""
        from onnx import helper

        outs = [f"{name}/split:{i}" for i in range(len(sizes))]
        sizes_init = self.init(f"{name}.split_sizes", np.asarray(sizes, dtype=np.int64))
        self.nodes.append(helper.make_node("Split", [x, sizes_init], outs, name=f"{name}/split", axis=1))
        return outs

    def conv(self, x: str, op: ConvOp, *, out: str | None = None, weight: np.ndarray | None = None,
             bias: np.ndarray | None | bool = True, relu: bool | None = None, tag: str = "") -> str:
        """Emit `op` (optionally with another weight/bias; bias=False drops it) and its fused ReLU."""
        w = op.weight if weight is None else weight
        b = op.bias if bias is True else (None if bias is False else bias)
        name = op.name + tag
        inputs = [x, self.init(f"{name}.weight", w)]
        if b is not None:
            inputs.append(self.init(f"{name}.bias", b))
        y = self.node("Conv", inputs, f"{name}:out" if out is None else out, name, **conv_attributes(op, w))
        if op.relu if relu is None else relu:
            y = self.node("Relu", [y], f"{name}:relu", f"{name}/relu")
        return y

    def model(self, inputs: Sequence[tuple[str, Sequence[int | str]]], outputs: Sequence[str], *, name: str,
              opset: int | None = None, **model_kw: Any):
        """The collected graph as a float32 `ModelProto` (output types left to shape inference)."""
        from onnx import TensorProto, helper

        ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(dims)) for n, dims in inputs]
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        graph = helper.make_graph(self.nodes, name, ins, outs, initializer=self.inits)
        opsets = [helper.make_opsetid("", self.opset if opset is None else int(opset))]
        opsets += [helper.make_opsetid(d, 1) for d in sorted({f.domain for f in self.functions} - {""})]
        if self.functions:
            model_kw["functions"] = self.functions
        return helper.make_model(graph, opset_imports=opsets, **model_kw)


def conv_attributes(op: ConvOp, weight: np.ndarray | None = None) -> dict[str, Any]:
    """The ONNX `Conv` attributes of `op` (kernel from `weight`, default `op.weight`)."""
    w = op.weight if weight is None else weight
    return dict(kernel_shape=[int(w.shape[2]), int(w.shape[3])], strides=[op.stride, op.stride],
                pads=[op.padding[0], op.padding[1], op.padding[0], op.padding[1]],
                dilations=[op.dilation[0], op.dilation[1]], group=op.groups)


def branch_inputs(g: GraphBuilder, x: str, split: SplitConv) -> list[str]:
    """Each branch's input: `x` itself, or for a grouped conv its channel slice (one `Split`)."""
    if not split.grouped or len(split.branches) == 1:
        return [x] * len(split.branches)
    return g.split(x, [b.in_channels for b in split.branches], split.name)


def emit_split(g: GraphBuilder, x: str, split: SplitConv) -> str:
    """The ``branches`` form: one `Conv` (+`Relu`) per branch, one `Concat` on channels."""
    ys = [g.conv(xi, b) for xi, b in zip(branch_inputs(g, x, split), split.branches)]
    if len(ys) == 1:
        return ys[0]
    return g.node("Concat", ys, f"{split.name}:concat", f"{split.name}/concat", axis=1)


def emit_conv(g: GraphBuilder, x: str, op: ConvOp | SplitConv) -> str:
    """A plain conv, or a transformed conv in the ``branches`` form."""
    return emit_split(g, x, op) if isinstance(op, SplitConv) else g.conv(x, op)


def emit_residual(g: GraphBuilder, x: str, y: str, blk: Block) -> str:
    """The end of a residual block: y + downsample(x) (or x), then `Relu`."""
    idn = g.conv(x, blk.downsample) if blk.downsample is not None else x
    s = g.node("Add", [y, idn], f"{blk.name}/add:out", f"{blk.name}/add")
    return g.node("Relu", [s], f"{blk.name}:out", f"{blk.name}/relu")


def emit_block(g: GraphBuilder, x: str, blk: Block) -> str:
    """One residual block in the ``branches`` form."""
    y = x
    for op in blk.path:
        y = emit_conv(g, y, op)
    return emit_residual(g, x, y, blk)
