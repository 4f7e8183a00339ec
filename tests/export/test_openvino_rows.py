"""The export report's OpenVINO rows: parity and latency on OpenVINO CPU, precision recorded, verdict counted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from natsdeploy.cli import main
from natsdeploy.runners import OpenVinoRunner, openvino_supports
from tests.conftest import EXAMPLES

EX = str(EXAMPLES / "resnet18_nats_c.json")
FAST = ["--input-shape", "1x3x64x96", "--warmup-s", "0"]


def _export(tmp_path, capsys, *args):
    out = tmp_path / "o"
    code = main(["export", EX, *FAST, "--out", str(out), *args])
    cap = capsys.readouterr()
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return code, cap.out, cap.err, report


def test_parity_and_latency_rows_at_f32(tmp_path, capsys):
    code, out, _, rep = _export(tmp_path, capsys, "--latency-pairs", "2")
    assert code == 0, out
    ov = rep["parity"]["openvino"]
    assert ov["runtime"].startswith("OpenVINO ") and ov["precision"] == "f32" and ov["passed"]
    for key in ("model", "baseline"):
        outs = ov[key]["outputs"]
        assert set(outs) == {"c2", "c3", "c4", "c5"} and all(o["tolerance"] == 1e-4 for o in outs.values())
    lat = rep["latency"]["openvino"]
    assert lat["pairs"] == 2 and lat["precision"] == "f32" and lat["threads"] >= 1 and "verdict" in lat
    assert "parity vs PyTorch (OpenVINO" in out and "latency, OpenVINO" in out and "(f32)" in out


def test_bf16_is_recorded_with_its_tolerance(tmp_path, capsys):
    """Where OpenVINO computes bf16, its error is bf16's and so is the tolerance; where the CPU lacks
    bf16 (AVX2), f32 ran: fp32 error and tolerance, one printed line, and both precisions in the JSON."""
    code, out, _, rep = _export(tmp_path, capsys, "--latency-pairs", "0", "--openvino", "bf16", "--form", "function")
    assert code == 0, out
    ov = rep["parity"]["openvino"]
    ran = "bf16" if openvino_supports("bf16") else "f32"
    assert ov["precision"] == ran and ov["inference_precision"] == {"requested": "bf16", "ran": ran}
    assert ov["passed"] and rep["latency"] is None
    errs = [o["rel_err"] for o in ov["model"]["outputs"].values()]
    tol = 5e-2 if ran == "bf16" else 1e-4
    assert all(o["tolerance"] == tol for o in ov["model"]["outputs"].values())
    if ran == "bf16":
        assert 1e-4 < max(errs) < 5e-2  # really bf16: far above fp32 rounding
    else:
        assert max(errs) < 1e-4 and "bf16 was asked for and f32 ran" in out


def test_off_skips_the_rows(tmp_path, capsys):
    code, out, _, rep = _export(tmp_path, capsys, "--latency-pairs", "0", "--openvino", "off")
    assert code == 0 and rep["parity"]["openvino"] is None and "OpenVINO" not in out


def test_a_wrong_openvino_result_fails_the_verdict(tmp_path, capsys, monkeypatch):
    real = OpenVinoRunner.run
    monkeypatch.setattr(OpenVinoRunner, "run", lambda self, feed: {k: np.zeros_like(v) for k, v in real(self, feed).items()})
    code, out, _, rep = _export(tmp_path, capsys, "--latency-pairs", "0")
    assert code == 1 and "verdict: FAIL" in out
    assert rep["parity"]["model"]["passed"] and not rep["parity"]["openvino"]["passed"]
    assert not rep["verdict"]["parity_passed"]


@pytest.mark.parametrize("value", ["fp32", "F32", ""])
def test_bad_openvino_value_exits_2_and_writes_nothing(tmp_path, capsys, value):
    code, _, err, rep = _export(tmp_path, capsys, "--openvino", value)
    assert code == 2 and "--openvino: got" in err and err.count("\n") == 1 and rep is None
    assert not (tmp_path / "o").exists()


def test_without_the_openvino_extra_the_rows_are_one_line(tmp_path, capsys, monkeypatch):
    """The rows are on by default: without OpenVINO (blocked here as an install without the extra would
    lack it) the export passes on its ONNX Runtime rows and says so in one line; asked for (bf16), exit 2."""
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)
    code, out, _, rep = _export(tmp_path, capsys, "--latency-pairs", "1")
    line = 'OpenVINO: skipped (the openvino extra is not installed: pip install "natsdeploy[openvino]")'
    assert code == 0 and rep["verdict"]["passed"], out
    assert rep["parity"]["openvino"] == {"skipped": line} and "openvino" not in rep["latency"]
    assert rep["parity"]["model"]["passed"] and rep["parity"]["baseline"]["passed"]
    assert [ln.strip() for ln in out.splitlines() if "OpenVINO" in ln] == [line]
    assert "onnxruntime" in out and "verdict: PASS" in out
