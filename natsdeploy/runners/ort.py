"""The ONNX Runtime runner, and the session options every ONNX Runtime session in natsdeploy uses.

Every `onnxruntime.InferenceSession` in the package is made here, by `OrtRunner`: from a file, from
serialised bytes or from an `onnx.ModelProto`. Callers that need the session's own API (input and
output metadata, a subset of outputs) use `OrtRunner.session`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from natsdeploy.errors import RuntimeBackendError

__all__ = ["OrtRunner", "ort_session_options", "ORT_LEVELS"]

ORT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
"""ONNX Runtime's graph optimisation levels by the names `ort_session_options(level=...)` takes."""

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def ort_session_options(*, threads: int | None = None, optimized_model_path: str | None = None,
                        level: str = "all") -> ort.SessionOptions:
    """Session options for fair timing: no idle spinning, one inter-op thread, `threads` intra-op threads."""
    if level not in ORT_LEVELS:
        raise RuntimeBackendError(f"level: got {level!r}, expected one of {list(ORT_LEVELS)}")
    so = ort.SessionOptions()
    so.graph_optimization_level = ORT_LEVELS[level]
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if optimized_model_path:
        so.optimized_model_filepath = optimized_model_path
    return so


def _model_source(model: Any) -> str | bytes:
    """What `InferenceSession` reads: a path as a string, serialised bytes as they are, a ModelProto serialised."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    raise RuntimeBackendError(f"model: got a {type(model).__name__}, expected an ONNX file path, serialised bytes "
                              "or an onnx.ModelProto")


class OrtRunner:
    """An ONNX model on ONNX Runtime (CPU by default; CUDA when onnxruntime-gpu provides it).

    `model` is a file path, the serialised model (bytes) or an `onnx.ModelProto`. The session uses
    `ort_session_options(threads=threads, level=level)`. `precision` labels what the graph computes for
    `describe`, which the caller knows (a QDQ graph is "int8"; a `to_fp16` graph, "fp16", keeps fp32 inputs
    and outputs); by default it is read from the input type (fp16 for a float16 input, else fp32).
    """

    def __init__(self, model: Any, *, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None, level: str = "all", precision: str | None = None) -> None:
        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise RuntimeBackendError(f"providers: got {missing} not available in onnxruntime {ort.__version__}, "
                                      f"expected some of {available} (for CUDA, install onnxruntime-gpu: extra 'gpu')")
        self.session = ort.InferenceSession(_model_source(model), sess_options=ort_session_options(
            threads=threads, level=level), providers=list(providers))
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_dtype = _NUMPY.get(first.type, np.float32)
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.providers = tuple(providers)
        self.name = "ort-" + ("cuda" if "CUDAExecutionProvider" in providers else "cpu")
        self.precision = precision or ("fp16" if self.input_dtype == np.float16 else "fp32")

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feed the first array to the model's input (as the input's float type); every output by name."""
        x = next(iter(feed.values()))
        outs = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)})
        return dict(zip(self.output_names, outs))

    def describe(self) -> dict[str, Any]:
        """`{"runtime": "onnxruntime", "version", "precision", "device" (the first provider), "threads"}`."""
        threads = self.session.get_session_options().intra_op_num_threads
        return {"runtime": "onnxruntime", "version": ort.__version__, "precision": self.precision,
                "device": self.providers[0], "threads": int(threads)}
