"""One small runner interface for every backend: feed named numpy arrays, get named numpy arrays.

`TorchRunner` runs a backbone module, `OrtRunner` an ONNX file on ONNX Runtime, and
`natsdeploy.export.tensorrt.TrtRunner` a TensorRT engine. Heavy imports happen on construction.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["Runner", "TorchRunner", "OrtRunner", "ort_session_options"]


class Runner(Protocol):
    name: str
    output_names: Sequence[str]

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; outputs are host numpy arrays keyed by output name."""
        ...


class TorchRunner:
    """A torchvision-compatible ResNet returning c2..c5 (and logits) like the exported graph."""

    def __init__(self, model: Any, *, device: str = "cpu", output_names: Sequence[str] = ("c2", "c3", "c4", "c5"),
                 channels_last: bool = False, fp16: bool = False) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last, self.fp16 = channels_last, fp16
        self.output_names = tuple(output_names)
        self.name = f"torch-{self.device.type}"

    def forward(self, x):
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        out = {}
        for i in range(1, 5):
            x = getattr(m, f"layer{i}")(x)
            out[f"c{i + 1}"] = x
        if "logits" in self.output_names:
            out["logits"] = m.fc(self.torch.flatten(m.avgpool(x), 1))
        return {k: out[k] for k in self.output_names}

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(next(iter(feed.values())))).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            out = self.forward(x)
        return {k: v.float().cpu().numpy() for k, v in out.items()}


def ort_session_options(*, threads: int | None = None, optimized_model_path: str | None = None,
                        level: str = "all") -> Any:
    """Session options for fair timing: no idle spinning, one inter-op thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if optimized_model_path:
        so.optimized_model_filepath = optimized_model_path
    return so


class OrtRunner:
    """An ONNX file on ONNX Runtime (CPU by default; CUDA when onnxruntime-gpu provides it)."""

    def __init__(self, path: str | os.PathLike[str], *, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None, level: str = "all") -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise RuntimeError(f"onnxruntime providers {missing} not available here (have {available}); "
                               "install onnxruntime-gpu (extra 'gpu') for CUDA")
        self.session = ort.InferenceSession(str(path), sess_options=ort_session_options(threads=threads, level=level),
                                            providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.name = "ort-" + ("cuda" if "CUDAExecutionProvider" in providers else "cpu")

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = next(iter(feed.values()))
        outs = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(self.output_names, outs))
