"""`natsdeploy export` end to end (`export_arch` through the command): files, report, exit codes, no partial outputs."""

from __future__ import annotations

import dataclasses
import json
import random
import shlex
from pathlib import Path

import onnx
import pytest
import torch

from natsdeploy.cli import main
from tests.conftest import EXAMPLES
from tests.helpers import random_arch, seeded_state_dict

SMALL_SHAPE = "1x3x64x96"


def _run(args, capsys):
    code = main(["export", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


# the command end to end on a basic-block and a bottleneck backbone; graph parity on every backbone is
# tests/export/test_onnx.py::test_parity_every_backbone, cost equality tests/verify/test_count.py
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_export_basic_and_bottleneck(tmp_path, capsys, backbone):
    arch = random_arch(backbone, random.Random(2), p_conv=0.7).save(tmp_path / "arch.json")
    out = tmp_path / "out"
    code, stdout, _ = _run([str(arch), "--input-shape", SMALL_SHAPE, "--out", str(out), "--latency-pairs", "2",
                            "--warmup-s", "0"], capsys)
    assert code == 0, stdout
    assert sorted(p.name for p in out.iterdir()) == ["baseline.onnx", "model.onnx", "report.json"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["cost"]["equal"] and rep["cost"]["model"] == rep["cost"]["baseline"]
    assert rep["parity"]["model"]["passed"] and set(rep["parity"]["model"]["outputs"]) == {"c2", "c3", "c4", "c5"}
    assert rep["latency"]["pairs"] == 2 and rep["latency"]["intra_op_threads"] >= 1
    assert "torch.manual_seed(0)" in rep["weights"] and "random weights" in stdout
    assert "verdict: PASS" in stdout
    m = onnx.load(str(out / "model.onnx"))
    assert [o.name for o in m.graph.output] == ["c2", "c3", "c4", "c5"] and m.graph.input[0].name == "images"


def test_reexport_is_byte_identical_and_weights_used(tmp_path, capsys):
    sd = seeded_state_dict("resnet18", seed=4)
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    args = [str(EXAMPLES / "resnet18_nats_c.json"), "--weights", str(tmp_path / "w.pth"), "--input-shape",
            SMALL_SHAPE, "--latency-pairs", "0", "--dynamic", "--outputs", "logits"]
    assert _run([*args, "--out", str(tmp_path / "a")], capsys)[0] == 0
    assert _run([*args, "--out", str(tmp_path / "b")], capsys)[0] == 0
    for f in ("model.onnx", "baseline.onnx"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["weights"].endswith("w.pth") and rep["latency"] is None and "logits" in rep["parity"]["model"]["outputs"]
    init = {i.name: i for i in onnx.load(str(tmp_path / "a" / "baseline.onnx")).graph.initializer}
    assert torch.allclose(torch.tensor(onnx.numpy_helper.to_array(init["fc.weight"])), sd["fc.weight"])


def test_parity_failure_exits_1(tmp_path, capsys):
    code, stdout, _ = _run([str(EXAMPLES / "resnet18_nats_c.json"), "--input-shape", SMALL_SHAPE, "--out",
                            str(tmp_path / "o"), "--latency-pairs", "0", "--tolerance", "0"], capsys)
    assert code == 1 and "verdict: FAIL" in stdout  # float32 rounding differs from 0 somewhere


@pytest.mark.parametrize("args, expected", [
    (["MISSING"], "existing file"),
    (["BAD"], "summing to"),
    (["EX", "--input-shape", "1x3x64"], "--input-shape"),
    (["EX", "--weights", "R34"], "weights["),
    (["EX", "--weights", "NOFILE"], "existing .pth"),
    (["EX", "--opset", "9"], "--opset"),
    (["EX", "--form", "fancy"], "--form"),
    (["EX", "--precision", "fp8"], "--precision"),
    (["EX", "--fp16", "--precision", "fp32"], "--precision"),
    (["EX", "--latency-pairs", "-1"], "--latency-pairs"),
])
def test_bad_inputs_exit_2_and_write_nothing(tmp_path, capsys, args, expected):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "natsdeploy-arch", "version": 1, "backbone": "resnet18",
                               "convs": {"layer2.0.conv1": {"branches": [{"dilation": 2, "channels": 100}]}}}))
    r34 = tmp_path / "r34.pth"
    if "R34" in args:
        torch.save(seeded_state_dict("resnet34"), r34)
    sub = {"MISSING": str(tmp_path / "nope.json"), "BAD": str(bad), "EX": str(EXAMPLES / "resnet18_nats_c.json"),
           "R34": str(r34), "NOFILE": str(tmp_path / "none.pth")}
    out = tmp_path / "out"
    code, _, err = _run([sub.get(a, a) for a in args] + ["--out", str(out)], capsys)
    assert code == 2 and expected in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None,
                    reason="TensorRT is installed here; the missing-TensorRT message cannot be shown")
