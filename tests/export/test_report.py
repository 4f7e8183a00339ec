"""The export report (natsdeploy.export.report): typed sections and their dicts, the verdict they add up to,
and the one table formatter behind ONNX Runtime's and OpenVINO's rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from natsdeploy.export.report import (CostSection, ExportReport, Int8Section, LatencySection, ParitySection,
                                      TensorRTSection, Verdict, format_report, table_row)
from natsdeploy.timing.latency import PairedTiming
from natsdeploy.verify.count import Counts
from natsdeploy.verify.parity import compare

OUTS = {"c2": np.ones((1, 4, 2, 2), np.float32), "c5": np.full((1, 8, 1, 1), 2.0, np.float32)}


def _parity(err: float = 1e-6):
    return compare({k: v + err for k, v in OUTS.items()}, OUTS, tolerance=1e-4)


def _timing() -> PairedTiming:
    return PairedTiming(baseline_ms=(10.0, 10.5, 9.5, 10.0), transformed_ms=(8.0, 8.5, 7.5, 8.0), warmup_runs=3)


def _report(*, openvino: bool = True, int8: Int8Section | None = None, cost_model: Counts | None = None,
            tensorrt: TensorRTSection | None = None) -> ExportReport:
    t = _timing()
    ov_parity = {"runtime": "OpenVINO 2026.0 CPU", "precision": "f32",
                 "inference_precision": {"requested": "f32", "ran": "f32"}, "passed": True,
                 "model": _parity().to_dict(), "baseline": _parity().to_dict()} if openvino else None
    ov_latency = {**t.to_dict(), "runtime": "OpenVINO 2026.0 CPU", "precision": "f32", "threads": 2,
                  "performance_hint": "LATENCY", "input_shape": [1, 3, 64, 96]} if openvino else None
    return ExportReport(
        arch={"backbone": "resnet18", "transformed_convs": 6, "provenance": {}}, weights="seeded",
        export={"form": "branches", "precision": "fp32", "opset": 17, "dynamic": False, "input_shape": [1, 3, 64, 96],
                "branches_in_graph": 32, "conv_nodes": {"model": 46, "baseline": 20}, "function_nodes": 0},
        cost=CostSection(cost_model or Counts(1000, 50000), Counts(1000, 50000)),
        parity=ParitySection(runtime="onnxruntime 1.0 CPUExecutionProvider", model=_parity(), baseline=_parity(),
                             openvino=ov_parity),
        latency=LatencySection(t, runtime="onnxruntime 1.0", intra_op_threads=2, input_shape=(1, 3, 64, 96),
                               openvino=ov_latency),
        alignment={"target": "cuda-int8", "block": 32, "aligned": False, "unaligned_branches": [{}, {}],
                   "mac_share": 0.25, "full_rate": 32},
        machine={"cpu": "test"}, int8=int8, tensorrt=tensorrt)


def _int8(passed: bool) -> Int8Section:
    return Int8Section(calibration={}, quantizer={}, qdq={}, accuracy={}, cost={}, openvino=None, latency=None,
                       verdict={"passed": passed})


def _tensorrt(audit: bool) -> TensorRTSection:
    return TensorRTSection(flavour="tensorrt-rtx", module="tensorrt_rtx", version="1.7", typing="strong",
                           precision="fp32", max_aux_streams=None, model={"concat_audit": {"passed": audit}},
                           baseline={}, run="built, not run (no GPU)")


def test_sections_to_dict_are_the_report_entries_and_json_round_trips():
    r = _report()
    d = r.to_dict()
    assert list(d) == ["arch", "weights", "export", "cost", "parity", "latency", "alignment", "machine", "verdict"]
    assert d["cost"] == {"model": {"params": 1000, "macs": 50000}, "baseline": {"params": 1000, "macs": 50000},
                         "equal": True, "counted_from": r.cost.counted_from}
    assert d["parity"]["model"] == _parity().to_dict() and d["parity"]["reference"].startswith("PyTorch")
    assert d["latency"]["pairs"] == 4 and d["latency"]["openvino"]["precision"] == "f32"
    assert d["latency"]["input_shape"] == [1, 3, 64, 96] and d["latency"]["intra_op_threads"] == 2
    assert json.loads(json.dumps(d)) == d  # what report.json holds, key for key
    assert "openvino" not in _report(openvino=False).to_dict()["latency"]  # absent, as before, when OpenVINO is off
    assert list(_report(int8=_int8(True)).to_dict())[-1] == "int8"
    assert _report(tensorrt=_tensorrt(True)).to_dict()["tensorrt"]["run"] == "built, not run (no GPU)"


@pytest.mark.parametrize("kwargs, passed, keys", [
    ({}, True, ["passed", "cost_equal", "parity_passed"]),
    ({"cost_model": Counts(1001, 50000)}, False, ["passed", "cost_equal", "parity_passed"]),
    ({"int8": _int8(False)}, False, ["passed", "cost_equal", "parity_passed", "int8_passed"]),
    ({"int8": _int8(True)}, True, ["passed", "cost_equal", "parity_passed", "int8_passed"]),
    ({"tensorrt": _tensorrt(False)}, False, ["passed", "cost_equal", "parity_passed", "tensorrt_audit_passed"]),
])
def test_verdict_adds_up_the_sections(kwargs, passed, keys):
    v = _report(**kwargs).verdict
    assert v.passed is passed and list(v.to_dict()) == keys


def test_a_failing_openvino_row_fails_parity():
    r = _report()
    bad = ParitySection(runtime=r.parity.runtime, model=r.parity.model, baseline=r.parity.baseline,
                        openvino={**r.parity.openvino, "passed": False})
    assert r.parity.passed and not bad.passed and not Verdict(True, bad.passed).passed


def test_one_formatter_for_every_row():
    """OpenVINO's parity and latency rows are ONNX Runtime's rows (same cells, same columns) under their own title."""
    text = format_report(_report().to_dict(), arch_path="my arch.json")
    lines = text.splitlines()
    model_rows = [ln for ln in lines if ln.startswith("  model ")]
    parity_rows = [ln for ln in model_rows if "(tol" in ln]
    latency_rows = [ln for ln in model_rows if "(tol" not in ln]
    assert len(parity_rows) == 2 and parity_rows[0] == parity_rows[1]  # ORT and OpenVINO: equal numbers, equal text
    assert len(latency_rows) == 2 and latency_rows[0] == latency_rows[1]
    s = _timing().transformed
    assert latency_rows[0] == table_row("model", ((s.p50, ">10.2f"), (s.p90, ">10.2f"), (s.cv, ">8.1%")))
    assert latency_rows[0] == "  model           8.00      8.35    5.1%"
    assert "  parity vs PyTorch (OpenVINO 2026.0 CPU, f32), max|err| / max|ref|:" in lines
    assert "  latency, OpenVINO 2026.0 CPU (f32), 2 threads, 4 interleaved pairs:" in lines
    assert "fix: natsdeploy align 'my arch.json' --multiple 32 -o 'my arch_a32.json')" in text
    assert "OpenVINO" not in format_report(_report(openvino=False).to_dict())


def test_table_row_aligns_cells():
    assert table_row("params", ((1234567, ">12,"), (7, ">4")), width=8, tail="  equal") == \
        "  params     1,234,567   7  equal"
    assert table_row("model", (("c2 1.0e-06", ""), ("c5 2.0e-06", "")), sep="  ") == "  model     c2 1.0e-06  c5 2.0e-06"
