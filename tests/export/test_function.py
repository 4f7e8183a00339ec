"""The ``function`` form: one `natsdeploy.MixedDilationConv.<conv>` node per multi-dilation conv, run by ONNX Runtime as is."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
import torch

from natsdeploy import build_backbone, build_baseline, count_onnx
from natsdeploy.arch import Arch, Branch, ConvTransform, load_arch
from natsdeploy.export.fold import fold_trunk, merge_same_dilation
from natsdeploy.export.function import DOMAIN, OP_TYPE, is_call, op_type, plugin_model, plugin_op_types
from natsdeploy.export.onnx import check_onnx, trunk_to_onnx
from natsdeploy.onnx_utils import inline_functions
from tests.conftest import EXAMPLES
from tests.helpers import assert_ort_parity, seeded_state_dict

SHAPE = (1, 3, 64, 96)

# merge_same_dilation: conv1 feeds conv2 (any-order merge: d2 64 + d2 32 -> d2 96), layer3.1.conv2 feeds the
# residual add (neighbours only: three branches stay), single-dilation convs become plain convs
HAND = Arch(backbone="resnet18", convs={
    "layer1.0.conv1": ConvTransform((Branch((2, 2), 32), Branch((2, 2), 32))),
    "layer2.0.conv1": ConvTransform((Branch((2, 2), 64), Branch((1, 1), 32), Branch((2, 2), 32))),
    "layer3.1.conv2": ConvTransform((Branch((1, 1), 128), Branch((3, 1), 64), Branch((1, 1), 64))),
    "layer4.0.conv2": ConvTransform((Branch((2, 2), 512),)),
})
EXPECTED = {
    "layer2.0.conv1": {"dilations": [2, 2, 1, 1], "pads": [2, 2, 1, 1], "widths": [96, 32], "strides": [2, 2],
                       "group": 1, "relu": 1, "kernel_shape": [3, 3]},
    "layer3.1.conv2": {"dilations": [1, 1, 3, 1, 1, 1], "pads": [1, 1, 3, 1, 1, 1], "widths": [128, 64, 64],
                       "strides": [1, 1], "group": 1, "relu": 0, "kernel_shape": [3, 3]},
}


def _export(arch, sd, **kw):
    m = build_backbone(arch, sd)
    proto = trunk_to_onnx(merge_same_dilation(fold_trunk(m)), form="function", **{"input_shape": SHAPE, **kw})
    check_onnx(proto)
    return m, proto


def _attrs(node) -> dict:
    return {a.name: (list(a.ints) if a.ints else a.i) for a in node.attribute}


@pytest.fixture(scope="module")
def hand():
    sd = seeded_state_dict("resnet18", seed=5)
    m, proto = _export(HAND, sd)
    return m, proto, sd


def test_one_node_per_multi_dilation_conv_with_its_attributes(hand):
    m, proto, sd = hand
    calls = [n for n in proto.graph.node if is_call(n)]
    assert [(n.name, n.domain, n.op_type) for n in calls] == [(k, DOMAIN, f"MixedDilationConv.{k}") for k in EXPECTED]
    assert {n.name: _attrs(n) for n in calls} == EXPECTED
    # one function per node, in graph order; the body is the branches form
    # (TensorRT's parser keys functions by op type alone: a unique name per conv, no overloads)
    assert [(f.domain, f.name, f.overload) for f in proto.functions] == [(DOMAIN, op_type(k), "") for k in EXPECTED]
    body = Counter(n.op_type for n in proto.functions[1].node)
    assert body == Counter({"Constant": 2, "Split": 2, "Conv": 3, "Concat": 1})
    assert Counter(n.op_type for n in proto.functions[0].node)["Relu"] == 2
    # weights outside the function: the baseline conv's shape
    inits = {i.name: list(i.dims) for i in proto.graph.initializer}
    assert inits["layer2.0.conv1.weight"] == [128, 64, 3, 3] and inits["layer3.1.conv2.bias"] == [256]
    # no Concat left in the graph; single-dilation convs are plain convs with their dilation
    assert "Concat" not in {n.op_type for n in proto.graph.node}
    convs = {n.name: _attrs(n) for n in proto.graph.node if n.op_type == "Conv"}
    assert convs["layer4.0.conv2/b0"]["dilations"] == [2, 2] and convs["layer1.0.conv1/b0"]["dilations"] == [2, 2]
    assert len(convs) == 20 - len(EXPECTED)  # resnet18: stem + 16 + 3 downsample convs


def test_ort_parity_and_body_equals_inlined(hand):
    m, proto, _ = hand
    assert_ort_parity(m, proto, SHAPE)
    flat = inline_functions(proto)
    assert not flat.functions and not any(is_call(n) for n in flat.graph.node)
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    a, b = (ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})
            for p in (proto, flat))
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6 * float(np.abs(v).max()))


def test_example_arch_static_and_dynamic_parity():
    arch = load_arch(EXAMPLES / "resnet18_nats_c.json")
    m, proto = _export(arch, seeded_state_dict("resnet18", seed=2), dynamic=True)
    assert sum(is_call(n) for n in proto.graph.node) == len(arch.convs)
    for shape in [(1, 3, 64, 96), (2, 3, 45, 70)]:
        assert_ort_parity(m, proto, shape)


def test_grouped_conv():
    arch = Arch(backbone="resnext101_32x4d", convs={
        "layer1.0.conv2": ConvTransform((Branch((1, 1), 64), Branch((2, 2), 32), Branch((3, 3), 32)))})
    m, proto = _export(arch, seeded_state_dict("resnext101_32x4d", seed=1), input_shape=(1, 3, 64, 64))
    (call,) = [n for n in proto.graph.node if is_call(n)]
    assert _attrs(call)["group"] == 32 and _attrs(call)["widths"] == [64, 32, 32]
    body = proto.functions[0].node
    assert [n.input[0] for n in body if n.op_type == "Split"] == ["X", "W", "B"]
    assert [_attrs(n)["group"] for n in body if n.op_type == "Conv"] == [16, 8, 8]
    assert_ort_parity(m, proto, (1, 3, 64, 64))


def test_bytes_are_deterministic(hand):
    _, proto, sd = hand
    again = _export(HAND, sd)[1]
    assert proto.SerializeToString(deterministic=True) == again.SerializeToString(deterministic=True)


def test_count_sees_through_functions(hand):
    _, proto, sd = hand
    base = count_onnx(trunk_to_onnx(fold_trunk(build_baseline("resnet18", sd)), input_shape=SHAPE))
    got = count_onnx(proto)
    assert (got.params, got.macs) == (base.params, base.macs)
    branch_convs = {k: v for k, v in got.per_module.items() if k.startswith("layer3.1.conv2/")}
    assert len(branch_convs) == 3  # the three convs inside the function, each with its shapes
    assert sum(p for p, _ in branch_convs.values()) == 256 * 256 * 9 + 256
    assert sum(n for _, n in branch_convs.values()) == base.per_module["layer3.1.conv2"][1]
    dyn = _export(HAND, sd, dynamic=True)[1]
    assert count_onnx(dyn, (1, 3, 800, 1216)).macs == count_onnx(
        trunk_to_onnx(fold_trunk(build_baseline("resnet18", sd)), input_shape=(1, 3, 800, 1216))).macs


def test_cli_export_function_form(tmp_path, capsys):
    from natsdeploy.cli import main

    out = tmp_path / "o"
    assert main(["export", str(EXAMPLES / "resnet18_nats_c.json"), "--form", "function", "--input-shape",
                 "1x3x64x96", "--latency-pairs", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["export"]["form"] == "function" and rep["export"]["function_nodes"] == 6
    # counted through the functions: as many convs as the branches form has
    assert rep["export"]["conv_nodes"]["model"] == 20 - 6 + rep["export"]["branches_in_graph"]
    assert rep["cost"]["equal"] and rep["parity"]["model"]["passed"] and rep["parity"]["openvino"]["model"]["passed"]
    assert "6 MixedDilationConv nodes" in printed and "verdict: PASS" in printed
    x = torch.randn(1, 3, 64, 96).numpy()
    s = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.shape for o in s.run(None, {"images": x})][0] == (1, 64, 16, 24)


def test_plugin_model_gives_every_call_one_op_type(hand):
    """For a registered MixedDilationConv plugin: one op type, same inputs and attributes, no bodies."""
    _, proto, _ = hand
    assert plugin_op_types(proto) == [op_type(k) for k in EXPECTED]
    flat = plugin_model(proto)
    calls = [n for n in flat.graph.node if n.domain == DOMAIN]
    assert not flat.functions and [n.op_type for n in calls] == [OP_TYPE] * len(EXPECTED)
    assert [(list(n.input), _attrs(n)) for n in calls] == [
        (list(n.input), _attrs(n)) for n in proto.graph.node if is_call(n)]
    assert len(proto.functions) == len(EXPECTED)  # the original is untouched