def test_engine_without_tensorrt_is_a_clear_error(tmp_path, capsys):
    code, _, err = _run([str(EXAMPLES / "resnet18_nats_c.json"), "--engine", "--trt", "tensorrt", "--out",
                         str(tmp_path / "o")], capsys)
    assert code == 2 and "TensorRT is not importable" in err and not (tmp_path / "o").exists()


def _export_for_target(tmp_path, capsys, target: str) -> tuple[str, dict]:
    """Export the ResNet-18 example for `target`: (stdout, the report's alignment section)."""
    code, stdout, _ = _run([str(EXAMPLES / "resnet18_nats_c.json"), "--input-shape", SMALL_SHAPE, "--out",
                            str(tmp_path / "o"), "--latency-pairs", "0", "--target", target], capsys)
    assert code == 0
    return stdout, json.loads((tmp_path / "o" / "report.json").read_text())["alignment"]


def test_report_has_alignment_for_the_target(tmp_path, capsys):
    from natsdeploy.align import unaligned_branches
    from natsdeploy.arch import load_arch

    ex = EXAMPLES / "resnet18_nats_c.json"
    stdout, al = _export_for_target(tmp_path, capsys, "cuda-int8")
    expected = unaligned_branches(load_arch(ex), 32)
    assert al["target"] == "cuda-int8" and al["block"] == 32 and not al["aligned"]
    assert [(u["conv"], u["branch"], u["channels"]) for u in al["unaligned_branches"]] == \
        [(u.conv, u.index, u.channels) for u in expected]
    assert al["total_macs"] == json.loads((tmp_path / "o" / "report.json").read_text())["cost"]["model"]["macs"]
    assert 0 < al["mac_share"] < 1
    assert f"alignment (cuda-int8, block 32): {len(expected)} branches not a multiple of 32 carry " in stdout
    assert f"natsdeploy align {shlex.quote(str(ex))} --multiple 32" in stdout  # the real path, as check prints it


def test_report_names_branches_narrower_than_the_full_rate_width(tmp_path, capsys):
    from natsdeploy.align import unaligned_branches
    from natsdeploy.arch import load_arch

    ex = EXAMPLES / "resnet18_nats_c.json"
    stdout, al = _export_for_target(tmp_path, capsys, "ort-cpu")
    assert al["full_rate"] == 4 * al["block"]  # ONNX Runtime: 4 blocks per pass, on any CPU
    narrow = unaligned_branches(load_arch(ex), al["full_rate"])
    assert [(u["conv"], u["branch"], u["channels"]) for u in al["narrow_branches"]] == \
        [(u.conv, u.index, u.channels) for u in narrow]
    assert f"  full rate ({al['full_rate']} channels): {len(narrow)} narrower branches carry " in stdout
    aligned = ex.with_name(f"{ex.stem}_a{al['full_rate']}.json")
    assert (f"natsdeploy align {shlex.quote(str(ex))} --multiple {al['full_rate']} -o {shlex.quote(str(aligned))})"
            in stdout)


def test_bad_target_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = _run([str(EXAMPLES / "resnet18_nats_c.json"), "--target", "npu", "--out", str(out)], capsys)
    assert code == 2 and "--target: got 'npu'" in err and err.count("\n") == 1 and not out.exists()


# -- the library call: ExportOptions, the deprecated keywords, the report written once -------------------------
QUIET = {"log": lambda line: None}
SMALL = (1, 3, 64, 96)


def test_export_options_defaults_are_todays():
    from natsdeploy.export.api import ExportOptions

    o = ExportOptions()
    assert dataclasses.asdict(o) == {
        "weights": None, "input_shape": (1, 3, 800, 1216), "dynamic": False, "opset": None, "form": "branches",
        "logits": False, "tolerance": None, "latency_pairs": 20, "warmup_s": 2.0, "threads": None, "seed": 0,
        "precision": "fp32", "openvino": "f32", "target": None, "engine": False, "trt": "auto",
        "trt_aux_streams": None, "calibration": None, "calibration_images": 64, "int8_activations": "s8",
        "int8_reduce_range": False, "trt_shapes": ()}
    assert ExportOptions(input_shape=[2, 3, 64, 96]).input_shape == (2, 3, 64, 96)  # any sequence, kept as a tuple
    two = ExportOptions(engine=True, dynamic=True, input_shape=(1, 3, 64, 96),
                        trt_shapes=[[[1, 3, 64, 64], [1, 3, 64, 96], [1, 3, 128, 128]],
                                    [[2, 3, 128, 128], [2, 3, 160, 192], [4, 3, 256, 256]]])
    assert two.trt_shapes == (((1, 3, 64, 64), (1, 3, 64, 96), (1, 3, 128, 128)),
                              ((2, 3, 128, 128), (2, 3, 160, 192), (4, 3, 256, 256)))  # tuples of profiles
    int8 = ExportOptions(precision="int8", calibration="synthetic", dynamic=True, engine=True, int8_reduce_range=True)
    assert int8.dynamic and int8.engine and int8.int8_reduce_range  # ORT's calibrator takes a dynamic graph


