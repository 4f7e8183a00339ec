"""natsdeploy.export.tensorrt without a TensorRT build: choosing the API, the refusals,
and the audit's reading of a build log (lines in the format TensorRT-RTX 1.7 logs under DETAILED verbosity)."""

from __future__ import annotations

import importlib.util

import pytest

from natsdeploy.export.tensorrt import (audit_concats, by_profile, engine_layers, layer_counts, require_tensorrt,
                                      sync_counts)
from natsdeploy.errors import UsageError
from tests.conftest import EXAMPLES
from tests.helpers import assert_exit_2

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None


def _line(name: str, kind: str, ins=(), outs=()) -> str:
    t = lambda names: ", ".join(f"{{ Name: {n}, Dimensions: [1,8,4,4], Datatype: Float }}" for n in names)  # noqa: E731
    return (f"Name: {name}, LayerType: {kind}, Inputs: [ {t(ins)} ], Constants: [], Outputs: [ {t(outs)} ], "
            "TacticName: , StreamId: 0, Metadata: ")


GOOD = [_line("layer2.0.conv1_myl0_1", "correlation", ["x"], ["c1"]),
        _line("__mye1_myl0_2", "signal"), _line("__mye2_myl0_3", "wait"),
        _line("layer2.0.conv2/b0_myl0_4", "correlation", ["c1"], ["layer2.0.conv2:concat.1_myl0"]),
        _line("layer2.0.conv2/b1_myl0_5", "correlation", ["c1"], ["layer2.0.conv2:concat.1_myl0"]),
        _line("layer2.0.conv3_myl0_6", "correlation", ["layer2.0.conv2:concat.1_myl0"], ["y"])]


def test_engine_layers_counts_and_sync_from_the_layers_message():
    layers = engine_layers([("VERBOSE", "Engine generation completed"), ("VERBOSE", "Layers:\n" + "\n".join(GOOD))])
    assert [l.name for l in layers][:2] == ["layer2.0.conv1_myl0_1", "__mye1_myl0_2"]
    assert layers[3].inputs == ("c1",) and layers[3].outputs == ("layer2.0.conv2:concat.1_myl0",)
    assert layer_counts(layers) == {"correlation": 4, "signal": 1, "wait": 1}
    assert sync_counts(layers) == {"wait": 1, "signal": 1}


def test_audit_passes_when_branches_write_one_buffer_read_by_the_consumer():
    (a,) = audit_concats(engine_layers(["Layers:\n" + "\n".join(GOOD)]), ["layer2.0.conv2"]).values()
    assert a["eliminated"] and a["branch_layers"] == 2 and a["consumers"] == ["layer2.0.conv3_myl0_6"]


@pytest.mark.parametrize("kind, name", [("concatenation", "layer2.0.conv2/concat"), ("kgen", "__myl_Move_myl0_9"),
                                        ("Reformat", "reformat"), ("copy", "c")])
def test_audit_fails_on_a_concat_copy_move_or_reformat_between_branches_and_consumer(kind, name):
    lines = [_line("layer2.0.conv2/b0_myl0_4", "correlation", ["c1"], ["b0"]),
             _line("layer2.0.conv2/b1_myl0_5", "correlation", ["c1"], ["b1"]),
             _line(name, kind, ["b0", "b1"], ["cat"]), _line("layer2.0.conv3_myl0_6", "correlation", ["cat"], ["y"])]
    a = audit_concats(engine_layers(lines), ["layer2.0.conv2"])["layer2.0.conv2"]
    assert not a["eliminated"] and a["copy_layers"] == [name] and len(a["written_tensors"]) == 2


def test_audit_fails_when_the_branches_are_not_found():
    a = audit_concats(engine_layers(GOOD), ["layer3.1.conv2"])["layer3.1.conv2"]
    assert not a["eliminated"] and a["branch_layers"] == 0


def test_tensorrt_10_engine_layer_information_format():
    log = ["Layer(CaskConvolution): layer2.0.conv2/b0 + layer2.0.conv2/b0/relu, Tactic: 0x1, c1 (Half[1,8,4,4]) -> "
           "layer2.0.conv2:concat (Half[1,16,4,4])",
           "Layer(CaskConvolution): layer2.0.conv2/b1, Tactic: 0x2, c1 (Half[1,8,4,4]) -> layer2.0.conv2:concat (Half[1,16,4,4])",
           "Layer(Reformat): layer2.0.conv2:concat copy, Tactic: 0x0, layer2.0.conv2:concat (Half[1,16,4,4]) -> r (Half[1,16,4,4])"]
    layers = engine_layers(log)
    assert [l.type for l in layers] == ["CaskConvolution", "CaskConvolution", "Reformat"]
    a = audit_concats(layers, ["layer2.0.conv2"])["layer2.0.conv2"]
    assert a["branch_layers"] == 2 and a["copy_layers"] == ["layer2.0.conv2:concat copy"] and not a["eliminated"]


