"""One small runner interface for every backend: feed named numpy arrays, get named numpy arrays.

A backend is a module here with one runner class: `torch.TorchRunner` (a backbone module),
`ort.OrtRunner` (an ONNX model on ONNX Runtime), `openvino.OpenVinoRunner` (an ONNX model on
OpenVINO's CPU plugin) and `tensorrt.TrtRunner` (a TensorRT engine); `detector.RuntimeBody` puts any
of them inside a torchvision detector. `create` is the one place that maps a backend name to its
runner, so a new backend is a module here plus a branch in `create`.

`import natsdeploy.runners` is cheap: the names below load their module (and its runtime) on first
use, so `from natsdeploy.runners import OrtRunner` imports ONNX Runtime and nothing else.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from natsdeploy.errors import RuntimeBackendError

if TYPE_CHECKING:
    from natsdeploy.runners.openvino import (OPENVINO_PRECISIONS, OpenVinoRunner, onednn_cap_below_avx512,
                                             openvino_capabilities, openvino_supports)
    from natsdeploy.runners.ort import OrtRunner, ort_session_options
    from natsdeploy.runners.tensorrt import TrtRunner
    from natsdeploy.runners.torch import TorchRunner

__all__ = ["BACKENDS", "Runner", "create", "describe_line", "TorchRunner", "OrtRunner", "OpenVinoRunner", "TrtRunner",
           "OPENVINO_PRECISIONS", "ort_session_options", "openvino_capabilities", "openvino_supports",
           "onednn_cap_below_avx512"]

BACKENDS = ("torch", "ort", "openvino", "trt")
"""The backend names `create` takes."""

_HOME = {"TorchRunner": "torch", "OrtRunner": "ort", "ort_session_options": "ort", "OpenVinoRunner": "openvino",
         "OPENVINO_PRECISIONS": "openvino", "openvino_capabilities": "openvino", "openvino_supports": "openvino",
         "onednn_cap_below_avx512": "openvino", "TrtRunner": "tensorrt"}


def __getattr__(name: str) -> Any:
    """The public names of the backend modules, each imported on first use (PEP 562)."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))


class Runner(Protocol):
    """What every backend's runner offers: named numpy arrays in and out, and what ran them."""

    name: str
    output_names: Sequence[str]

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; outputs are host numpy arrays keyed by output name."""
        ...

    def describe(self) -> dict[str, Any]:
        """What ran: at least `runtime` (its label), `version`, `precision` (fp32, fp16, bf16, int8) and `device`."""
        ...


def create(backend: str, model: Any, **options: Any) -> Runner:
    """The runner of `backend` (torch, ort, openvino or trt) for `model`, with that runner's keyword `options`.

    `model` is what the backend runs: an nn.Module (torch), an ONNX path, bytes or ModelProto (ort), an ONNX
    path or ModelProto (openvino), a serialised engine's path (trt). An unknown backend is a one-line
    `RuntimeBackendError` (a `UsageError`).
    """
    if backend == "torch":
        from natsdeploy.runners.torch import TorchRunner

        return TorchRunner(model, **options)
    if backend == "ort":
        from natsdeploy.runners.ort import OrtRunner

        return OrtRunner(model, **options)
    if backend == "openvino":
        from natsdeploy.runners.openvino import OpenVinoRunner

        return OpenVinoRunner(model, **options)
    if backend == "trt":
        from natsdeploy.runners.tensorrt import TrtRunner

        return TrtRunner(model, **options)
    raise RuntimeBackendError(f"backend: got {backend!r}, expected one of {list(BACKENDS)}")


def describe_line(runner: Runner) -> str:
    """What ran, in one line for reports: `onnxruntime 1.23.2 CPUExecutionProvider (fp32)`."""
    d = runner.describe()
    return f"{d['runtime']} {d['version']} {d['device']} ({d['precision']})"