@pytest.mark.parametrize("kwargs, expected", [
    ({"input_shape": (1, 3, 64)}, "input_shape: got (1, 3, 64), expected (N, 3, H, W)"),
    ({"input_shape": (1, 1, 64, 64)}, "input_shape: got (1, 1, 64, 64), expected"),
    ({"form": "fancy"}, "form: got 'fancy', expected one of ['branches', 'sum', 'rows', 'function', 'auto']"),
    ({"precision": "fp8"}, "precision: got 'fp8', expected one of ['fp32', 'fp16', 'int8']"),
    ({"openvino": "off"}, "openvino: got 'off', expected one of ['f32', 'bf16', 'f16'] or None"),
    ({"trt": "cuda"}, "trt: got 'cuda', expected one of ['auto', 'tensorrt', 'rtx']"),
    ({"int8_activations": "u4"}, "int8_activations: got 'u4', expected one of ['s8', 'u8']"),
    ({"latency_pairs": -1}, "latency_pairs: got -1, expected an integer >= 0"),
    ({"latency_pairs": 2.5}, "latency_pairs: got 2.5, expected an integer >= 0"),
    ({"seed": True}, "seed: got True, expected an integer >= 0"),
    ({"threads": 0}, "threads: got 0, expected an integer >= 1 or None"),
    ({"warmup_s": -1.0}, "warmup_s: got -1.0, expected a number >= 0"),
    ({"tolerance": float("nan")}, "tolerance: got nan, expected a number >= 0 or None"),
    ({"dynamic": "yes"}, "dynamic: got 'yes', expected True or False"),
    ({"opset": 9}, "opset: got 9, expected an integer in 13.."),
    ({"form": "rows", "opset": 17}, "opset: got 17, expected 18 or newer for form 'rows' (Col2Im)"),
    ({"target": "npu"}, "target: got 'npu', expected one of ['ort-cpu', "),
    ({"weights": 3}, "weights: got 3, expected a .pth path, 'imagenet', a state dict or None"),
    ({"precision": "int8"}, "calibration: got None with precision 'int8', expected a COCO-format folder"),
    ({"precision": "int8", "calibration": "synthetic", "form": "sum"}, "form: got 'sum' with precision 'int8'"),
    ({"precision": "int8", "calibration": "synthetic", "engine": True, "int8_activations": "u8"},
     "int8_activations: got 'u8' with engine, expected 's8' (TensorRT takes symmetric int8 only, zero point 0)"),
    ({"int8_reduce_range": True}, "int8_reduce_range: got True with precision 'fp32', expected it only with precision"),
    ({"int8_reduce_range": 1}, "int8_reduce_range: got 1, expected True or False"),
    ({"trt_shapes": "1x3x64x64:1x3x64x96:1x3x128x128"}, "trt_shapes: got '1x3x64x64:1x3x64x96:1x3x128x128', "
     "expected a tuple of (min, opt, max) profiles"),
    ({"trt_shapes": (((1, 3, 64, 64), (1, 3, 64, 96)),)}, "trt_shapes: got (((1, 3, 64, 64), (1, 3, 64, 96)),), expected"),
    ({"trt_shapes": (((1, 3, 64, 64), (1, 3, 64, 96), (1, 3, 128, 128)),), "dynamic": True},
     "trt_shapes: got 1x3x64x64:1x3x64x96:1x3x128x128 without engine, expected it only with engine and dynamic"),
    ({"trt_shapes": (((1, 3, 64, 64), (1, 3, 64, 96), (1, 3, 128, 128)),), "engine": True},
     "trt_shapes: got 1x3x64x64:1x3x64x96:1x3x128x128 without dynamic, expected it only with engine and dynamic"),
    ({"trt_shapes": (((1, 1, 64, 64), (1, 3, 64, 96), (1, 3, 128, 128)),), "engine": True, "dynamic": True},
     "trt_shapes: got 1x1x64x64:1x3x64x96:1x3x128x128, expected C = 3 in min, opt and max"),
    ({"trt_shapes": (((1, 3, 64, 64), (1, 3, 64, 100), (1, 3, 128, 128)),), "engine": True, "dynamic": True},
     "trt_shapes: got 1x3x64x64:1x3x64x100:1x3x128x128, expected H and W multiples of 32"),
    ({"trt_shapes": (((1, 3, 64, 128), (1, 3, 64, 96), (1, 3, 128, 128)),), "engine": True, "dynamic": True},
     "trt_shapes: got 1x3x64x128:1x3x64x96:1x3x128x128, expected min <= opt <= max in every dimension"),
    ({"trt_shapes": (((1, 3, 64, 64), (1, 3, 64, 96), (1, 3, 128, 128)),), "engine": True, "dynamic": True,
      "input_shape": (1, 3, 256, 96)}, "trt_shapes: got 1x3x64x64:1x3x64x96:1x3x128x128, expected input_shape "
                                       "1x3x256x96 (where parity runs) inside one profile's min..max"),
])
def test_export_options_reject_a_bad_field_in_one_line(kwargs, expected):
    from natsdeploy.errors import UsageError
    from natsdeploy.export.api import ExportOptions

    with pytest.raises(UsageError) as e:
        ExportOptions(**kwargs)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value), str(e.value)


