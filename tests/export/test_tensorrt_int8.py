"""int8 TensorRT engines (natsdeploy.export.tensorrt_int8 and `export --precision int8 --engine`): the
requantize audit on constructed layer lists (its failure paths) and on a real TensorRT build of the ResNet-18
example's QDQ graphs (TensorRT-RTX builds ahead of time on the CPU; skipped without any TensorRT)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from natsdeploy.export.tensorrt import EngineLayer, audit_concats, by_profile, engine_layers
from natsdeploy.export.tensorrt_int8 import audit_requantize, audit_requantize_profiles, baseline_conv
from tests.conftest import EXAMPLES
from tests.helpers import assert_exit_2, trt_importable

EX = EXAMPLES / "resnet18_nats_c.json"
EPILOGUE = "__myl_MulAddMulMinMaxRounCastCastMulReluMulMinMaxRounCast_myl0_9"


def _line(name: str, kind: str, ins=(), outs=(), dtype: str = "Int8") -> str:
    """One layer as TensorRT-RTX 1.7 logs it under ProfilingVerbosity.DETAILED."""
    t = lambda names: ", ".join(f"{{ Name: {n}, Dimensions: [1,8,4,4], Datatype: {dtype} }}" for n in names)  # noqa: E731
    return (f"Name: {name}, LayerType: {kind}, Inputs: [ {t(ins)} ], Constants: [], Outputs: [ {t(outs)} ], "
            "TacticName: , StreamId: 0, Metadata: ")


def _layers(lines) -> list[EngineLayer]:
    return engine_layers(["Layers:\n" + "\n".join(lines)])


def _model(between=None, epilogue: str = EPILOGUE) -> list[str]:
    """Two branch convs (each its own tensor) read by one fused epilogue kgen, as the int8 engines have them;
    `between`: (name, type) of a layer put between the branches and the epilogue."""
    lines = [_line("layer2.0.conv1/b0_myl0_4", "correlation", ["x"], ["b0"]),
             _line("__mye1_myl0_5", "signal"), _line("__mye2_myl0_6", "wait"),
             _line("layer2.0.conv1/b1_myl0_7", "correlation", ["x"], ["b1"])]
    if between:
        lines.append(_line(between[0], between[1], ["b0", "b1"], ["q"]))
        lines.append(_line(epilogue, "kgen", ["q"], ["y"]))
    else:
        lines.append(_line(epilogue, "kgen", ["b0", "b1"], ["y"]))
    return lines + [_line("layer2.0.conv2_myl0_10", "correlation", ["y"], ["z"])]


def _baseline(epilogue: str = EPILOGUE) -> list[str]:
    return [_line("layer2.0.conv1_myl0_4", "correlation", ["x"], ["c"]),
            _line(epilogue, "kgen", ["c"], ["y"]),
            _line("layer2.0.conv2_myl0_6", "correlation", ["y"], ["z"])]


def test_branches_read_by_one_epilogue_like_the_baselines_conv_pass():
    a = audit_requantize(_layers(_model()), _layers(_baseline()), ["layer2.0.conv1"])
    c = a["per_conv"]["layer2.0.conv1"]
    assert a["passed"] and c["passed"] and a["passed_convs"] == a["convs"] == 1
    assert c["branch_layers"] == 2 and c["written_tensors"] == 2  # each branch its own tensor: no one buffer
    assert c["consumers"] == [EPILOGUE] and c["consumer_kinds"] == c["baseline_consumer_kinds"] == {"kgen": 1}
    assert c["baseline_layer"] == "layer2.0.conv1_myl0_4" and c["extra_layers"] == []
    assert a["engine"] == {"model": {"kgen": 1}, "baseline": {"kgen": 1}, "equal": True, "extra": {}, "missing": {}}
    # the fp32 one-buffer audit reads the same int8 engine as "not eliminated": it must not be applied to int8
    assert not audit_concats(_layers(_model()), ["layer2.0.conv1"])["layer2.0.conv1"]["eliminated"]


@pytest.mark.parametrize("name, kind", [("layer2.0.conv1/requant", "Quantize"), ("dq", "Dequantize"),
                                        ("reformat", "Reformat"), ("__myl_Move_myl0_8", "kgen"),
                                        ("layer2.0.conv1/concat", "concatenation"), ("c", "copy")])
def test_a_requantize_or_copy_layer_only_the_model_has_fails(name, kind):
    """A Quantize/Dequantize/Reformat/copy/Concat layer between the branches and their epilogue that the
    baseline's conv does not have: the conv fails, the layer is named, and the engine's kinds differ."""
    a = audit_requantize(_layers(_model(between=(name, kind))), _layers(_baseline()), ["layer2.0.conv1"])
    c = a["per_conv"]["layer2.0.conv1"]
    assert not a["passed"] and not c["passed"] and a["passed_convs"] == 0
    assert c["consumers"] == [name] and c["extra_layers"] == [name] and c["requantize_layers"] == [name]
    assert not a["engine"]["equal"] and sum(a["engine"]["extra"].values()) == 1


def test_a_move_named_kernel_the_baseline_also_has_is_not_flagged():
    """ModelOpt's graphs give a `...MoveRelu...` kgen in model and baseline alike: compared, not flagged."""
    move = "__myl_CastMulMulAddAddMoveReluCast_myl0_9"
    assert EngineLayer(move, "kgen", (), ()).is_copy  # the name alone would read as a copy
    a = audit_requantize(_layers(_model(epilogue=move)), _layers(_baseline(epilogue=move)), ["layer2.0.conv1"])
    assert a["passed"] and a["per_conv"]["layer2.0.conv1"]["consumer_kinds"] == {"kgen (copy/move)": 1}
    b = audit_requantize(_layers(_model(epilogue=move)), _layers(_baseline()), ["layer2.0.conv1"])
    assert not b["passed"] and b["per_conv"]["layer2.0.conv1"]["extra_layers"] == [move]
    assert b["engine"]["extra"] == {"kgen (copy/move)": 1} and b["engine"]["missing"] == {"kgen": 1}