def test_trt_choice_must_be_known():
    with pytest.raises(UsageError, match=r"^--trt: got 'fast', expected one of \['auto', 'tensorrt', 'rtx'\]$"):
        require_tensorrt("fast")


@pytest.mark.skipif(HAS_TRT, reason="enterprise TensorRT is importable here")
def test_missing_flavour_is_one_usage_line_with_the_install_command():
    with pytest.raises(UsageError) as e:
        require_tensorrt("tensorrt")
    msg = str(e.value)
    assert msg.startswith("--engine: TensorRT is not importable here (tensorrt: ") and "\n" not in msg
    assert "pip install 'natsdeploy[trt]'" in msg


@pytest.mark.skipif(HAS_TRT or HAS_RTX, reason="a TensorRT is importable here")
def test_no_tensorrt_at_all_names_both_extras():
    with pytest.raises(UsageError, match=r"natsdeploy\[trt-rtx\].*natsdeploy\[trt\]"):
        require_tensorrt("auto")


@pytest.mark.parametrize("form", ["rows", "auto"])
def test_engine_with_rows_or_auto_is_refused_before_any_work(tmp_path, capsys, form):
    out = tmp_path / "o"
    assert_exit_2(["export", EXAMPLES / "resnet18_nats_c.json", "--engine", "--form", form, "--out", out], capsys,
                  contains=["Col2Im", f"got {form!r}", "['branches', 'sum', 'function']"], absent=[out])


def test_bad_precision_and_aux_streams(tmp_path, capsys):
    ex = EXAMPLES / "resnet18_nats_c.json"
    assert_exit_2(["export", ex, "--precision", "fp8", "--out", tmp_path / "o"], capsys, contains="--precision: got 'fp8'")
    assert_exit_2(["export", ex, "--engine", "--trt-aux-streams", "-1", "--out", tmp_path / "o"], capsys,
                  contains="--trt-aux-streams", absent=[tmp_path / "o"])


