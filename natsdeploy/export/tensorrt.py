"""TensorRT: pick the API, parse the exported ONNX, build an engine, run it.

Three Python APIs, chosen by what is importable (`require_tensorrt`, ``--trt auto|tensorrt|rtx``):

- ``tensorrt`` 10.x (extra ``trt``): weakly typed networks; fp16 is ``BuilderFlag.FP16``;
- ``tensorrt`` 11.x: strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): each tensor
  keeps the type the ONNX gives it, so fp16 comes from an fp16 model (`natsdeploy.onnx_utils.to_fp16`);
- ``tensorrt_rtx`` (TensorRT for RTX, extra ``trt-rtx``): strongly typed too, and its builder
  compiles ahead of time on the CPU by default, so it parses and builds **without a GPU**. No
  timing cache is set for it (a timing cache makes it query a GPU). Its engines run on RTX GPUs
  (Ampere and later).

``auto`` prefers ``tensorrt`` (the engines run on any NVIDIA GPU) and falls back to ``tensorrt_rtx``.
The builder runs with ``ProfilingVerbosity.DETAILED`` and a verbose logger, so its log lists the
engine's layers without deserialising the engine (that needs CUDA); `natsdeploy.export.tensorrt_audit`
reads it. The function form is parsed as written: each `MixedDilationConv.<conv>` node finds its own
model-local function (`natsdeploy.export.function`). Running an engine is `natsdeploy.runners.tensorrt.TrtRunner`
(also importable from here): it needs a CUDA GPU and torch CUDA buffers, and uses ``execute_async_v3`` and
tensor addresses, which all three APIs share.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TRT_CHOICES", "TrtApi", "BuildResult", "require_tensorrt", "parse_onnx", "build", "build_engine",
           "TrtRunner", "gpu_available", "require_trt_runtime"]

TRT_CHOICES = ("auto", "tensorrt", "rtx")
_MODULES = {"tensorrt": "tensorrt", "rtx": "tensorrt_rtx"}
_INSTALL = {"tensorrt": "pip install 'natsdeploy[trt]' (TensorRT; on a machine with an NVIDIA GPU)",
            "rtx": "pip install 'natsdeploy[trt-rtx]' (TensorRT-RTX; builds on the CPU)"}


@dataclass(frozen=True)
class TrtApi:
    """One importable TensorRT: the module, which flavour it is and its version."""

    trt: Any
    flavour: str  # "tensorrt" or "rtx"
    version: str

    @property
    def strongly_typed(self) -> bool:
        return self.flavour == "rtx" or int(self.version.split(".")[0]) >= 11

    def describe(self) -> dict[str, Any]:
        return {"flavour": "tensorrt-rtx" if self.flavour == "rtx" else "tensorrt", "module": self.trt.__name__,
                "version": self.version, "typing": "strong" if self.strongly_typed else "weak"}


def require_tensorrt(choice: str = "auto", *, field: str = "--engine") -> TrtApi:
    """The TensorRT API for `choice` (auto, tensorrt or rtx), or a one-line `UsageError` with the install command."""
    from natsdeploy.errors import UsageError

    if choice not in TRT_CHOICES:
        raise UsageError(f"--trt: got {choice!r}, expected one of {list(TRT_CHOICES)}")
    tried = ["tensorrt", "rtx"] if choice == "auto" else [choice]
    why = []
    for flavour in tried:
        try:
            trt = importlib.import_module(_MODULES[flavour])
            return TrtApi(trt, flavour, str(trt.__version__))
        except Exception as e:  # ImportError, or a stub package that fails on import
            why.append(f"{_MODULES[flavour]}: {type(e).__name__}")
    install = " or ".join(_INSTALL[f] for f in (["rtx", "tensorrt"] if choice == "auto" else tried))
    raise UsageError(f"{field}: TensorRT is not importable here ({', '.join(why)}); install it: {install}")


class VerboseLog:
    """A TensorRT logger that keeps every message (the builder's layer list is among them)."""

    def __new__(cls, trt):
        class _Log(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.messages: list[tuple[str, str]] = []

            def log(self, severity, msg) -> None:
                self.messages.append((str(severity).rsplit(".", 1)[-1], str(msg)))

            def errors(self) -> list[str]:
                return [m for s, m in self.messages if s in ("ERROR", "INTERNAL_ERROR")]

        return _Log()


@dataclass
class Parsed:
    """A parsed network with what keeps it alive (TensorRT objects must outlive their network)."""

    api: TrtApi
    builder: Any
    network: Any
    parser: Any
    log: Any
    ok: bool
    errors: list[str] = field(default_factory=list)


def parse_onnx(api: TrtApi, onnx_path: str | os.PathLike[str] | None = None, *, model_bytes: bytes | None = None,
               weakly_typed: bool = False) -> Parsed:
    """Parse an ONNX file (or serialised model) as written into a new network; `ok` False lists the errors."""
    trt = api.trt
    log = VerboseLog(trt)
    builder = trt.Builder(log)
    flags = 0
    strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strong is not None and api.strongly_typed and not weakly_typed:
        flags = 1 << int(strong)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if model_bytes is not None:
        ok = parser.parse(model_bytes, str(onnx_path or ""))
    else:
        ok = parser.parse_from_file(str(onnx_path))
    errors = [str(parser.get_error(i)).splitlines()[0] for i in range(parser.num_errors)]
    return Parsed(api, builder, network, parser, log, bool(ok), errors)


@dataclass
class BuildResult:
    engine: Path
    seconds: float
    nbytes: int
    log: list[tuple[str, str]]
    api: TrtApi
    typing: str  # "strong (fp16 model)", "weak, FP16 flag", ...


def build(api: TrtApi, onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], *,
          fp16: bool = False, dynamic: bool = False, input_shape: Sequence[int] = (1, 3, 800, 1216),
          max_shape: Sequence[int] | None = None, aux_streams: int | None = None,
          workspace_gib: float = 4.0, min_shape: Sequence[int] | None = None) -> BuildResult:
    """Parse `onnx_path` as written, build and atomically write the serialised engine.

    `dynamic`: one optimization profile, `min_shape` (default 1x3x64x64) .. `input_shape` .. `max_shape`.

    Strongly typed APIs take the model's types: with `fp16` and an fp32 file, the fp16 copy
    (`to_fp16`) is parsed instead. TensorRT 10 builds weakly typed, with the FP16 flag for `fp16`.
    """
    import onnx

    from natsdeploy.files import atomic_write_bytes
    from natsdeploy.onnx_utils import is_fp16, to_fp16

    trt = api.trt
    model_bytes, typing = None, "strong" if api.strongly_typed else "weak"
    if api.strongly_typed and fp16:
        model = onnx.load(str(onnx_path))
        if not is_fp16(model):
            model_bytes = to_fp16(model).SerializeToString()
        typing += " (fp16 model)"
    parsed = parse_onnx(api, onnx_path, model_bytes=model_bytes)
    if not parsed.ok:
        raise RuntimeError(f"TensorRT ({api.trt.__name__} {api.version}) could not parse {onnx_path}: "
                           + "; ".join(parsed.errors))
    config = parsed.builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the layer list in the build log
    if fp16 and not api.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        typing += ", FP16 flag"
    if aux_streams is not None:
        config.max_aux_streams = int(aux_streams)
    if dynamic:
        shape = tuple(int(d) for d in input_shape)
        hi = tuple(int(d) for d in (max_shape or (shape[0] * 2, 3, shape[2] * 2, shape[3] * 2)))
        profile = parsed.builder.create_optimization_profile()
        lo = tuple(int(d) for d in (min_shape or (1, 3, 64, 64)))
        profile.set_shape(parsed.network.get_input(0).name, lo, shape, hi)
        config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    serialized = parsed.builder.build_serialized_network(parsed.network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise RuntimeError(f"TensorRT ({api.trt.__name__} {api.version}) failed to build an engine from {onnx_path}: "
                           + "; ".join(parsed.log.errors()[-3:]))
    data = bytes(serialized)
    path = atomic_write_bytes(Path(engine_path), data)
    return BuildResult(path, seconds, len(data), list(parsed.log.messages), api, typing)


def build_engine(onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], *, fp16: bool = False,
                 dynamic: bool = False, input_shape: Sequence[int] = (1, 3, 800, 1216),
                 max_shape: Sequence[int] | None = None, trt: str = "auto", aux_streams: int | None = None,
                 workspace_gib: float = 4.0) -> Path:
    """`build` with the API chosen by `trt` (auto, tensorrt or rtx); returns the engine's path."""
    return build(require_tensorrt(trt), onnx_path, engine_path, fp16=fp16, dynamic=dynamic, input_shape=input_shape,
                 max_shape=max_shape, aux_streams=aux_streams, workspace_gib=workspace_gib).engine


def gpu_available() -> bool:
    """True when torch sees a CUDA device (what `TrtRunner` needs)."""
    import torch

    return bool(torch.cuda.is_available())


def require_trt_runtime(choice: str = "auto", *, field: str = "--backend trt") -> TrtApi:
    """`require_tensorrt`, and a CUDA GPU to run its engines on, or a one-line `UsageError` naming what is missing."""
    from natsdeploy.errors import UsageError

    api = require_tensorrt(choice, field=field)
    if not gpu_available():
        raise UsageError(f"{field}: got {api.trt.__name__} {api.version} and no CUDA GPU (torch sees none), expected "
                         "an NVIDIA GPU to run engines on; without one, `natsdeploy export --engine` builds and "
                         "audits them")
    return api


def __getattr__(name: str) -> Any:
    """`TrtRunner` moved to `natsdeploy.runners.tensorrt`; the old import path keeps working (PEP 562)."""
    if name == "TrtRunner":
        from natsdeploy.runners.tensorrt import TrtRunner

        return TrtRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
