"""natsdeploy.runners: `create` is the one backend switch, every runner describes what ran, and importing the
package loads no runtime."""

from __future__ import annotations

import subprocess
import sys

import pytest

from natsdeploy import runners
from natsdeploy.errors import RuntimeBackendError, UsageError
from natsdeploy.runners import BACKENDS, OpenVinoRunner, OrtRunner, TorchRunner, create, describe_line
from tests.helpers import torch_cuda, trt_importable
from tests.runners.conftest import OUTS, REL, assert_close

NO_TRT_RUN = "no CUDA GPU (torch sees none) or no TensorRT: a TensorRT engine cannot run here"


@pytest.mark.parametrize("backend, cls, options", [
    ("torch", TorchRunner, {"output_names": OUTS}),
    ("ort", OrtRunner, {"threads": 1}),
    ("openvino", OpenVinoRunner, {"threads": 1, "precision": "f32"}),
])
def test_create_makes_each_backends_runner(net, backend, cls, options):
    r = create(backend, net["model"] if backend == "torch" else net["files"]["branches"], **options)
    assert type(r) is cls and tuple(r.output_names) == OUTS
    assert_close(r.run({"images": net["x"]}), net["ref"], REL)
    d = r.describe()
    assert {"runtime", "version", "precision", "device"} <= set(d) and d["precision"] == "fp32"
    assert describe_line(r) == f"{d['runtime']} {d['version']} {d['device']} (fp32)"


@pytest.mark.skipif(not (torch_cuda() and trt_importable()), reason=NO_TRT_RUN)
def test_create_trt_runs_an_engine(net, tmp_path):  # pragma: no cover - needs an NVIDIA GPU
    from natsdeploy.export.tensorrt import build_engine
    from natsdeploy.runners.tensorrt import TrtRunner

    engine = build_engine(net["files"]["branches"], tmp_path / "b.engine", input_shape=net["x"].shape)
    r = create("trt", engine)
    assert type(r) is TrtRunner and r.describe()["precision"] == "fp32"
    assert r.describe()["runtime"] in ("TensorRT", "TensorRT-RTX")
    assert_close(r.run({"images": net["x"]}), net["ref"], 1e-3)  # TensorRT may pick TF32 tactics


@pytest.mark.skipif(torch_cuda(), reason="a CUDA GPU is present: create('trt') may run here")
def test_create_trt_without_a_gpu_is_one_line(net):
    """No TensorRT: the install command; TensorRT(-RTX) without a GPU: the runner says it needs one."""
    with pytest.raises(UsageError) as e:
        create("trt", net["files"]["branches"])
    msg = str(e.value)
    assert "\n" not in msg
    if trt_importable():
        assert isinstance(e.value, RuntimeBackendError) and msg.startswith("device: got 'cuda' with no CUDA device")
    else:
        assert "TensorRT is not importable" in msg and "pip install" in msg


@pytest.mark.parametrize("backend", ["tvm", "ORT", ""])
def test_an_unknown_backend_is_a_one_line_usage_error(backend):
    with pytest.raises(UsageError) as e:
        create(backend, None)
    assert str(e.value) == f"backend: got {backend!r}, expected one of ['torch', 'ort', 'openvino', 'trt']"
    assert BACKENDS == ("torch", "ort", "openvino", "trt")


def test_the_old_trt_runner_path_is_the_same_class():
    from natsdeploy.export.tensorrt import TrtRunner as old
    from natsdeploy.runners.tensorrt import TrtRunner

    assert old is TrtRunner and runners.TrtRunner is TrtRunner


_LOADED = """
import sys
import natsdeploy.runners
from natsdeploy.runners import BACKENDS, OPENVINO_PRECISIONS, create, onednn_cap_below_avx512, openvino_supports
print(sorted(m for m in ("torch", "onnxruntime", "openvino", "tensorrt", "tensorrt_rtx") if m in sys.modules))
"""


def test_importing_the_package_loads_no_runtime():
    """The names resolve on first use (PEP 562): the package, its backend table and OpenVINO's precision helpers
    load neither torch nor any runtime (bench's flag checks import them)."""
    out = subprocess.run([sys.executable, "-c", _LOADED], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    with pytest.raises(AttributeError, match="no attribute 'NoSuchRunner'"):
        runners.NoSuchRunner  # noqa: B018
