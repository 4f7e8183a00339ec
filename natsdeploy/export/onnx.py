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
- ``function``: each transformed conv with more than one branch (after merging: more than one
  dilation) is one `natsdeploy.MixedDilationConv.<conv>` node defined by a model-local function whose body
  is the ``branches`` form; see `natsdeploy.export.function`.

The graph builder and the branch-form emitters every form shares are in `natsdeploy.export.graph`.
`to_onnx` is the one way a module becomes ONNX: fold (`fold_trunk`), rewrite (`rewrite`), emit
(`trunk_to_onnx`); `export`, `bench`, detector exports and `parity --precision int8` all call it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from natsdeploy.export import function, graph, rows
from natsdeploy.export.fold import Block, ConvOp, SplitConv, Trunk, fold_trunk, iter_splits, rewrite
from natsdeploy.export.graph import GraphBuilder, branch_inputs, emit_conv, emit_residual
from natsdeploy.onnx_utils import shape_skeleton

__all__ = ["Form", "FORMS", "EXPORT_FORMS", "FEATURE_OUTPUTS", "default_opset", "emit_block", "trunk_to_onnx",
           "OnnxExport", "to_onnx", "save_onnx", "check_onnx"]

Form = Literal["branches", "sum", "rows", "function"]
FORMS: tuple[str, ...] = ("branches", "sum", "rows", "function")
EXPORT_FORMS: tuple[str, ...] = (*FORMS, "auto")
"""What `to_onnx` takes: the forms, and ``auto`` (rows or branches per conv, whichever ONNX Runtime CPU runs
faster here; `natsdeploy.export.autotune`)."""
FEATURE_OUTPUTS = ("c2", "c3", "c4", "c5")
INPUT_NAME = "images"


def _emit_split_sum(g: GraphBuilder, x: str, split: SplitConv, consumer: ConvOp) -> str:
    """Branches feed column slices of the 1x1 `consumer`; partial products are added."""
    ins = branch_inputs(g, x, split)
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


def _emit_block_sum(g: GraphBuilder, x: str, blk: Block) -> str:
    y = x
    path = list(blk.path)
    i = 0
    while i < len(path):
        op = path[i]
        nxt = path[i + 1] if i + 1 < len(path) else None
        if (isinstance(op, SplitConv) and isinstance(nxt, ConvOp) and nxt.weight.shape[2:] == (1, 1)
                and nxt.groups == 1 and len(op.branches) > 1):
            y = _emit_split_sum(g, y, op, nxt)
            i += 2
            continue
        y = emit_conv(g, y, op)
        i += 1
    return emit_residual(g, x, y, blk)


def emit_block(g: GraphBuilder, x: str, blk: Block, form: Form) -> str:
    """One residual block in `form` (the ``rows`` form reads and advances `g.hw`)."""
    if form == "rows":
        return rows.emit_block(g, x, blk)
    if form == "function":
        return function.emit_block(g, x, blk)
    if form == "sum":
        return _emit_block_sum(g, x, blk)
    return graph.emit_block(g, x, blk)


