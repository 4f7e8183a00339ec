"""ONNX graphs against onnxruntime (the runtime reference) and PyTorch."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natsdeploy import build_backbone, build_baseline, count_onnx
from natsdeploy.convert import load_ic_conv
from natsdeploy.export.fold import fold_trunk, merge_same_dilation, order_branches
from natsdeploy.export.onnx import check_onnx, trunk_to_onnx
from tests.conftest import ICCONV, needs_icconv
from tests.helpers import ALL_PARAMS, SMALL, assert_ort_parity, random_arch, seeded_state_dict


@pytest.mark.parametrize("backbone", ALL_PARAMS)
def test_parity_every_backbone(backbone):
    sd = seeded_state_dict(backbone, seed=3)
    arch = random_arch(backbone, random.Random(4), p_conv=0.8)
    m = build_backbone(arch, sd)
    proto = trunk_to_onnx(merge_same_dilation(fold_trunk(m)), input_shape=(1, 3, 64, 96), logits=True)
    check_onnx(proto)
    assert_ort_parity(m, proto, (1, 3, 64, 96))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**9), backbone=st.sampled_from(SMALL), form=st.sampled_from(["branches", "sum"]),
       merge=st.booleans())
def test_parity_random_archs(seed, backbone, form, merge):
    arch = random_arch(backbone, random.Random(seed), max_dilation=4)
    m = build_backbone(arch, seeded_state_dict(backbone, seed=seed % 4))  # 4 weight draws a backbone, each drawn once
    trunk = fold_trunk(m)
    if merge:
        trunk = merge_same_dilation(trunk)
    proto = trunk_to_onnx(trunk, input_shape=(1, 3, 40, 56), form=form)
    assert_ort_parity(m, proto, (1, 3, 40, 56), seed=seed)


@needs_icconv
@pytest.mark.parametrize("form", ["branches", "sum"])
def test_icconv_resnet50_parity_and_rewrites(form):
    arch = load_ic_conv(ICCONV / "detection_ic_resnet50_k9.json", "resnet50")
    m = build_backbone(arch, seeded_state_dict("resnet50", seed=1))
    for trunk in (fold_trunk(m), merge_same_dilation(fold_trunk(m)),
                  order_branches(fold_trunk(m), key="aligned_first")):
        proto = trunk_to_onnx(trunk, input_shape=(1, 3, 64, 64), form=form)
        assert_ort_parity(m, proto, (1, 3, 64, 64))


def test_dynamic_shapes_at_several_sizes():
    arch = random_arch("resnet18", random.Random(8), max_dilation=3)
    m = build_backbone(arch, seeded_state_dict("resnet18"))
    proto = trunk_to_onnx(merge_same_dilation(fold_trunk(m)), dynamic=True)
    check_onnx(proto)
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    for shape in [(1, 3, 64, 64), (2, 3, 97, 131), (1, 3, 33, 250), (3, 3, 120, 45)]:
        assert_ort_parity(m, proto, shape)


def test_graph_has_expected_dilations_and_no_batchnorm():
    arch = random_arch("resnet50", random.Random(2), p_conv=1.0, max_dilation=4)
    proto = trunk_to_onnx(fold_trunk(build_backbone(arch)), input_shape=(1, 3, 64, 64))
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and "Gather" not in ops and "Transpose" not in ops
    assert ops <= {"Conv", "Relu", "Add", "MaxPool", "Concat", "Identity"}
    attrs = {n.name: {a.name: list(a.ints) for a in n.attribute} for n in proto.graph.node if n.op_type == "Conv"}
    for name, ct in arch.convs.items():
        for i, b in enumerate(ct.branches):
            a = attrs[f"{name}/b{i}"]
            assert a["dilations"] == list(b.dilation)
            assert a["pads"] == [b.dilation[0], b.dilation[1]] * 2
        concat = [n for n in proto.graph.node if n.name == f"{name}/concat"]
        assert len(concat) == (1 if len(ct.branches) > 1 else 0)


def test_merge_neighbours_and_any_order():
    from natsdeploy.arch import Arch, Branch, ConvTransform

    arch = Arch(backbone="resnet18", convs={
        "layer3.0.conv1": ConvTransform((Branch((2, 2), 64), Branch((1, 1), 64), Branch((2, 2), 64), Branch((1, 1), 64))),
        "layer3.0.conv2": ConvTransform((Branch((2, 2), 64), Branch((2, 2), 64), Branch((1, 1), 128))),
        "layer3.1.conv2": ConvTransform((Branch((2, 2), 64), Branch((1, 1), 64), Branch((2, 2), 128))),
    })
    m = build_backbone(arch, seeded_state_dict("resnet18"))
    trunk = merge_same_dilation(fold_trunk(m))
    splits = {s.name: s for blk in trunk.blocks for s in blk.path if hasattr(s, "branches")}
    # conv1 feeds conv2: any-order merge; conv2 feeds the residual add: neighbours only
    assert [(b.dilation, b.out_channels) for b in splits["layer3.0.conv1"].branches] == [((2, 2), 128), ((1, 1), 128)]
    assert [(b.dilation, b.out_channels) for b in splits["layer3.0.conv2"].branches] == [((2, 2), 128), ((1, 1), 128)]
    assert len(splits["layer3.1.conv2"].branches) == 3
    assert_ort_parity(m, trunk_to_onnx(trunk, input_shape=(1, 3, 64, 64)), (1, 3, 64, 64))


def test_grouped_conv_uses_split_not_gather():
    arch = random_arch("resnext101_32x4d", random.Random(6), p_conv=0.3)
    proto = trunk_to_onnx(fold_trunk(build_backbone(arch)), input_shape=(1, 3, 64, 64))
    ops = [n.op_type for n in proto.graph.node]
    assert "Split" in ops and "Gather" not in ops and "Slice" not in ops


# one backbone per block type (basic, bottleneck, grouped bottleneck): ResNet-34/101 repeat those blocks;
# the module-level counts of all five are tests/verify/test_count.py::test_transformed_counts_equal_baseline
@pytest.mark.parametrize("bb", ["resnet18", "resnet50", pytest.param("resnext101_32x4d", marks=pytest.mark.slow)])
def test_params_and_macs_equal_baseline_in_graph(bb):
    arch = random_arch(bb, random.Random(1), p_conv=1.0, max_dilation=5)
    sd = seeded_state_dict(bb)
    t = count_onnx(trunk_to_onnx(merge_same_dilation(fold_trunk(build_backbone(arch, sd))), dynamic=True,
                                 form="sum"), (1, 3, 800, 1216))
    b = count_onnx(trunk_to_onnx(fold_trunk(build_baseline(bb, sd)), input_shape=(1, 3, 800, 1216)))
    assert (t.params, t.macs) == (b.params, b.macs), bb


def test_onnx_count_matches_torch_count():
    from natsdeploy import count

    arch = random_arch("resnet50", random.Random(3))
    m = build_backbone(arch)
    proto = trunk_to_onnx(fold_trunk(m), input_shape=(1, 3, 96, 160), logits=True)
    assert count_onnx(proto).macs == count(m, (1, 3, 96, 160)).macs


def test_serialisation_is_deterministic():
    arch = random_arch("resnet18", random.Random(5))
    sd = seeded_state_dict("resnet18")
    a = trunk_to_onnx(merge_same_dilation(fold_trunk(build_backbone(arch, sd))), input_shape=(1, 3, 64, 64))
    b = trunk_to_onnx(merge_same_dilation(fold_trunk(build_backbone(arch, sd))), input_shape=(1, 3, 64, 64))
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
