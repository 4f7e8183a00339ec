"""The ``rows`` form (direct convs + rows convs + Col2Im) against onnxruntime and PyTorch."""

from __future__ import annotations

import random

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natsdeploy import build_backbone, build_baseline, count_onnx
from natsdeploy.arch import Arch, Branch, ConvTransform
from natsdeploy.convert import load_ic_conv
from natsdeploy.export.fold import fold_trunk, merge_same_dilation
from natsdeploy.export.onnx import check_onnx, trunk_to_onnx
from tests.conftest import EXAMPLES, ICCONV, needs_icconv
from tests.helpers import SMALL, assert_ort_parity, random_arch, seeded_state_dict


def _rows(trunk, **kw):
    proto = trunk_to_onnx(trunk, opset=18, form="rows", **kw)
    check_onnx(proto)
    return proto


def odd_arch(backbone: str, rng: random.Random, *, p_conv: float = 0.8, max_branches: int = 6,
             max_dilation: int = 4) -> Arch:
    """`random_arch` (which permutations, which convs) with 2.. branches of any width, mostly not multiples of 16."""
    base = random_arch(backbone, rng, p_conv=p_conv, max_dilation=max_dilation)
    convs = {}
    for name, ct in base.convs.items():
        c = sum(b.channels for b in ct.branches)
        cuts = sorted(rng.sample(range(1, c), rng.randint(2, max_branches) - 1))
        widths = [b - a for a, b in zip([0, *cuts], [*cuts, c])]
        branches = tuple(Branch((rng.randint(1, max_dilation), rng.randint(1, max_dilation)), w) for w in widths)
        convs[name] = ConvTransform(branches, ct.permutation)
    return Arch(backbone=backbone, convs=convs)


def _ops(proto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in proto.graph.node}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**9), backbone=st.sampled_from(SMALL), merge=st.booleans(),
       size=st.sampled_from([(40, 56), (37, 61), (64, 33)]))
def test_parity_random_archs(seed, backbone, merge, size):
    arch = odd_arch(backbone, random.Random(seed))
    m = build_backbone(arch, seeded_state_dict(backbone, seed=seed % 4))  # 4 weight draws a backbone, each drawn once
    trunk = merge_same_dilation(fold_trunk(m)) if merge else fold_trunk(m)
    shape = (1, 3, *size)
    assert_ort_parity(m, _rows(trunk, input_shape=shape), shape, seed=seed)


@needs_icconv
def test_icconv_resnet50_parity_cost_and_nodes():
    arch = load_ic_conv(ICCONV / "detection_ic_resnet50_k9.json", "resnet50")
    m = build_backbone(arch, seeded_state_dict("resnet50", seed=1))
    proto = _rows(merge_same_dilation(fold_trunk(m)), input_shape=(1, 3, 64, 64))
    assert_ort_parity(m, proto, (1, 3, 64, 64))
    base = trunk_to_onnx(fold_trunk(build_baseline("resnet50", seeded_state_dict("resnet50", seed=1))),
                         input_shape=(1, 3, 64, 64))
    got, want = count_onnx(proto), count_onnx(base)
    assert (got.params, got.macs) == (want.params, want.macs)
    nodes = _ops(proto)
    for blk in ("layer1.0", "layer2.0", "layer3.2"):  # every IC-Conv conv2 has odd-width branches
        a, r = nodes[f"{blk}.conv3/add_a"], nodes[f"{blk}.conv3/add_r"]
        shortcut = f"{blk}.downsample:out" if blk.endswith(".0") else f"{blk[:-1]}{int(blk[-1]) - 1}:out"
        # shortcut first, then Conv3_A, then Conv3_R: ORT fuses both Adds and the Relu into the convs
        assert list(a.input) == [shortcut, f"{blk}.conv3/A:out"]
        assert list(r.input) == [a.output[0], f"{blk}.conv3/R:out"]
        assert nodes[f"{blk}/relu"].input == [r.output[0]]
    assert {"Col2Im", "Split", "Reshape"} <= {n.op_type for n in proto.graph.node}
    assert nodes["layer2.0.conv2/odd"].op_type == "Slice"  # stride 2 phase split, not a fallback


def test_stride2_basic_and_bottleneck_at_odd_sizes():
    widths = {"2": (37, 21, 40, 30), "3": (100, 77, 79), "4": (300, 5, 207)}  # by stage (128, 256, 512)
    dils = ((1, 1), (2, 3), (3, 2), (4, 1))  # odd and even dh

    def ct(name):
        return ConvTransform(tuple(Branch(d, w) for d, w in zip(dils, widths[name[5]])))

    for bb, names in (("resnet18", ("layer2.0.conv1", "layer2.0.conv2", "layer3.0.conv1", "layer4.0.conv1")),
                      ("resnet50", ("layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"))):
        arch = Arch(backbone=bb, convs={n: ct(n) for n in names})
        m = build_backbone(arch, seeded_state_dict(bb, seed=2))
        trunk = fold_trunk(m)
        for shape in ((1, 3, 75, 53), (1, 3, 64, 96)):
            proto = _rows(trunk, input_shape=shape)
            assert_ort_parity(m, proto, shape)
            nodes = _ops(proto)
            for n in names:
                if n.endswith("conv1") or bb == "resnet50":
                    assert nodes[f"{n}/odd"].op_type == "Slice", n  # stride-2 convs use the phase split
                assert any(k.startswith(f"{n}/") and v.op_type == "Col2Im" for k, v in nodes.items()), n