def test_fp16_export_runs_on_ort_within_the_fp16_tolerance_at_equal_cost(tmp_path, capsys):
    """--precision fp16: fp16 weights, fp32 images/outputs behind Casts; ORT CPU parity vs PyTorch fp32."""
    import json

    import numpy as np
    import onnx
    import onnxruntime as ort

    from natsdeploy.cli import main
    from natsdeploy.verify.parity import DEFAULT_TOLERANCE

    out = tmp_path / "o"
    assert main(["export", str(EXAMPLES / "resnet18_nats_c.json"), "--precision", "fp16", "--form", "function",
                 "--input-shape", "1x3x64x96", "--latency-pairs", "0", "--openvino", "off", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["export"]["precision"] == "fp16" and rep["cost"]["equal"]
    for key in ("model", "baseline"):
        p = rep["parity"][key]
        assert p["passed"] and all(o["tolerance"] == DEFAULT_TOLERANCE["fp16"] for o in p["outputs"].values())
        assert max(o["rel_err"] for o in p["outputs"].values()) > 1e-5  # really computed in fp16
        m = onnx.load(str(out / f"{key}.onnx"))
        assert {t.data_type for t in m.graph.initializer if t.dims and len(t.dims) == 4} == {onnx.TensorProto.FLOAT16}
        assert [i.type.tensor_type.elem_type for i in m.graph.input] == [onnx.TensorProto.FLOAT]
        assert {o.type.tensor_type.elem_type for o in m.graph.output} == {onnx.TensorProto.FLOAT}
        s = ort.InferenceSession(str(out / f"{key}.onnx"), providers=["CPUExecutionProvider"])
        y = s.run(None, {"images": np.zeros((1, 3, 64, 96), np.float32)})
        assert all(a.dtype == np.float32 for a in y)
    fp32 = tmp_path / "fp32"
    assert main(["export", str(EXAMPLES / "resnet18_nats_c.json"), "--form", "function", "--input-shape", "1x3x64x96",
                 "--latency-pairs", "0", "--openvino", "off", "--out", str(fp32)]) == 0
    rep32 = json.loads((fp32 / "report.json").read_text())
    assert rep32["cost"]["model"] == rep["cost"]["model"] and rep32["cost"]["baseline"] == rep["cost"]["baseline"]
    assert "fp16" in capsys.readouterr().out


# -- --trt-shapes: the optimization profiles of a dynamic engine, each rule one line, exit 2, nothing written --
P = "1x3x64x64:1x3x64x96:1x3x128x128"


@pytest.mark.parametrize("extra, contains", [
    (["--trt-shapes", "1x3x64x64:1x3x64x96"], "--trt-shapes: got '1x3x64x64:1x3x64x96', expected MIN:OPT:MAX, each NxCxHxW"),
    (["--trt-shapes", "1x3x64:1x3x64x96:1x3x128x128"], "--trt-shapes: got '1x3x64:1x3x64x96:1x3x128x128', expected MIN:OPT:MAX"),
    (["--trt-shapes", "0x3x64x64:1x3x64x96:1x3x128x128"], "with positive integers"),
    (["--engine", "--trt-shapes", P], f"--trt-shapes: got {P} without dynamic, expected it only with engine and dynamic"),
    (["--dynamic", "--trt-shapes", P], f"--trt-shapes: got {P} without engine, expected it only with engine and dynamic"),
    (["--trt-shapes", P], f"--trt-shapes: got {P} without engine and dynamic"),
    (["--engine", "--dynamic", "--trt-shapes", "1x4x64x64:1x3x64x96:1x3x128x128"], "expected C = 3 in min, opt and max"),
    (["--engine", "--dynamic", "--trt-shapes", "1x3x64x64:1x3x64x96:1x3x128x120"],
     "--trt-shapes: got 1x3x64x64:1x3x64x96:1x3x128x120, expected H and W multiples of 32"),
    (["--engine", "--dynamic", "--trt-shapes", "1x3x64x64:2x3x64x96:1x3x128x128"],
     "--trt-shapes: got 1x3x64x64:2x3x64x96:1x3x128x128, expected min <= opt <= max in every dimension"),
    (["--engine", "--dynamic", "--trt-shapes", P, "--trt-shapes", "2x3x128x128:2x3x160x192:4x3x256x256",
      "--input-shape", "1x3x160x192"], "expected input_shape 1x3x160x192 (where parity runs) inside one profile's"),
])
def test_trt_shapes_rules_exit_2_in_one_line(tmp_path, capsys, extra, contains):
    out = tmp_path / "o"
    argv = ["export", EXAMPLES / "resnet18_nats_c.json", "--input-shape", "1x3x64x96", *extra, "--out", out]
    if "--input-shape" in extra:
        argv = ["export", EXAMPLES / "resnet18_nats_c.json", *extra, "--out", out]
    assert_exit_2(argv, capsys, contains=contains, absent=[out])


def test_by_profile_counts_a_static_engine_once():
    assert list(by_profile(engine_layers(GOOD))) == [0] and len(by_profile(engine_layers(GOOD))[0]) == len(GOOD)
    assert by_profile([]) == {0: []}


def test_optimizer_log_is_in_the_section_and_a_logged_copy_fails_the_audit(monkeypatch, tmp_path):
    """build_engines_for_export with enterprise TensorRT's decision lines in the build log (a stand-in `build`):
    the per-Concat retarget/copy findings land in each engine's `optimizer_log`, and a copy generated for a
    transformed conv's Concat fails the TensorRT audit; TensorRT-RTX's log (none) leaves it to the layer list."""
    from natsdeploy.export import tensorrt
    from natsdeploy.export.report import format_tensorrt

    lines = [("VERBOSE", "Layers:\n" + "\n".join(GOOD)), ("VERBOSE", "Eliminating concatenation layer2.0.conv2/concat"),
             ("VERBOSE", "Retargeting layer2.0.conv2/b0 to layer2.0.conv2:concat"),
             ("VERBOSE", "Generating copy for layer2.0.conv2/b1 to layer2.0.conv2:concat because input is not movable.")]

    class Api:
        flavour, version, strongly_typed, trt = "tensorrt", "10.9.0", False, None

        def describe(self):
            return {"flavour": "tensorrt", "module": "tensorrt", "version": "10.9.0", "typing": "weak"}

    def fake_build(api, onnx_path, engine_path, **kw):
        engine_path.write_bytes(b"engine")
        return tensorrt.BuildResult(engine_path, 0.1, 6, list(lines), api, "weak")

    monkeypatch.setattr(tensorrt, "build", fake_build)
    monkeypatch.setattr(tensorrt, "gpu_available", lambda: False)
    s = tensorrt.build_engines_for_export(tmp_path, Api(), precision="fp32", dynamic=False, input_shape=(1, 3, 64, 96),
                                          split_names=["layer2.0.conv2"])
    log = s.model["optimizer_log"]
    assert log["logged"] and log["eliminated_concats"] == 1 and log["copy_free_concats"] == 0
    assert log["concats"]["layer2.0.conv2/concat"]["retargeted"] == ["layer2.0.conv2/b0"]
    assert log["transformed_concats"] == {"layer2.0.conv2/concat": False} and log["passed"] is False
    assert s.model["concat_audit"]["passed"] and not s.audit_passed  # the layer list passes; the logged copy fails
    assert any("transformed convs' Concats 0/1 copy-free (FAIL: layer2.0.conv2/concat)" in x for x in format_tensorrt(s.to_dict()))
    lines[:] = lines[:1]  # no decision lines, as TensorRT-RTX logs
    s = tensorrt.build_engines_for_export(tmp_path, Api(), precision="fp32", dynamic=False, input_shape=(1, 3, 64, 96),
                                          split_names=["layer2.0.conv2"])
    assert s.model["optimizer_log"]["logged"] is False and s.model["optimizer_log"]["passed"] is None and s.audit_passed