def test_deprecated_keywords_warn_and_give_the_same_report(tmp_path):
    from natsdeploy import ExportOptions, export_arch, load_arch

    arch = load_arch(EXAMPLES / "resnet18_nats_c.json")
    new = export_arch(arch, tmp_path / "new", ExportOptions(input_shape=SMALL, latency_pairs=0, openvino=None), **QUIET)
    with pytest.warns(DeprecationWarning, match=r"input_shape=\.\.\., latency_pairs=\.\.\., openvino=\.\.\..*ExportOptions"):
        old = export_arch(arch, out_dir=tmp_path / "old", input_shape=SMALL, latency_pairs=0, openvino=None, **QUIET)
    assert old.report == new.report and old.report["export"]["input_shape"] == list(SMALL)
    for name in ("model.onnx", "baseline.onnx", "report.json"):
        assert (tmp_path / "old" / name).read_bytes() == (tmp_path / "new" / name).read_bytes()
    with pytest.raises(TypeError, match="latency_pair"):
        export_arch(arch, tmp_path / "typo", latency_pair=0)  # a misspelt keyword is not an option
    assert not (tmp_path / "typo").exists()


def test_report_json_is_the_sections_and_is_written_once(tmp_path, monkeypatch):
    """report.json is written once, after the verdict, through atomic_write_text, and holds exactly the typed
    sections' to_dict (which is also `result.report`)."""
    from natsdeploy import ExportOptions, export_arch, load_arch
    from natsdeploy.export import api
    from natsdeploy.export.report import CostSection, ExportReport, LatencySection, ParitySection

    writes = []
    real = api.atomic_write_text
    monkeypatch.setattr(api, "atomic_write_text", lambda path, text: writes.append(Path(path).name) or real(path, text))
    result = export_arch(load_arch(EXAMPLES / "resnet18_nats_c.json"), tmp_path / "o",
                         ExportOptions(input_shape=SMALL, latency_pairs=2, warmup_s=0.0), **QUIET)
    assert writes == ["report.json"]
    on_disk = json.loads((tmp_path / "o" / "report.json").read_text())
    s = result.sections
    assert isinstance(s, ExportReport) and isinstance(s.cost, CostSection) and isinstance(s.parity, ParitySection)
    assert isinstance(s.latency, LatencySection) and s.int8 is None and s.tensorrt is None
    assert s.to_dict() == on_disk == result.report
    assert on_disk["cost"] == s.cost.to_dict() and on_disk["parity"] == s.parity.to_dict()
    assert on_disk["latency"] == s.latency.to_dict() and on_disk["verdict"] == s.verdict.to_dict()
    assert on_disk["parity"]["openvino"]["passed"] and "openvino" in on_disk["latency"]  # OpenVINO rows ride along
    assert result.passed and list(on_disk) == ["arch", "weights", "export", "cost", "parity", "latency", "alignment",
                                               "machine", "verdict"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["baseline.onnx", "model.onnx", "report.json"]


def test_pipeline_is_a_deprecated_reexport():
    import importlib
    import sys

    sys.modules.pop("natsdeploy.pipeline", None)
    with pytest.warns(DeprecationWarning, match=r"natsdeploy\.export\.api"):
        old = importlib.import_module("natsdeploy.pipeline")
    from natsdeploy.export import api, cli, report

    assert old.export_arch is api.export_arch and old.ExportResult is api.ExportResult
    assert old.export_cli is cli.export_cli and old.add_export_arguments is cli.add_export_arguments
    assert old.format_report is report.format_report
    import natsdeploy
    import natsdeploy.export

    assert natsdeploy.export_arch is api.export_arch and natsdeploy.ExportOptions is api.ExportOptions
    assert natsdeploy.export.to_onnx.__module__ == "natsdeploy.export.onnx"
