"""OrtRunner against PyTorch fp32 on every export form; a file, its bytes and its ModelProto run alike; what it
describes; its one-line errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

from natsdeploy.errors import RuntimeBackendError, UsageError
from natsdeploy.export.onnx import FORMS
from natsdeploy.onnx_utils import to_fp16
from natsdeploy.runners import OrtRunner, ort_session_options
from natsdeploy.verify.parity import DEFAULT_TOLERANCE
from tests.runners.conftest import OUTS, REL, assert_close, rel_err


@pytest.mark.parametrize("form", FORMS)
def test_ort_runs_every_form(net, form):
    ort_runner = OrtRunner(net["files"][form], threads=1)
    assert ort_runner.name == "ort-cpu" and ort_runner.output_names == OUTS
    assert_close(ort_runner.run({"images": net["x"]}), net["ref"], REL)


def test_a_path_bytes_and_a_model_proto_give_the_same_outputs(net):
    """export/api.py and export/int8.py make sessions from serialised bytes, autotune from a ModelProto: one runner."""
    path = net["files"]["branches"]
    runners = [OrtRunner(m, threads=1) for m in (path, str(path), path.read_bytes(), onnx.load(str(path)))]
    outs = [r.run({"images": net["x"]}) for r in runners]
    for got in outs[1:]:
        assert set(got) == set(OUTS)
        for k in OUTS:
            np.testing.assert_array_equal(got[k], outs[0][k])  # one graph, one thread: the same arithmetic
    assert_close(outs[0], net["ref"], REL)
    assert [i.name for i in runners[2].session.get_inputs()] == ["images"]  # the session for callers' metadata


def test_describe_names_onnxruntime_its_version_and_precision(net):
    path = net["files"]["branches"]
    assert OrtRunner(path, threads=1).describe() == {"runtime": "onnxruntime", "version": onnxruntime.__version__,
                                                     "precision": "fp32", "device": "CPUExecutionProvider",
                                                     "threads": 1}
    assert OrtRunner(path, threads=1, precision="int8").describe()["precision"] == "int8"  # the caller's label


def test_an_fp16_graph_runs_behind_its_fp32_inputs(net):
    """`to_fp16` keeps fp32 inputs and outputs: the runner feeds fp32, and the error is fp16's, not fp32's."""
    r = OrtRunner(to_fp16(onnx.load(str(net["files"]["branches"]))), threads=1, precision="fp16")
    err = rel_err(r.run({"images": net["x"]}), net["ref"])
    assert r.describe()["precision"] == "fp16" and REL < err < DEFAULT_TOLERANCE["fp16"], err


def test_session_options_are_those_for_fair_timing():
    so = ort_session_options(threads=3, level="basic")
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (3, 1)
    assert so.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("make, expected", [
    (lambda p: OrtRunner(p, providers=("NoSuchExecutionProvider",)),
     r"^providers: got \['NoSuchExecutionProvider'\] not available in onnxruntime .*, expected some of \["),
    (lambda p: OrtRunner(42), r"^model: got a int, expected an ONNX file path, serialised bytes or an onnx.ModelProto$"),
    (lambda p: OrtRunner(p, level="max"), r"^level: got 'max', expected one of \['disable', 'basic', 'extended', 'all'\]$"),
])
def test_bad_requests_raise_one_line(net, make, expected):
    with pytest.raises(RuntimeBackendError, match=expected) as e:
        make(net["files"]["branches"])
    assert "\n" not in str(e.value)
    assert isinstance(e.value, UsageError) and isinstance(e.value, RuntimeError)  # old callers caught RuntimeError
