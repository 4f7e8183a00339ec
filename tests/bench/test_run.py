"""`natsdeploy bench` end to end on a tiny input (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from natsdeploy.cli import main
from natsdeploy.runners import OPENVINO_PRECISIONS, openvino_supports
from natsdeploy.targets import detect_target
from tests.conftest import EXAMPLES
from tests.helpers import assert_exit_2, torch_cuda, trt_importable

EX = str(EXAMPLES / "resnet18_nats_c.json")
TINY = ["--input-shape", "1x3x64x96", "--runs", "3", "--warmup-s", "0"]

TOP_KEYS = {"schema", "arch", "settings", "machine", "results"}
RESULT_KEYS = {"backend", "device", "precision", "inference_precision", "input_shape", "notes", "baseline_ms", "transformed_ms",
               "ratio_transformed_over_baseline", "verdict", "pairs", "warmup_runs", "raw"}
STAT_KEYS = {"n", "p50", "p90", "p99", "mean", "cv"}


def test_bench_torch_and_ort_writes_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    assert main(["bench", EX, "--backend", "torch", "ort", *TINY, "--batch", "2", "--json", str(js),
                 "--plot", str(png), "--per-conv"]) == 0
    out = capsys.readouterr().out
    assert "transformed is" in out and "baseline" in out
    rep = json.loads(js.read_text())
    assert set(rep) >= TOP_KEYS and rep["schema"] == "natsdeploy-bench/1"
    assert [(r["backend"], r["input_shape"][0]) for r in rep["results"]] == [("torch", 1), ("torch", 2), ("ort", 1), ("ort", 2)]
    for r in rep["results"]:
        assert set(r) == RESULT_KEYS and set(r["baseline_ms"]) == STAT_KEYS and r["pairs"] == 3
        assert len(r["raw"]["transformed_ms"]) == 3
        lo, hi = r["ratio_transformed_over_baseline"]["ci95"]
        assert lo <= r["ratio_transformed_over_baseline"]["median"] <= hi
    assert {"cpu", "versions", "logical_cpus"} <= set(rep["machine"])
    assert rep["per_conv"] and {p["conv"] for p in rep["per_conv"]} <= set(json.loads(open(EX).read())["convs"])
    assert {(p["pairs"], p["warmup_s"]) for p in rep["per_conv"]} == {(3, 0.0)}  # the user's --runs and --warmup-s
    block = detect_target().block  # the per-conv table: each row's interval and widths, * off this CPU's block
    assert f"not a multiple of this CPU's {block}-channel block" in out
    for p in rep["per_conv"]:
        (line,) = [ln for ln in out.splitlines() if ln.startswith(f"  {p['conv']:<16} {p['backend']:<7}")]
        lo, hi = p["ci95"]
        widths = " ".join(f"d{d[0]}:{c}" if d[0] == d[1] else f"d({d[0]},{d[1]}):{c}" for d, c in p["branches"])
        marked = " ".join(w + ("*" if c % block else "") for w, (_, c) in zip(widths.split(), p["branches"]))
        assert f"{p['ratio']:.3f}x [{lo:.3f}, {hi:.3f}]" in line and line.endswith(marked)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_from_exported_onnx(tmp_path, capsys):
    assert main(["export", EX, "--input-shape", "1x3x64x96", "--latency-pairs", "0", "--out", str(tmp_path / "e")]) == 0
    assert main(["bench", "--onnx", str(tmp_path / "e"), "--backend", "ort", *TINY]) == 0
    assert "ort cpu fp32" in capsys.readouterr().out


@pytest.mark.parametrize("args, expected", [
    ([EX, "--backend", "tvm"], "--backend"),
    ([EX, "--device", "tpu"], "--device"),
    ([EX, "--runs", "0"], "--runs"),
    ([EX, "--runs", "x"], "--runs"),
    ([EX, "--threads", "-2"], "--threads"),
    ([EX, "--input-shape", "3x224"], "--input-shape"),
    (["--backend", "torch"], "arch"),
    (["--onnx", "/nonexistent", "--backend", "ort"], "--onnx"),
    ([EX, "--runs", "3", "--duration-s", "1"], "not allowed with"),
])
def test_bad_flags_exit_2(capsys, args, expected):
    assert_exit_2(["bench", *args], capsys, contains=expected)


@pytest.mark.skipif(torch_cuda(), reason="a CUDA GPU is present: bench --backend trt may run here")
def test_trt_backend_without_a_gpu_exits_2(capsys):
    """No TensorRT: the install command. TensorRT(-RTX) but no GPU: one line saying engines need one."""
    err = assert_exit_2(["bench", EX, "--backend", "trt"], capsys, contains="--backend trt")
    assert ("no CUDA GPU" in err) if trt_importable() else ("TensorRT is not importable" in err and "pip install" in err)


def test_bench_openvino_records_its_precision(tmp_path, capsys):
    """bf16 where OpenVINO computes it (AVX-512 bf16/AMX); elsewhere f32 ran, said in one line, both kept."""
    js = tmp_path / "b.json"
    assert main(["bench", EX, "--backend", "openvino", *TINY, "--precision", "bf16", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    rep = json.loads(js.read_text())
    assert rep["settings"]["openvino_precision"] == "bf16"
    (r,) = rep["results"]
    ran = "bf16" if openvino_supports("bf16") else "f32"
    assert set(r) == RESULT_KEYS and (r["backend"], r["device"]) == ("openvino", "cpu")
    assert r["precision"] == OPENVINO_PRECISIONS[ran] and r["inference_precision"] == {"requested": "bf16", "ran": ran}
    assert f"INFERENCE_PRECISION_HINT={ran}" in r["notes"][0] and r["pairs"] == 3
    assert f"openvino cpu {OPENVINO_PRECISIONS[ran]}" in out
    fallback = "bf16 was asked for and f32 ran"
    assert (fallback in out) == (ran == "f32") and (fallback in " ".join(r["notes"])) == (ran == "f32")


def test_bench_openvino_from_exported_function_form(tmp_path, capsys):
    assert main(["export", EX, "--form", "function", "--input-shape", "1x3x64x96", "--latency-pairs", "0",
                 "--openvino", "off", "--out", str(tmp_path / "e")]) == 0
    assert main(["bench", "--onnx", str(tmp_path / "e"), "--backend", "openvino", *TINY]) == 0
    assert "openvino cpu fp32" in capsys.readouterr().out


@pytest.mark.parametrize("args, expected", [
    ([EX, "--backend", "openvino", "--precision", "fp8"], "--precision: got 'fp8'"),
    ([EX, "--backend", "ort", "--precision", "bf16"], "without --backend openvino"),
])
def test_bad_openvino_flags_exit_2(capsys, args, expected):
    assert_exit_2(["bench", *args], capsys, contains=expected)