def test_missing_branches_or_baseline_conv_fail():
    assert not audit_requantize(_layers(_model()), _layers(_baseline()), ["layer3.0.conv1"])["passed"]
    no_base = [_line("layer2.0.conv10_myl0_4", "correlation", ["x"], ["c"]), _line(EPILOGUE, "kgen", ["c"], ["y"])]
    c = audit_requantize(_layers(_model()), _layers(no_base), ["layer2.0.conv1"])["per_conv"]["layer2.0.conv1"]
    assert not c["passed"] and c["baseline_layer"] is None  # conv10 is not conv1


@pytest.mark.parametrize("name, found", [("layer2.0.conv1_myl0_13", True), ("layer2.0.conv1 [profile 1]_myl1_13", True),
                                         ("layer2.0.conv1 + layer2.0.conv1/relu", True), ("layer2.0.conv1", True),
                                         ("layer2.0.conv1/b0_myl0_3", False), ("layer2.0.conv10_myl0_3", False),
                                         ("xlayer2.0.conv1_myl0_3", False)])
def test_baseline_conv_is_found_by_name(name, found):
    layer = EngineLayer(name, "correlation", ("x",), ("y",))
    assert (baseline_conv([layer], "layer2.0.conv1") is layer) == found


def test_profiles_are_audited_each_and_counted_once():
    """TensorRT lists each profile's layers; profile 1's carry `[profile 1]` in their name or tensors, and
    TensorRT-RTX's generated kernels of that Myelin graph (`_myl1_`) belong with them."""
    import re

    def second(lines):  # profile 1 as TensorRT-RTX logs it: its own Myelin graph, tagged convs and tensors
        lines = [re.sub(r"\{ Name: ([^,]+),", r"{ Name: \1 [profile 1],", ln.replace("_myl0_", "_myl1_")) for ln in lines]
        return [re.sub(r"^Name: (layer[^,]*?)_myl1", r"Name: \1 [profile 1]_myl1", ln) for ln in lines]

    model = _layers(_model() + second(_model()))
    base = _layers(_baseline() + second(_baseline()))
    groups = by_profile(model)
    assert sorted(groups) == [0, 1] and len(groups[0]) == len(groups[1]) == len(_model())
    a = audit_requantize_profiles(model, base, ["layer2.0.conv1"])
    assert a["passed"] and a["profiles"] == 2 and a["per_conv"]["layer2.0.conv1"]["branch_layers"] == 2
    broken = _layers(_model() + second(_model(between=("reformat_myl0_8", "Reformat"))))
    b = audit_requantize_profiles(broken, base, ["layer2.0.conv1"])
    assert not b["passed"] and b["failed_profiles"] == [1]


