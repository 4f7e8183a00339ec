"""natsdeploy.onnx_utils: inlining model-local functions, and the weightless copy shape inference runs on."""

from __future__ import annotations

import numpy as np
import pytest

from natsdeploy.export.graph import GraphBuilder
from natsdeploy.onnx_utils import inline_functions, shape_skeleton
from tests.helpers import ort_outputs


def _run(model, x):
    return next(iter(ort_outputs(model, x, input_name="x").values()))


def test_inline_functions():
    from onnx import helper

    body = [helper.make_node("Relu", ["X"], ["Y"], name="r")]
    f = helper.make_function("natsdeploy", "F", ["X"], ["Y"], body, [helper.make_opsetid("", 17)])
    g = GraphBuilder()
    g.functions.append(f)
    g.nodes.append(helper.make_node("F", ["x"], ["y"], name="f", domain="natsdeploy"))
    model = g.model([("x", (2, 3))], ["y"], name="t")
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17), ("natsdeploy", 1)]
    flat = inline_functions(model)
    assert not flat.functions and [n.op_type for n in flat.graph.node] == ["Relu"]
    assert [o.domain for o in flat.opset_import] == [""]
    x = np.array([[-1, 0, 2], [3, -4, 5]], dtype=np.float32)
    np.testing.assert_array_equal(_run(flat, x), np.maximum(x, 0))
    assert inline_functions(flat) is flat  # nothing to inline: the same object


@pytest.mark.parametrize("form, dynamic", [("branches", False), ("rows", False), ("function", True), ("sum", False)])
def test_shape_skeleton_infers_the_same_shapes_without_the_weights(form, dynamic):
    """Shape inference on the skeleton gives the full model's value infos; the skeleton holds no weight data."""
    import random

    from onnx import TensorProto, shape_inference

    from natsdeploy import build_backbone
    from natsdeploy.export.fold import fold_trunk
    from natsdeploy.export.onnx import trunk_to_onnx
    from tests.helpers import random_arch

    arch = random_arch("resnet18", random.Random(3))
    model = trunk_to_onnx(fold_trunk(build_backbone(arch)), input_shape=(1, 3, 96, 128), form=form, opset=18,
                          dynamic=dynamic)
    before = model.SerializeToString()
    skeleton = shape_skeleton(model)
    assert model.SerializeToString() == before  # the model itself is untouched
    full, skel = (shape_inference.infer_shapes(m, strict_mode=True) for m in (model, skeleton))
    assert len(full.graph.value_info) > 20
    assert [v.SerializeToString() for v in skel.graph.value_info] == [v.SerializeToString()
                                                                      for v in full.graph.value_info]
    assert list(skel.graph.output) == list(full.graph.output) and list(skel.functions) == list(model.functions)
    assert [(i.name, list(i.dims), i.data_type) for i in skeleton.graph.initializer] == \
           [(i.name, list(i.dims), i.data_type) for i in model.graph.initializer]
    big = [i for i in skeleton.graph.initializer if np.prod(i.dims) > 4096]
    assert big and all(i.data_location == TensorProto.EXTERNAL and not i.raw_data for i in big)
    assert skeleton.ByteSize() < model.ByteSize() / 100
