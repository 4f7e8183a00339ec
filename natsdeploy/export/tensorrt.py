"""TensorRT engines from the exported ONNX (extra 'trt'), a runner, and a layer audit.

Written against TensorRT's documented Python API (10.x): `trt.Builder`, `OnnxParser`,
`IBuilderConfig` (fp16 flag, optimisation profile, timing cache), `IEngineInspector`. TensorRT is
imported lazily; without it every entry point raises `TensorRTMissing` with an install hint.
NOT RUN in this project's CI or development machines (no TensorRT available there).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TensorRTMissing", "require_tensorrt", "build_engine", "TrtRunner", "audit_concats",
           "build_engines_for_export"]


class TensorRTMissing(RuntimeError):
    """TensorRT (and a CUDA GPU) is needed for this step."""


def require_tensorrt():
    try:
        import tensorrt as trt  # noqa: PLC0415
    except Exception as e:  # ImportError, or a stub package that fails on import
        from natsdeploy.shapes import UsageError

        raise UsageError(f"--engine: TensorRT is not importable here ({type(e).__name__}); install it on a machine "
                         "with an NVIDIA GPU: pip install 'natsdeploy[trt]'") from None
    return trt


def build_engine(onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], *, fp16: bool = False,
                 dynamic: bool = False, input_shape: Sequence[int] = (1, 3, 800, 1216),
                 max_shape: Sequence[int] | None = None, timing_cache: str | os.PathLike[str] | None = None,
                 workspace_gib: float = 4.0) -> Path:
    """Parse the ONNX file, build and serialise an engine next to it (atomic write)."""
    trt = require_tensorrt()
    from natsdeploy.files import atomic_write_bytes

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not _parse(parser, Path(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer info for the audit
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if dynamic:
        shape = tuple(int(d) for d in input_shape)
        hi = tuple(int(d) for d in (max_shape or (shape[0] * 2, 3, shape[2] * 2, shape[3] * 2)))
        lo = (1, 3, 64, 64)
        profile = builder.create_optimization_profile()
        profile.set_shape(network.get_input(0).name, lo, shape, hi)
        config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    if cache_path:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return atomic_write_bytes(Path(engine_path), bytes(serialized))


def _parse(parser, onnx_path: Path) -> bool:
    """Parse the file; a model with model-local functions (``--form function``) is parsed inlined.

    TensorRT's ONNX parser keeps local functions by name only, so the per-conv overloads of
    `MixedDilationConv` would all get the first one's body. Inlined, the engine runs the branch form;
    a MixedDilationConv plugin instead reads model.onnx as written (each node's attributes describe it).
    """
    import onnx

    from natsdeploy.onnx_utils import inline_functions

    model = onnx.load(str(onnx_path))
    if not len(model.functions):
        return parser.parse_from_file(str(onnx_path))
    return parser.parse(inline_functions(model).SerializeToString(), str(onnx_path))


class TrtRunner:
    """Runs a serialised engine with torch CUDA tensors as device buffers (no pycuda needed)."""

    def __init__(self, engine_path: str | os.PathLike[str], *, device: str = "cuda") -> None:
        trt = require_tensorrt()
        import torch

        self.torch = torch
        self.device = torch.device(device)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = tuple(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.name = "tensorrt"
        self.stream = torch.cuda.Stream(device=self.device)

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(next(iter(feed.values())), dtype=np.float32)).to(self.device)
        name = self.input_names[0]
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        outs = {}
        for o in self.output_names:
            shape = tuple(self.context.get_tensor_shape(o))
            outs[o] = torch.empty(shape, dtype=torch.float32, device=self.device)
            self.context.set_tensor_address(o, outs[o].data_ptr())
        with torch.cuda.stream(self.stream):
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outs.items()}

    def layer_info(self) -> dict:
        trt = require_tensorrt()
        inspector = self.engine.create_engine_inspector()
        return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def audit_concats(layer_info: Mapping[str, Any], split_names: Sequence[str]) -> dict[str, bool]:
    """For each transformed conv, True when no engine layer is a Concatenation named after it.

    TensorRT eliminates a Concat by having its producers write into one buffer; a surviving
    layer of type Concatenation (or a copy/reformat named after the Concat) means extra traffic.
    """
    layers = layer_info.get("Layers", [])
    out = {}
    for name in split_names:
        concat_node = f"{name}/concat"
        surviving = [l for l in layers if isinstance(l, Mapping) and concat_node in str(l.get("Name", ""))
                     and str(l.get("LayerType", "")).lower() in ("concatenation", "reformat", "copy")]
        out[name] = not surviving
    return out


def build_engines_for_export(result, *, fp16: bool, dynamic: bool, input_shape: Sequence[int],
                             split_names: Sequence[str]) -> dict:
    """Engines for model.onnx and baseline.onnx, with a parity check and the Concat audit."""
    from natsdeploy.verify.parity import DEFAULT_TOLERANCE, compare
    from natsdeploy.runners import OrtRunner

    out_dir = result.out_dir
    cache = out_dir / "timing.cache"
    suffix = "fp16" if fp16 else "fp32"
    report: dict[str, Any] = {"precision": suffix}
    x = np.random.default_rng(0).standard_normal(tuple(input_shape), dtype=np.float32)
    for key in ("model", "baseline"):
        engine = build_engine(out_dir / f"{key}.onnx", out_dir / f"{key}.{suffix}.engine", fp16=fp16,
                              dynamic=dynamic, input_shape=input_shape, timing_cache=cache)
        runner = TrtRunner(engine)
        ref = OrtRunner(out_dir / f"{key}.onnx").run({"images": x})
        parity = compare(runner.run({"images": x}), ref, tolerance=DEFAULT_TOLERANCE[suffix])
        entry = {"engine": str(engine), "parity_vs_ort": parity.to_dict()}
        if key == "model":
            entry["concat_eliminated"] = audit_concats(runner.layer_info(), split_names)
        report[key] = entry
    return report