# -- a real build: export --precision int8 --engine on the ResNet-18 example ---------------------------------
needs_trt = pytest.mark.skipif(not trt_importable(), reason="no TensorRT importable (pip install 'natsdeploy[trt-rtx]')")


@pytest.fixture(scope="module")
def int8_engines(module_tmp, synth_coco):
    import contextlib
    import io

    from natsdeploy.cli import main

    data = synth_coco(train_images=4, val_images=2)
    out = module_tmp("int8-engine") / "o"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["export", str(EX), "--precision", "int8", "--calibration", data, "--calibration-images", "2",
                   "--engine", "--input-shape", "1x3x64x96", "--latency-pairs", "0", "--openvino", "off",
                   "--out", str(out)])
    return {"rc": rc, "out": out, "report": json.loads((out / "report.json").read_text()),
            "printed": printed.getvalue()}


@needs_trt
def test_int8_engines_are_built_from_the_qdq_graphs(int8_engines):
    r, out = int8_engines["report"], int8_engines["out"]
    assert int8_engines["rc"] == 0 and r["verdict"]["passed"] and r["verdict"]["tensorrt_audit_passed"]
    t = r["tensorrt"]
    assert t["precision"] == "int8"
    for key in ("model", "baseline"):
        engine = out / f"{key}.int8.engine"
        assert engine.is_file() and engine.stat().st_size == t[key]["engine_bytes"]
        assert t[key]["profiles"] == [] and "concat_audit" not in t[key]
        convs = t[key]["layer_counts"].get("correlation", t[key]["layer_counts"].get("Convolution"))
        assert t[key]["conv_inputs"] == {"Int8": convs}  # every conv reads int8, as int8_engine_check counts
        if t["flavour"] == "tensorrt-rtx":
            assert "QDQ int8 model" in t[key]["network"]
    assert not sorted(p.name for p in out.iterdir() if p.name.startswith("."))  # no temporary left behind


@needs_trt
def test_int8_requantize_audit_on_the_real_engine(int8_engines):
    t = int8_engines["report"]["tensorrt"]
    a = t["model"]["requantize_audit"]
    from natsdeploy.arch import load_arch

    splits = [n for n, ct in load_arch(EX).convs.items() if len({b.dilation for b in ct.branches}) > 1]
    assert a["passed"] and a["convs"] == a["passed_convs"] == len(splits) > 0
    for name, c in a["per_conv"].items():
        assert c["branch_layers"] >= 2 and c["baseline_layer"] and c["extra_layers"] == [] and c["requantize_layers"] == []
        assert c["consumer_kinds"] == c["baseline_consumer_kinds"]
        if t["flavour"] == "tensorrt-rtx":  # measured: one fused epilogue reads every branch's own tensor
            assert len(c["consumers"]) == 1 and c["consumer_kinds"] == {"kgen": 1}
            assert c["written_tensors"] == c["branch_layers"]
    assert a["engine"]["equal"] and a["engine"]["model"] == a["engine"]["baseline"]
    printed = int8_engines["printed"]
    assert f"concat/requantize audit: {len(splits)}/{len(splits)} transformed convs" in printed
    assert "(equal)" in printed and "int8 convs" in printed


@needs_trt
def test_int8_optimizer_log_is_reported_and_says_rtx_logs_none(int8_engines):
    t = int8_engines["report"]["tensorrt"]
    for key in ("model", "baseline"):
        log = t[key]["optimizer_log"]
        if t["flavour"] == "tensorrt-rtx":
            assert log["logged"] is False and log["passed"] is None and "TensorRT-RTX logs none" in log["note"]
    if t["flavour"] == "tensorrt-rtx":
        assert "TensorRT-RTX logs no optimizer decisions" in int8_engines["printed"]


