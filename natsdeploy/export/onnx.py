"""Write a folded `Trunk` as an ONNX graph (deterministic bytes, checked, atomically written).

Forms of a transformed conv:
- ``branches``: parallel `Conv` nodes on the same input (grouped convs: on a `Split` of it), each
  with its own dilation/padding and fused ReLU, feeding one `Concat` on channels.
- ``sum``: for a transformed conv whose output feeds a 1x1 conv (bottleneck conv2 -> conv3, basic
  conv1 -> conv2 is 3x3 and keeps ``branches``), the Concat is removed: each branch feeds its own
  column slice of the consumer conv and the partial results are added,
  conv(concat(y_b)) = sum_b conv[:, slice_b](y_b). Same parameters and MACs.
- ``rows``: each branch's first 16*floor(w/16) channels stay a direct conv; the remainders become one
  [1, 3] "rows" conv per horizontal dilation and a Col2Im shift-and-add (opset 18 or newer). Same
  parameters and MACs; see `natsdeploy.export.rows`.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from natsdeploy.export.fold import Block, ConvOp, SplitConv, Trunk

__all__ = ["Form", "FEATURE_OUTPUTS", "trunk_to_onnx", "save_onnx", "check_onnx"]

Form = Literal["branches", "sum", "rows"]
FORMS: tuple[str, ...] = ("branches", "sum", "rows")
FEATURE_OUTPUTS = ("c2", "c3", "c4", "c5")
INPUT_NAME = "images"


class _Graph:
    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._names: set[str] = set()
        self.hw: tuple[int, int] | None = None  # static spatial size of the current block input ("rows" form)
        self.rows_only: frozenset[str] | None = None  # "rows" form: only these splits (None: all eligible)

    def init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        assert name not in self._names, name
        self._names.add(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name=name))
        return name

    def node(self, op: str, inputs: Sequence[str], output: str, name: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attrs))
        return output

    def conv(self, x: str, op: ConvOp, *, out: str | None = None, weight: np.ndarray | None = None,
             bias: np.ndarray | None | bool = True, relu: bool | None = None, tag: str = "") -> str:
        """Emit `op` (optionally with another weight/bias; bias=False drops it)."""
        w = op.weight if weight is None else weight
        b = op.bias if bias is True else (None if bias is False else bias)
        name = op.name + tag
        inputs = [x, self.init(f"{name}.weight", w)]
        if b is not None:
            inputs.append(self.init(f"{name}.bias", b))
        kh, kw = int(w.shape[2]), int(w.shape[3])
        y = self.node("Conv", inputs, f"{name}:out" if out is None else out, name,
                      kernel_shape=[kh, kw], strides=[op.stride, op.stride],
                      pads=[op.padding[0], op.padding[1], op.padding[0], op.padding[1]],
                      dilations=[op.dilation[0], op.dilation[1]], group=op.groups)
        if op.relu if relu is None else relu:
            y = self.node("Relu", [y], f"{name}:relu", f"{name}/relu")
        return y


def _branch_inputs(g: _Graph, x: str, split: SplitConv) -> list[str]:
    if not split.grouped or len(split.branches) == 1:
        return [x] * len(split.branches)
    from onnx import helper

    sizes = np.array([b.in_channels for b in split.branches], dtype=np.int64)
    outs = [f"{split.name}/split:{i}" for i in range(len(sizes))]
    g.nodes.append(helper.make_node("Split", [x, g.init(f"{split.name}.split_sizes", sizes)], outs,
                                    name=f"{split.name}/split", axis=1))
    return outs


def _emit_split(g: _Graph, x: str, split: SplitConv) -> str:
    ins = _branch_inputs(g, x, split)
    ys = [g.conv(xi, b) for xi, b in zip(ins, split.branches)]
    if len(ys) == 1:
        return ys[0]
    return g.node("Concat", ys, f"{split.name}:concat", f"{split.name}/concat", axis=1)


def _emit_split_sum(g: _Graph, x: str, split: SplitConv, consumer: ConvOp) -> str:
    """Branches feed column slices of the 1x1 `consumer`; partial products are added."""
    ins = _branch_inputs(g, x, split)
    acc, o = None, 0
    for i, (xi, b) in enumerate(zip(ins, split.branches)):
        yb = g.conv(xi, b)
        w = consumer.weight[:, o:o + b.out_channels]
        o += b.out_channels
        part = g.conv(yb, consumer, weight=w, bias=i == 0, relu=False, tag=f"/p{i}")
        acc = part if acc is None else g.node("Add", [acc, part], f"{consumer.name}/sum{i}:out", f"{consumer.name}/sum{i}")
    assert acc is not None
    if consumer.relu:
        acc = g.node("Relu", [acc], f"{consumer.name}:relu", f"{consumer.name}/relu")
    return acc


def _emit_block(g: _Graph, x: str, blk: Block, form: Form) -> str:
    if form == "rows":
        from natsdeploy.export import rows

        return rows.emit_block(g, x, blk)
    y = x
    path = list(blk.path)
    i = 0
    while i < len(path):
        op = path[i]
        if isinstance(op, SplitConv):
            nxt = path[i + 1] if i + 1 < len(path) else None
            if (form == "sum" and isinstance(nxt, ConvOp) and nxt.weight.shape[2:] == (1, 1)
                    and nxt.groups == 1 and len(op.branches) > 1):
                y = _emit_split_sum(g, y, op, nxt)
                i += 2
                continue
            y = _emit_split(g, y, op)
        else:
            y = g.conv(y, op)
        i += 1
    idn = g.conv(x, blk.downsample) if blk.downsample is not None else x
    s = g.node("Add", [y, idn], f"{blk.name}/add:out", f"{blk.name}/add")
    return g.node("Relu", [s], f"{blk.name}:out", f"{blk.name}/relu")


def trunk_to_onnx(trunk: Trunk, *, input_shape: Sequence[int] = (1, 3, 800, 1216), dynamic: bool = False,
                  opset: int = 17, form: Form = "branches", logits: bool = False,
                  graph_name: str = "natsdeploy", rows_only: Collection[str] | None = None) -> "onnx.ModelProto":  # noqa: F821
    """The trunk as an ONNX model: input `images`, outputs c2..c5 (and `logits` if asked).

    With ``form="rows"``, `rows_only` restricts the rows form to the named transformed convs; the
    others keep the branch form (how `natsdeploy.export.autotune` applies a per-conv choice).
    """
    import onnx
    from onnx import TensorProto, helper, shape_inference

    if form not in FORMS:
        raise ValueError(f"form: got {form!r}, expected one of {list(FORMS)}")
    if form == "rows":
        from natsdeploy.export import rows

        if opset < rows.MIN_OPSET:
            raise ValueError(rows.opset_message(opset))
    g = _Graph()
    g.rows_only = frozenset(rows_only) if rows_only is not None else None
    y = g.conv(INPUT_NAME, trunk.stem)
    y = g.node("MaxPool", [y], "maxpool:out", "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    if form == "rows":
        g.hw = rows.start_hw(input_shape, trunk.stem, dynamic)
    out_of = {v: k for k, v in trunk.stage_ends.items()}
    outputs: list[str] = []
    for blk in trunk.blocks:
        y = _emit_block(g, y, blk, form)
        if blk.name in out_of:
            name = out_of[blk.name]
            g.node("Identity", [y], name, f"{name}/identity")
            outputs.append(name)
    if logits:
        p = g.node("GlobalAveragePool", [y], "avgpool:out", "avgpool")
        f = g.node("Flatten", [p], "flatten:out", "flatten", axis=1)
        g.node("Gemm", [f, g.init("fc.weight", trunk.fc_weight), g.init("fc.bias", trunk.fc_bias)], "logits", "fc",
               transB=1)
        outputs.append("logits")

    dims: list[int | str] = list(input_shape)
    if dynamic:
        dims = ["batch", 3, "height", "width"]
    inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, dims)
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    graph = helper.make_graph(g.nodes, graph_name, [inp], outs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="natsdeploy", producer_version=_version())
    model.ir_version = min(model.ir_version, 10)  # readable by onnxruntime >= 1.17
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    for o in model.graph.output:
        if o.name in shapes:
            o.type.CopyFrom(shapes[o.name].type)
    if dynamic:  # symbolic names read better than inference's unk__N
        for o in model.graph.output:
            d = o.type.tensor_type.shape.dim
            if len(d) == 4:
                if not d[0].HasField("dim_value"):
                    d[0].dim_param = "batch"
                for j, tag in ((2, "height"), (3, "width")):
                    if not d[j].HasField("dim_value"):
                        d[j].dim_param = f"{o.name}_{tag}"
    return model


def _version() -> str:
    from natsdeploy import __version__

    return __version__


def check_onnx(model) -> None:
    """onnx's full checker (includes strict shape inference)."""
    import onnx

    onnx.checker.check_model(model, full_check=True)


def save_onnx(model, path: str | os.PathLike[str]) -> Path:
    """Serialise deterministically and write atomically."""
    from natsdeploy.arch import atomic_write_bytes

    return atomic_write_bytes(Path(path), model.SerializeToString(deterministic=True))
