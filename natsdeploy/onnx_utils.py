"""Transforms of finished ONNX models that several stages need: inlining model-local functions
(for runtimes and graph walkers that cannot read them) and a weightless copy for shape inference.

Base layer: numpy at import, onnx on first use, no other natsdeploy module.
"""

from __future__ import annotations

import numpy as np

__all__ = ["inline_functions", "shape_skeleton"]


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
