"""Parameter and multiply-accumulate counts, for PyTorch modules and ONNX graphs.

MACs are those of Conv and Linear/Gemm/MatMul (the convention of fvcore and most papers);
normalisation, activations and pooling are not counted. A transformed conv counts as one unit
(the sum of its branches), so per-module tables line up with the baseline's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Counts", "count", "count_onnx"]


@dataclass(frozen=True)
class Counts:
    """Totals and a per-module breakdown (module name -> (params, macs))."""

    params: int
    macs: int
    per_module: dict[str, tuple[int, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "macs": self.macs}


def count(model: Any, input_shape: Sequence[int]) -> Counts:
    """Count a PyTorch module's parameters and MACs for one forward pass at `input_shape`."""
    import torch
    from torch import nn

    from natsdeploy.models.mixed_conv import MixedDilationConv

    units: dict[str, nn.Module] = {}
    skip: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in skip):
            continue
        if isinstance(m, MixedDilationConv):
            units[name] = m
            skip.append(name)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            units[name] = m

    macs: dict[str, int] = {}

    def conv_macs(conv: nn.Conv2d, out: torch.Tensor) -> int:
        return out.numel() * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]

    def hook(name: str):
        def fn(mod: nn.Module, inputs: Any, out: torch.Tensor) -> None:
            if isinstance(mod, MixedDilationConv):
                # each branch's output is the slice of `out` it owns
                n = 0
                o = 0
                for conv in mod.branches:
                    per_ch = out[:, o:o + conv.out_channels]
                    n += conv_macs(conv, per_ch)
                    o += conv.out_channels
            elif isinstance(mod, nn.Conv2d):
                n = conv_macs(mod, out)
            else:
                n = out.numel() * mod.in_features
            macs[name] = macs.get(name, 0) + n
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in units.items()]
    p = next(model.parameters())
    # on the meta device only shapes flow, and batch norm (uncounted, shape-preserving) runs through torch's
    # Python decompositions there: half of a meta count; skip it
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)] if p.is_meta else []
    try:
        for m in bns:
            m.forward = _same
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape), dtype=p.dtype, device=p.device))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
        for m in bns:
            del m.forward

    per_module: dict[str, tuple[int, int]] = {}
    for name, m in model.named_modules():
        if any(name.startswith(u + ".") for u in skip):
            continue
        own = sum(p.numel() for p in (m.parameters() if name in units else m.parameters(recurse=False)))
        if own or name in macs:
            per_module[name] = (own, macs.get(name, 0))
    total_params = sum(p.numel() for p in model.parameters())
    return Counts(params=total_params, macs=sum(macs.values()), per_module=per_module)


def _same(x: Any) -> Any:
    return x


def count_onnx(model: str | os.PathLike[str] | Any, input_shape: Sequence[int] | None = None) -> Counts:
    """Count an ONNX graph: params = initializer elements, MACs of Conv/Gemm/MatMul from inferred shapes.

    In a QDQ graph each quantized weight counts once (the `DequantizeLinear` input); Q/DQ scales and
    zero points are not counted.

    `input_shape` fixes the first graph input's dims (needed for dynamic-shape models). Model-local
    functions (the ``function`` export form) are seen through: their bodies are inlined first, so each
    conv inside counts with its own shapes, and per-node params include weights split from initializers.
    """
    import onnx
    from onnx import shape_inference

    from natsdeploy.onnx_utils import inline_functions, shape_skeleton

    # counting needs dims and types only: a copy without the weights (which makes inference ~100x cheaper)
    m = shape_skeleton(onnx.load(str(model), load_external_data=False) if isinstance(model, (str, os.PathLike, Path))
                       else model)
    m = inline_functions(m)
    init_names = {i.name for i in m.graph.initializer}
    graph_inputs = [i for i in m.graph.input if i.name not in init_names]
    if input_shape is not None:
        dims = graph_inputs[0].type.tensor_type.shape.dim
        if len(dims) != len(input_shape):
            raise ValueError(f"input_shape: got {list(input_shape)}, expected {len(dims)} dims")
        for d, v in zip(dims, input_shape):
            d.Clear()
            d.dim_value = int(v)
    m = shape_inference.infer_shapes(m, strict_mode=True)
    shapes: dict[str, list[int]] = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    for init in m.graph.initializer:
        shapes[init.name] = list(init.dims)

    per_node: dict[str, tuple[int, int]] = {}
    # QDQ graphs (export --precision int8): a quantized weight counts once, as the DequantizeLinear input it
    # is; the scales and zero points of QuantizeLinear/DequantizeLinear are quantization parameters, not weights
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    quantized = {n.input[0] for n in qdq if n.op_type == "DequantizeLinear"}
    qparams = {x for n in qdq for x in n.input[1:]}
    total_params = sum(math.prod(i.dims) for i in m.graph.initializer
                       if i.name in quantized or (i.data_type in floats and i.name not in qparams))
    total = 0
    const = set(init_names)  # tensors computed from initializers and constants only (e.g. split weights)
    for idx, node in enumerate(m.graph.node):
        if all(i in const for i in node.input if i):
            const.update(node.output)
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        out = shapes.get(node.output[0])
        if out is None or any(d < 0 for d in out):
            raise ValueError(f"count_onnx: shape of {node.output[0]!r} unknown; pass input_shape for dynamic models")
        if node.op_type == "Conv":
            w = shapes[node.input[1]]
            n = math.prod(out) * math.prod(w[1:])
        elif node.op_type == "Gemm":
            a = shapes[node.input[0]]
            trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
            n = math.prod(out) * (a[0] if trans_a else a[1])
        else:
            a = shapes[node.input[0]]
            n = math.prod(out) * a[-1]
        params = sum(math.prod(shapes[i]) for i in node.input[1:] if i in const)
        per_node[node.name or f"{node.op_type}_{idx}"] = (params, n)
        total += n
    return Counts(params=total_params, macs=total, per_module=per_node)
