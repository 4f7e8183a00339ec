"""The TensorRT runner: a serialised engine run with torch CUDA tensors as device buffers (``execute_async_v3``).

Which TensorRT API runs it (``tensorrt`` 10/11 or ``tensorrt_rtx``) is `natsdeploy.export.tensorrt`'s
choice (`require_tensorrt`); building engines lives there too. Running one needs a CUDA GPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from natsdeploy.errors import RuntimeBackendError
from natsdeploy.export.tensorrt import VerboseLog, require_tensorrt

__all__ = ["TrtRunner"]


class TrtRunner:
    """Runs a serialised engine (a path, or its bytes) with torch CUDA tensors as device buffers.

    `trt` picks the API (auto, tensorrt or rtx). `precision` labels what the engine was built at for
    `describe` (an fp16-flag engine keeps fp32 inputs and outputs); by default it is read from the
    input's type (fp32 or fp16).
    """

    def __init__(self, engine_path: str | os.PathLike[str] | bytes, *, device: str = "cuda", trt: str = "auto",
                 precision: str | None = None) -> None:
        api = require_tensorrt(trt)
        if not torch.cuda.is_available():
            raise RuntimeBackendError(f"device: got {device!r} with no CUDA device (torch sees none), expected an "
                                      "NVIDIA GPU: a TensorRT engine runs only on one")
        self.api = api
        self.device = torch.device(device)
        self.runtime = api.trt.Runtime(VerboseLog(api.trt))
        data = bytes(engine_path) if isinstance(engine_path, (bytes, bytearray)) else Path(engine_path).read_bytes()
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            shown = "the given bytes" if isinstance(engine_path, (bytes, bytearray)) else str(engine_path)
            raise RuntimeBackendError(f"engine: got {shown} that {api.trt.__name__} {api.version} could not "
                                      "deserialise, expected an engine built by this TensorRT for this GPU")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = api.trt.TensorIOMode
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode.INPUT]
        self.output_names = tuple(n for n in names if self.engine.get_tensor_mode(n) == mode.OUTPUT)
        self.name = api.describe()["flavour"]
        self.stream = torch.cuda.Stream(device=self.device)
        self.precision = precision or ("fp16" if self._dtype(self.input_names[0]) == torch.float16 else "fp32")

    def _dtype(self, name: str) -> torch.dtype:
        t = self.api.trt.DataType
        return {t.FLOAT: torch.float32, t.HALF: torch.float16}[self.engine.get_tensor_dtype(name)]

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feed the first array to the engine's input; every output by name, as fp32 host arrays."""
        name = self.input_names[0]
        x = torch.from_numpy(np.ascontiguousarray(next(iter(feed.values())))).to(self.device, self._dtype(name))
        self._select_profile(name, tuple(x.shape))
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        outs = {}
        for o in self.output_names:
            shape = tuple(self.context.get_tensor_shape(o))
            outs[o] = torch.empty(shape, dtype=self._dtype(o), device=self.device)
            self.context.set_tensor_address(o, outs[o].data_ptr())
        with torch.cuda.stream(self.stream):
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeBackendError(f"input: got shape {tuple(x.shape)}, expected one this engine runs "
                                          f"({self.api.trt.__name__} execute_async_v3 failed)")
        self.stream.synchronize()
        return {k: v.float().cpu().numpy() for k, v in outs.items()}

    def _select_profile(self, name: str, shape: tuple[int, ...]) -> None:
        """With several optimization profiles (`export --trt-shapes`), make the first whose min..max holds
        `shape` the active one (written against the TensorRT 10 API; not run here, no GPU)."""
        if self.engine.num_optimization_profiles <= 1:
            return
        for k in range(self.engine.num_optimization_profiles):
            lo, _, hi = self.engine.get_tensor_profile_shape(name, k)
            if all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                if self.context.active_optimization_profile != k:
                    self.context.set_optimization_profile_async(k, self.stream.cuda_stream)
                    self.stream.synchronize()
                return

    def describe(self) -> dict[str, Any]:
        """`{"runtime": "TensorRT" or "TensorRT-RTX", "version", "precision", "device" (the GPU's name)}`."""
        return {"runtime": "TensorRT-RTX" if self.api.flavour == "rtx" else "TensorRT", "version": self.api.version, "precision": self.precision,
                "device": torch.cuda.get_device_name(self.device)}