def test_basic_conv2_keeps_channel_order_and_conv1_reorders_consumer():
    arch = Arch(backbone="resnet18", convs={
        "layer1.0.conv1": ConvTransform((Branch((2, 1), 21), Branch((1, 3), 35), Branch((2, 2), 8)),
                                        tuple(reversed(range(64)))),
        "layer1.0.conv2": ConvTransform((Branch((3, 1), 19), Branch((1, 1), 45))),
        "layer1.1.conv2": ConvTransform((Branch((1, 2), 64),)),  # aligned: plain branches form
    })
    m = build_backbone(arch, seeded_state_dict("resnet18", seed=4))
    trunk = fold_trunk(m)
    proto = _rows(trunk, input_shape=(1, 3, 49, 63))
    assert_ort_parity(m, proto, (1, 3, 49, 63))
    nodes = _ops(proto)
    assert nodes["layer1.0.conv1/concat"].input[-1] == "layer1.0.conv1/rest/relu:out"  # [direct..., remainders]
    # conv2 feeds the residual add: direct and remainder parts interleaved in the original order
    assert list(nodes["layer1.0.conv2/concat"].input) == [
        "layer1.0.conv2/b0:out", "layer1.0.conv2/b0/rest/bias:out", "layer1.0.conv2/b1:out",
        "layer1.0.conv2/b1/rest/bias:out"]
    branches = trunk_to_onnx(trunk, input_shape=(1, 3, 49, 63), opset=18)
    keep = [n for n in branches.graph.node if n.name.startswith("layer1.1.conv2")]
    assert keep == [n for n in proto.graph.node if n.name.startswith("layer1.1.conv2")]


def test_dynamic_shapes_at_several_sizes_and_counts():
    arch = odd_arch("resnet50", random.Random(8), p_conv=1.0)
    sd = seeded_state_dict("resnet50")
    m = build_backbone(arch, sd)
    proto = _rows(merge_same_dilation(fold_trunk(m)), dynamic=True)
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    assert "Shape" in {n.op_type for n in proto.graph.node}
    for shape in [(1, 3, 64, 64), (2, 3, 97, 131), (1, 3, 33, 70)]:
        assert_ort_parity(m, proto, shape)
    base = trunk_to_onnx(fold_trunk(build_baseline("resnet50", sd)), input_shape=(2, 3, 97, 131))
    got, want = count_onnx(proto, (2, 3, 97, 131)), count_onnx(base)
    assert (got.params, got.macs) == (want.params, want.macs)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50"])
def test_params_and_macs_equal_baseline(backbone):
    arch = odd_arch(backbone, random.Random(1), p_conv=1.0)
    sd = seeded_state_dict(backbone)
    got = count_onnx(_rows(merge_same_dilation(fold_trunk(build_backbone(arch, sd))), input_shape=(1, 3, 160, 224)))
    want = count_onnx(trunk_to_onnx(fold_trunk(build_baseline(backbone, sd)), input_shape=(1, 3, 160, 224)))
    assert (got.params, got.macs) == (want.params, want.macs)


def test_resnext_falls_back_to_branches():
    arch = random_arch("resnext101_32x4d", random.Random(6), p_conv=0.3)
    m = build_backbone(arch, seeded_state_dict("resnext101_32x4d"))
    trunk = merge_same_dilation(fold_trunk(m))
    proto = _rows(trunk, input_shape=(1, 3, 48, 40))
    branches = trunk_to_onnx(trunk, input_shape=(1, 3, 48, 40), opset=18)
    assert proto.SerializeToString(deterministic=True) == branches.SerializeToString(deterministic=True)
    assert_ort_parity(m, proto, (1, 3, 48, 40))


def test_opset_below_18_is_refused(capsys):
    arch = odd_arch("resnet18", random.Random(3))
    trunk = fold_trunk(build_backbone(arch))
    with pytest.raises(ValueError, match=r"--opset: got 17, expected 18 or newer") as e:
        trunk_to_onnx(trunk, input_shape=(1, 3, 64, 64), opset=17, form="rows")
    assert "\n" not in str(e.value)
    from natsdeploy.cli import main

    assert main(["export", str(EXAMPLES / "resnet18_nats_c.json"), "--form", "rows", "--opset", "17"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--opset" in err and "17" in err and "18 or newer" in err and len(err.splitlines()) == 1
