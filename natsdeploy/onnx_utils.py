"""Transforms of finished ONNX models that several stages need: inlining model-local functions
(for runtimes and graph walkers that cannot read them), a weightless copy for shape inference, and
the fp16 copy `export --precision fp16` writes.

Base layer: numpy at import, onnx on first use, no other natsdeploy module.
"""

from __future__ import annotations

import numpy as np

__all__ = ["inline_functions", "shape_skeleton", "to_fp16", "is_fp16"]


def inline_functions(model):
    """`model` with every model-local function call replaced by the function's body (onnx.inliner).

    For runtimes and tools that cannot read local functions (OpenVINO, graph walkers); opset
    imports of domains no node uses any more are dropped. A model without functions is returned as is.
    """
    if not len(model.functions):
        return model
    from onnx import inliner

    out = inliner.inline_local_functions(model)
    used = {n.domain for n in out.graph.node} | {""}
    keep = [o for o in out.opset_import if o.domain in used]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    return out


def shape_skeleton(model, *, keep_elements: int = 4096):
    """A copy of `model` whose large initializers carry no data, for shape inference and counting.

    Each initializer over `keep_elements` keeps its name, type and dims but is marked as external
    data that is never read (shape inference takes only its type); small ones, which inference may
    read as values (Split sizes, Reshape shapes), are copied whole, as is everything else (initializers
    of If/Loop subgraphs, sparse initializers). Copying and re-parsing a trunk's weights is most of
    what `onnx.shape_inference.infer_shapes` costs on a full model.
    """
    from onnx import GraphProto, ModelProto, TensorProto

    graph = GraphProto()
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            _copy_field(graph, field.name, value)
    for init in model.graph.initializer:
        if int(np.prod(init.dims)) <= keep_elements:
            graph.initializer.add().CopyFrom(init)
            continue
        t = graph.initializer.add(name=init.name, data_type=init.data_type, dims=init.dims,
                                  data_location=TensorProto.EXTERNAL)
        t.external_data.add(key="location", value="natsdeploy-shape-skeleton-has-no-weights")
    out = ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(out, field.name, value)
    out.graph.CopyFrom(graph)
    return out


def _copy_field(dst, name: str, value) -> None:
    target = getattr(dst, name)
    if hasattr(target, "extend"):  # repeated field
        target.extend(value)
    elif hasattr(target, "CopyFrom"):  # message field
        target.CopyFrom(value)
    else:
        setattr(dst, name, value)


def to_fp16(model):
    """An fp16 copy of an fp32 `model` whose inputs and outputs stay fp32 behind `Cast` nodes.

    Every float initializer (and float `Constant`, in the graph and in model-local functions) becomes
    float16, so every op between the casts runs in fp16 (what a strongly typed TensorRT network
    builds). Each fp32 graph input gets a `Cast` to fp16 right after it (`<name>:fp16`) and each fp32
    output is the `Cast` back of the fp16 tensor (renamed `<name>:fp16`): callers feed and read fp32
    arrays as before. Element counts, so params, are unchanged.
    """
    from onnx import TensorProto, helper, numpy_helper

    out = type(model)()
    out.CopyFrom(model)
    g = out.graph
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16

    def half(t):
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)

    for i, t in enumerate(g.initializer):
        if t.data_type == f32:
            g.initializer[i].CopyFrom(half(t))
    for nodes in [g.node, *[f.node for f in out.functions]]:
        for n in nodes:
            for a in n.attribute:
                if n.op_type == "Constant" and a.name == "value" and a.t.data_type == f32:
                    a.t.CopyFrom(half(a.t))
    inputs = {i.name for i in g.input if i.type.tensor_type.elem_type == f32} - {t.name for t in g.initializer}
    outputs = {o.name for o in g.output if o.type.tensor_type.elem_type == f32}
    rename = {name: f"{name}:fp16" for name in inputs | outputs}
    for n in g.node:
        n.input[:] = [rename.get(x, x) if x in inputs else x for x in n.input]
        n.output[:] = [rename[x] if x in outputs else x for x in n.output]
        for j, x in enumerate(n.input):
            if x in outputs:  # an output read again downstream (none in natsdeploy's graphs, but keep it right)
                n.input[j] = rename[x]
    casts_in = [helper.make_node("Cast", [x], [rename[x]], name=f"{x}/to_fp16", to=f16) for x in sorted(inputs)]
    casts_out = [helper.make_node("Cast", [rename[x]], [x], name=f"{x}/to_fp32", to=f32) for x in sorted(outputs)]
    nodes = casts_in + list(g.node) + casts_out
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # intermediate types changed; shape inference recomputes them
    return out


def is_fp16(model) -> bool:
    """True when `model`'s float weights are float16 (written by `to_fp16`)."""
    from onnx import TensorProto

    kinds = {t.data_type for t in model.graph.initializer} & {TensorProto.FLOAT, TensorProto.FLOAT16}
    return kinds == {TensorProto.FLOAT16}