@needs_trt
def test_a_requantize_layer_put_into_the_real_engines_layers_fails(int8_engines, monkeypatch):
    """The real model engine's layers with a Reformat put between one transformed conv's branches and their
    epilogue: that conv fails and the engine's kinds differ (the audit can fail on a real layer list)."""
    from natsdeploy.export.tensorrt import build

    out = int8_engines["out"]
    from natsdeploy.export.tensorrt import require_tensorrt

    api = require_tensorrt("auto")
    layers = {k: engine_layers(build(api, out / f"{k}.onnx", out / f"{k}.again.engine", int8=True).log)
              for k in ("model", "baseline")}
    name = next(iter(int8_engines["report"]["tensorrt"]["model"]["requantize_audit"]["per_conv"]))
    branches = [x for x in layers["model"] if x.is_conv and f"{name}/b" in x.name]
    written = {t for x in branches for t in x.outputs}
    patched = []
    for x in layers["model"]:
        if set(x.inputs) & written:  # the epilogue now reads the Reformat's output
            patched.append(EngineLayer(f"{name}/reformat", "Reformat", tuple(sorted(written)), ("requantized",)))
            x = dataclasses.replace(x, inputs=tuple(t for t in x.inputs if t not in written) + ("requantized",))
        patched.append(x)
    assert audit_requantize(layers["model"], layers["baseline"], [name])["passed"]
    bad = audit_requantize(patched, layers["baseline"], [name])
    assert not bad["passed"] and bad["per_conv"][name]["extra_layers"] == [f"{name}/reformat"]
    assert bad["engine"]["extra"] == {"Reformat": 1}


@needs_trt
def test_int8_dynamic_engine_with_two_profiles_and_7_bit_weights(tmp_path, synth_coco, capsys):
    """--precision int8 --dynamic: ORT's calibrator runs on the dynamic graph (calibrated at --input-shape);
    the QDQ graph stays dynamic; two profiles per engine, layers counted once, every profile audited;
    --int8-reduce-range gives 7-bit weights."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from natsdeploy.cli import main

    data = synth_coco(train_images=4, val_images=2)
    out = tmp_path / "o"
    rc = main(["export", str(EX), "--precision", "int8", "--calibration", data, "--calibration-images", "2",
               "--int8-reduce-range", "--engine", "--dynamic", "--trt-shapes", "1x3x64x64:1x3x64x96:1x3x128x128",
               "--trt-shapes", "2x3x128x128:2x3x160x192:4x3x256x256", "--input-shape", "1x3x64x96",
               "--latency-pairs", "0", "--openvino", "off", "--out", str(out)])
    printed = capsys.readouterr().out
    r = json.loads((out / "report.json").read_text())
    assert rc == 0 and r["verdict"]["passed"] and r["export"]["dynamic"]
    q = onnx.load(str(out / "model.onnx"))
    assert [d.dim_param for d in q.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    weights = [numpy_helper.to_array(t) for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.dims]
    assert weights and all(int(np.abs(w.astype(np.int16)).max()) <= 64 for w in weights)  # 7-bit
    assert r["int8"]["quantizer"]["reduce_range"] and "(7-bit, reduce_range)" in printed
    s = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    assert s.run(["c5"], {"images": np.zeros((2, 3, 160, 192), np.float32)})[0].shape == (2, 512, 5, 6)
    t = r["tensorrt"]
    want = [{"min": [1, 3, 64, 64], "opt": [1, 3, 64, 96], "max": [1, 3, 128, 128]},
            {"min": [2, 3, 128, 128], "opt": [2, 3, 160, 192], "max": [4, 3, 256, 256]}]
    assert t["model"]["profiles"] == t["baseline"]["profiles"] == want
    assert "profile 1 (min / opt / max): 2x3x128x128 / 2x3x160x192 / 4x3x256x256" in printed
    a = t["model"]["requantize_audit"]
    assert a["passed"] and a["profiles"] == 2 and a["failed_profiles"] == []
    n_convs = sum(1 for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "Conv")
    assert t["model"]["conv_inputs"] == {"Int8": n_convs}  # counted once, not once per profile
    if t["flavour"] == "tensorrt-rtx":
        assert t["model"]["layer_counts"]["correlation"] == n_convs and "layers_note" in t["model"]


def test_u8_activations_with_engine_exit_2(tmp_path, capsys):
    assert_exit_2(["export", EX, "--precision", "int8", "--calibration", "synthetic", "--int8-activations", "u8",
                   "--engine", "--out", tmp_path / "o"], capsys,
                  contains=["--int8-activations: got 'u8' with --engine, expected 's8'", "zero point 0"],
                  absent=[tmp_path / "o"])


def test_reduce_range_without_int8_exits_2(tmp_path, capsys):
    assert_exit_2(["export", EX, "--int8-reduce-range", "--out", tmp_path / "o"], capsys,
                  contains="--int8-reduce-range: got True with --precision fp32, expected it only with --precision int8",
                  absent=[tmp_path / "o"])