def trunk_to_onnx(trunk: Trunk, *, input_shape: Sequence[int] = (1, 3, 800, 1216), dynamic: bool = False,
                  opset: int = 17, form: Form = "branches", logits: bool = False,
                  graph_name: str = "natsdeploy", rows_only: Collection[str] | None = None) -> "onnx.ModelProto":  # noqa: F821
    """The trunk as an ONNX model: input `images`, outputs c2..c5 (and `logits` if asked).

    With ``form="rows"``, `rows_only` restricts the rows form to the named transformed convs; the
    others keep the branch form (how `natsdeploy.export.autotune` applies a per-conv choice).
    """
    from onnx import shape_inference

    if form not in FORMS:
        raise ValueError(f"form: got {form!r}, expected one of {list(FORMS)}")
    if form == "rows" and opset < rows.MIN_OPSET:
        raise ValueError(rows.opset_message(opset))
    g = GraphBuilder(opset=opset)
    g.rows_only = frozenset(rows_only) if rows_only is not None else None
    y = g.conv(INPUT_NAME, trunk.stem)
    y = g.node("MaxPool", [y], "maxpool:out", "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    if form == "rows":
        g.hw = rows.start_hw(input_shape, trunk.stem, dynamic)
    out_of = {v: k for k, v in trunk.stage_ends.items()}
    outputs: list[str] = []
    for blk in trunk.blocks:
        y = emit_block(g, y, blk, form)
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
    model = g.model([(INPUT_NAME, dims)], outputs, name=graph_name, producer_name="natsdeploy",
                    producer_version=_version())
    model.ir_version = min(model.ir_version, 10)  # readable by onnxruntime >= 1.17
    inferred = shape_inference.infer_shapes(shape_skeleton(model), strict_mode=True)
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


def default_opset(form: str) -> int:
    """17, or 18 for the forms that emit Col2Im (``rows``, and ``auto`` wherever it picks rows)."""
    return rows.MIN_OPSET if form in ("rows", "auto") else 17


@dataclass(frozen=True)
class OnnxExport:
    """A module as ONNX, with what the graph was emitted from (reports and audits read it)."""

    model: Any
    """The `onnx.ModelProto`."""
    trunk: Trunk
    """The folded, rewritten trunk the graph was emitted from."""
    form: str
    """The form asked for (``auto`` included)."""
    opset: int
    rows_only: frozenset[str] | None = None
    """Form ``rows``/``auto``: the transformed convs emitted as rows (None: every eligible one)."""
    autotune: list[dict[str, Any]] | None = None
    """Form ``auto``: the per-block measurements that chose `rows_only`."""

    @property
    def emitted_form(self) -> str:
        """The form the graph was written in (``auto`` writes ``rows`` for the convs it picked)."""
        return "rows" if self.form == "auto" else self.form

    @property
    def splits(self) -> list[SplitConv]:
        """The transformed convs in the graph (after the rewrites)."""
        return list(iter_splits(self.trunk))


def to_onnx(module: Any, *, input_shape: Sequence[int] = (1, 3, 800, 1216), dynamic: bool = False,
            opset: int | None = None, form: str = "branches", logits: bool = False, graph_name: str = "natsdeploy",
            rows_only: Collection[str] | None = None, merge: bool = True, threads: int | None = None,
            log: Callable[[str], None] = print) -> OnnxExport:
    """A torchvision-layout ResNet `module` (transformed or baseline, eval-mode BN) as ONNX: folded
    (`fold_trunk`), rewritten (`rewrite`; `merge` False keeps same-dilation branches apart) and emitted
    (`trunk_to_onnx`) in `form` (one of `EXPORT_FORMS`) at `opset` (default: `default_opset(form)`).

    Form ``auto`` times branches against rows per block on ONNX Runtime CPU with `threads` (default:
    all logical CPUs), logging each choice to `log`, and emits the rows form where it is faster.
    """
    if form not in EXPORT_FORMS:
        raise ValueError(f"form: got {form!r}, expected one of {list(EXPORT_FORMS)}")
    opset = default_opset(form) if opset is None else int(opset)
    trunk = rewrite(fold_trunk(module), merge=merge)
    autotune = None
    if form == "auto":
        from natsdeploy.cli_values import format_shape
        from natsdeploy.export.autotune import choose_rows

        threads = int(threads or os.cpu_count() or 1)
        log(f"autotune: timing branches vs rows per block at {format_shape(tuple(input_shape))} on ONNX Runtime CPU, "
            f"{threads} threads")
        rows_only, autotune = choose_rows(trunk, input_shape, threads=threads, log=log)
    emitted = "rows" if form == "auto" else form
    model = trunk_to_onnx(trunk, input_shape=tuple(input_shape), dynamic=dynamic, opset=opset, form=emitted,  # type: ignore[arg-type]
                          logits=logits, graph_name=graph_name, rows_only=rows_only)
    return OnnxExport(model, trunk, form, opset, frozenset(rows_only) if rows_only is not None else None, autotune)


def _version() -> str:
    from natsdeploy import __version__

    return __version__


def check_onnx(model) -> None:
    """onnx's full checker (includes strict shape inference) on a ModelProto or its serialised bytes."""
    import onnx

    onnx.checker.check_model(model, full_check=True)


def save_onnx(model, path: str | os.PathLike[str]) -> Path:
    """Serialise deterministically and write atomically."""
    from natsdeploy.files import atomic_write_bytes

    return atomic_write_bytes(Path(path), model.SerializeToString(deterministic=True))
