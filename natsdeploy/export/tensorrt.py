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
engine's layers without deserialising the engine (that needs CUDA); `engine_layers` reads it. The function form is parsed as written: each `MixedDilationConv.<conv>` node finds its own
model-local function (`natsdeploy.export.function`). Running an engine is `natsdeploy.runners.tensorrt.TrtRunner`
(also importable from here): it needs a CUDA GPU and torch CUDA buffers, and uses ``execute_async_v3`` and
tensor addresses, which all three APIs share.

What TensorRT made of a graph (`engine_layers`, `audit_concats`, `network_convs`): two log formats are read:

- TensorRT-RTX 1.x (measured): a ``Layers:`` message with one line per layer,
  ``Name: <name>, LayerType: <type>, Inputs: [ { Name: <tensor>, ... } ], ..., Outputs: [ ... ]``;
  convolutions are ``correlation`` layers, casts and moves ``kgen``, auxiliary-stream
  synchronisation ``wait`` / ``signal``;
- TensorRT 10/11 (documented ``Engine Layer Information``, not run here):
  ``Layer(<type>): <name>, Tactic: <id>, <tensor> (<type>[dims]) -> <tensor> (<type>[dims])``.

The Concat audit (`audit_concats`), for each transformed conv with more than one branch: every
branch conv's layer is found, the branches write into one tensor, and no layer between them and their
consumer is a concatenation, copy, move or reformat. That is the claim the branch form rests on:
TensorRT removes the Concat by having each branch write its channel slice of one buffer.

`natsdeploy export --engine` (`check_engine_request`, `build_engines_for_export`): model and baseline
engines and the report's `tensorrt` section. Without a GPU (TensorRT-RTX builds ahead of time on the
CPU) the engines are built and audited, and the report says "built, not run (no GPU)": no parity or
latency row is invented. Where torch sees a CUDA device and the engine deserialises, each engine is run
once against ONNX Runtime. `int8_engine_check`: what TensorRT makes of an int8 QDQ graph.

- int8 (`--precision int8 --engine`): the engines are built from the QDQ graphs, as written where the API
  is strongly typed (TensorRT-RTX, TensorRT 11), with the INT8 builder flag on TensorRT 10 (written from
  its documentation; no enterprise TensorRT runs here). Each engine's convolutions are counted by input
  type (`conv_input_types`); the one-buffer Concat audit does not apply (each int8 branch writes its own
  tensor, read by one fused requantizing epilogue): the requantize audit against the baseline engine
  does (`natsdeploy.export.tensorrt_int8`).
- Dynamic shapes: one engine with one or more optimization profiles (`profiles`, `--trt-shapes`; default
  `default_profile`). The build log lists the layers once per profile (profile k > 0 tagged
  ``[profile k]``, `by_profile`): layers are counted once (profile 0) and every audit runs on each profile.
- Each engine's optimizer decisions, where enterprise TensorRT logs them
  (`natsdeploy.export.tensorrt_log`): TensorRT-RTX logs none, and the report says so.
"""

from __future__ import annotations

import importlib
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TRT_CHOICES", "TrtApi", "BuildResult", "require_tensorrt", "parse_onnx", "build", "build_engine",
           "TrtRunner", "gpu_available", "require_trt_runtime",
           "Profile", "default_profile", "EngineLayer", "engine_layers", "by_profile", "conv_input_types",
           "layer_counts", "sync_counts", "audit_concats", "NetworkConv", "network_convs",
           "TRT_FORMS", "INT8_ENGINE_TOLERANCE", "profile_dicts", "check_engine_request", "build_engines_for_export",
           "int8_engine_check"]

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


Shape = tuple[int, ...]
Profile = tuple[Shape, Shape, Shape]
"""An optimization profile of the input: (min, opt, max), each N x C x H x W."""


@dataclass
class BuildResult:
    engine: Path
    seconds: float
    nbytes: int
    log: list[tuple[str, str]]
    api: TrtApi
    typing: str  # "strong (fp16 model)", "weak, FP16 flag", ...
    profiles: list[Profile] = field(default_factory=list)
    """The optimization profiles built, (min, opt, max) each; empty for a static graph."""


def default_profile(input_shape: Sequence[int], *, min_shape: Sequence[int] | None = None,
                    max_shape: Sequence[int] | None = None) -> Profile:
    """The one profile `--dynamic` builds without `--trt-shapes`: min 1x3x64x64 (or `min_shape`), opt
    `input_shape`, max twice its batch, height and width (or `max_shape`)."""
    opt = tuple(int(d) for d in input_shape)
    lo = tuple(int(d) for d in (min_shape or (1, 3, 64, 64)))
    hi = tuple(int(d) for d in (max_shape or (opt[0] * 2, 3, opt[2] * 2, opt[3] * 2)))
    return (lo, opt, hi)


def build(api: TrtApi, onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], *,
          fp16: bool = False, dynamic: bool = False, input_shape: Sequence[int] = (1, 3, 800, 1216),
          max_shape: Sequence[int] | None = None, aux_streams: int | None = None,
          workspace_gib: float = 4.0, min_shape: Sequence[int] | None = None, int8: bool = False,
          profiles: Sequence[Profile] | None = None) -> BuildResult:
    """Parse `onnx_path` as written, build and atomically write the serialised engine.

    `profiles`: one optimization profile per (min, opt, max) shape triple of the first input (a dynamic
    graph); else `dynamic` builds one, `default_profile(input_shape, min_shape=, max_shape=)`.

    Strongly typed APIs take the model's types: with `fp16` and an fp32 file, the fp16 copy
    (`to_fp16`) is parsed instead; an int8 QDQ graph (`int8`) is built as written. TensorRT 10 builds
    weakly typed, with the FP16 flag for `fp16` and the INT8 flag for a QDQ graph (`int8`: TensorRT 10
    takes Q/DQ layers only with it; written from its documentation, not run here).
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
    if int8:
        typing += ", INT8 flag (QDQ graph)" if not api.strongly_typed else " (QDQ int8 model)"
        if not api.strongly_typed:
            config.set_flag(trt.BuilderFlag.INT8)
    if aux_streams is not None:
        config.max_aux_streams = int(aux_streams)
    if profiles is None and dynamic:
        profiles = [default_profile(input_shape, min_shape=min_shape, max_shape=max_shape)]
    for lo, opt, hi in profiles or ():
        profile = parsed.builder.create_optimization_profile()
        profile.set_shape(parsed.network.get_input(0).name, *(tuple(int(d) for d in s) for s in (lo, opt, hi)))
        config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    serialized = parsed.builder.build_serialized_network(parsed.network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise RuntimeError(f"TensorRT ({api.trt.__name__} {api.version}) failed to build an engine from {onnx_path}: "
                           + "; ".join(parsed.log.errors()[-3:]))
    data = bytes(serialized)
    path = atomic_write_bytes(Path(engine_path), data)
    return BuildResult(path, seconds, len(data), list(parsed.log.messages), api, typing,
                       [tuple(tuple(int(d) for d in s) for s in p) for p in profiles or ()])


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


# -- what TensorRT made of a graph: the build log's layers, the Concat audit, a parsed network's convs ------
CONV_TYPES = ("correlation", "convolution", "caskconvolution", "cudnnconvolution", "caskgemmconvolution")
_COPY = re.compile(r"concat|copy|reformat|move|shuffle|slice", re.IGNORECASE)
_RTX = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), Inputs: \[(?P<ins>.*?)\], Constants: .*?"
                  r"Outputs: \[(?P<outs>.*?)\], TacticName")
_TRT = re.compile(r"^Layer\((?P<type>[^)]*)\): (?P<name>.*?), Tactic: [^,]*, (?P<ins>.*) -> (?P<outs>.*)$")
_PROFILE = re.compile(r"\[profile (\d+)\]")
_MYELIN = re.compile(r"_myl(\d+)_\d+$")


@dataclass(frozen=True)
class EngineLayer:
    name: str
    type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    input_types: tuple[str, ...] = ()
    """Data type of each input as logged (``Int8``, ``Float``, ``Half``)."""

    @property
    def is_conv(self) -> bool:
        return self.type.lower() in CONV_TYPES

    @property
    def is_copy(self) -> bool:
        """A concatenation, copy, move or reformat (a kgen kernel counts when its name says so)."""
        if self.is_conv or self.type.lower() in ("wait", "signal"):
            return False
        return bool(_COPY.search(self.type)) or (self.type.lower() == "kgen" and bool(_COPY.search(self.name)))


def _tensor_names(segment: str, trt_format: bool) -> tuple[str, ...]:
    if trt_format:
        return tuple(re.findall(r"(?:^|, )([^\s,()]+) \(", segment))
    return tuple(re.findall(r"\{ Name: ([^,]+),", segment))


def _tensor_types(segment: str, trt_format: bool) -> tuple[str, ...]:
    return tuple(re.findall(r"\((\w+)\[" if trt_format else r"Datatype: (\w+)", segment))


def engine_layers(log: Iterable[tuple[str, str]] | Iterable[str]) -> list[EngineLayer]:
    """The engine's layers as the builder logged them (empty when the log holds no layer list)."""
    layers = []
    for entry in log:
        message = entry[1] if isinstance(entry, tuple) else entry
        for line in message.splitlines():
            line = line.strip()
            for pattern, trt_format in ((_RTX, False), (_TRT, True)):
                m = pattern.match(line)
                if m:
                    layers.append(EngineLayer(m["name"], m["type"].strip(), _tensor_names(m["ins"], trt_format),
                                              _tensor_names(m["outs"], trt_format), _tensor_types(m["ins"], trt_format)))
                    break
    return layers


def _tag(layer: EngineLayer) -> int | None:
    for text in (layer.name, *layer.inputs, *layer.outputs):
        if m := _PROFILE.search(text):
            return int(m.group(1))
    return None


def by_profile(layers: Sequence[EngineLayer]) -> dict[int, list[EngineLayer]]:
    """The layers of each optimization profile, in log order (a static engine: all in profile 0).

    TensorRT lists every profile's layers and names a layer of profile k > 0 (or its tensors)
    ``... [profile k]``. TensorRT-RTX's generated kernels (``__myl_...``, ``wait``, ``signal``) carry no
    such tag; they belong to the profile tagged elsewhere in their Myelin graph (the ``_myl<g>_<i>``
    suffix), measured with two profiles on TensorRT-RTX 1.7."""
    graph_tag: dict[str, int] = {}
    for layer in layers:
        g, t = _MYELIN.search(layer.name), _tag(layer)
        if g and t is not None:
            graph_tag.setdefault(g.group(1), t)
    out: dict[int, list[EngineLayer]] = {}
    for layer in layers:
        t, g = _tag(layer), _MYELIN.search(layer.name)
        if t is None:
            t = graph_tag.get(g.group(1), 0) if g else 0
        out.setdefault(t, []).append(layer)
    return out or {0: []}


def conv_input_types(layers: Sequence[EngineLayer]) -> dict[str, int]:
    """The engine's convolution layers (profile 0) by the data type of their first input, as the builder's
    layer list logs it: ``Int8`` where the conv runs in int8."""
    types = Counter(layer.input_types[0] if layer.input_types else "unknown"
                    for layer in by_profile(layers)[0] if layer.is_conv)
    return dict(types.most_common())


def layer_counts(layers: Sequence[EngineLayer]) -> dict[str, int]:
    """Engine layers by type, most frequent first."""
    return dict(Counter(layer.type for layer in layers).most_common())


def sync_counts(layers: Sequence[EngineLayer]) -> dict[str, int]:
    """Auxiliary-stream synchronisation layers (``wait``, ``signal``) and the streams used."""
    kinds = Counter(layer.type.lower() for layer in layers)
    return {"wait": kinds["wait"], "signal": kinds["signal"]}


def audit_concats(layers: Sequence[EngineLayer], splits: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per transformed conv (`splits`: names of convs with more than one branch) the audit's finding.

    `eliminated` is True only when the conv's branch layers are found, all write into one tensor, and
    no layer reading a branch output is a concatenation/copy/move/reformat; `consumers` names the
    layers that read that tensor.
    """
    readers: dict[str, list[EngineLayer]] = {}
    for layer in layers:
        for t in layer.inputs:
            readers.setdefault(t, []).append(layer)
    out = {}
    for name in splits:
        prefix = f"{name}/b"
        branches = [layer for layer in layers if layer.is_conv and prefix in layer.name]
        written = sorted({t for layer in branches for t in layer.outputs})
        consumers = [r for t in written for r in readers.get(t, [])]
        copies = sorted({r.name for r in consumers if r.is_copy})
        one_buffer = len(written) == 1
        out[name] = {"eliminated": bool(branches) and one_buffer and not copies, "branch_layers": len(branches),
                     "written_tensors": written, "consumers": sorted({r.name for r in consumers}),
                     "copy_layers": copies}
    return out


@dataclass(frozen=True)
class NetworkConv:
    """One `IConvolutionLayer` of a parsed network, with its weights resolved to arrays."""

    name: str
    kernel: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, ...], tuple[int, ...]]
    stride: tuple[int, ...]
    groups: int
    outputs: int
    weight: np.ndarray
    bias: np.ndarray | None

    def signature(self) -> tuple:
        return (self.kernel, self.dilation, self.padding, self.stride, self.groups, self.outputs)


def network_convs(trt: Any, network: Any) -> list[NetworkConv]:
    """The convolutions of a parsed `INetworkDefinition`, in layer order.

    Weights are the layer's own (`kernel`, `bias`) or, where the parser feeds them as tensors (a
    function body that splits W and B), the constant they are sliced from, evaluated here.
    """
    producer, layers = {}, [network.get_layer(i) for i in range(network.num_layers)]
    for layer in layers:
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer
    kinds = {trt.LayerType.CONSTANT: trt.IConstantLayer, trt.LayerType.SLICE: trt.ISliceLayer,
             trt.LayerType.CONVOLUTION: trt.IConvolutionLayer}

    def typed(layer):
        layer.__class__ = kinds.get(layer.type, type(layer))
        return layer

    def value(tensor) -> np.ndarray:
        layer = typed(producer[tensor.name])
        if layer.type == trt.LayerType.CONSTANT:
            return np.array(layer.weights).reshape(tuple(layer.shape))
        if layer.type == trt.LayerType.SLICE:
            src = value(layer.get_input(0))
            idx = tuple(slice(s, s + n * st, st) for s, n, st in zip(layer.start, layer.shape, layer.stride))
            return src[idx]
        if layer.type in (trt.LayerType.IDENTITY, trt.LayerType.CAST):
            return value(layer.get_input(0))
        raise ValueError(f"{tensor.name}: got a {layer.type} producer, expected a constant, slice, identity or cast")

    out = []
    for layer in layers:
        if layer.type != trt.LayerType.CONVOLUTION:
            continue
        c = typed(layer)
        n = c.num_output_maps
        w = np.array(c.kernel)
        w = w if w.size else value(c.get_input(1))
        b = np.array(c.bias) if c.bias is not None else np.zeros(0)
        if not b.size and c.num_inputs > 2 and c.get_input(2) is not None:
            b = value(c.get_input(2))
        out.append(NetworkConv(c.name, tuple(c.kernel_size_nd), tuple(c.dilation_nd),
                               (tuple(c.pre_padding), tuple(c.post_padding)), tuple(c.stride_nd), c.num_groups, n,
                               w.reshape(n, -1, *tuple(c.kernel_size_nd)), b.reshape(-1) if b.size else None))
    return out


# -- natsdeploy export --engine ------------------------------------------------------------------------
TRT_FORMS = ("branches", "sum", "function")
NOT_RUN = "built, not run (no GPU)"


def check_engine_request(form: str, trt: str = "auto", aux_streams: int | None = None):
    """Refuse, before any work, what TensorRT cannot take; return the API (`TrtApi`) `--engine` will use."""
    from natsdeploy.errors import UsageError

    if form not in TRT_FORMS:
        how = "it emits Col2Im" if form == "rows" else "it emits the rows form, Col2Im, wherever it picks rows"
        raise UsageError(f"--form: got {form!r} with --engine, expected one of {list(TRT_FORMS)} "
                         f"({how}, which TensorRT's ONNX parser rejects)")
    if aux_streams is not None and aux_streams < 0:
        raise UsageError(f"--trt-aux-streams: got {aux_streams}, expected 0 or more")
    return require_tensorrt(trt)


INT8_ENGINE_TOLERANCE = 0.1
"""Where a GPU runs the int8 engines: bound on max|err|/max|ref| against ONNX Runtime's run of the same QDQ
graph (fused int8 epilogues round differently from ORT's float Q/DQ; the bound the int8 tests use)."""


def profile_dicts(profiles: Sequence[Profile]) -> list[dict[str, list[int]]]:
    """Profiles as the report writes them: [{"min": [..], "opt": [..], "max": [..]}, ...]."""
    return [{"min": list(lo), "opt": list(opt), "max": list(hi)} for lo, opt, hi in profiles]


def _concat_audit(layers: Sequence[EngineLayer], split_names: Sequence[str]) -> dict[str, Any]:
    """`audit_concats` on every optimization profile's layers: profile 0's findings, passed over all."""
    audits = {k: audit_concats(v, split_names) for k, v in sorted(by_profile(layers).items())}
    first = audits[min(audits)]
    failed = [k for k, a in audits.items() if not all(v["eliminated"] for v in a.values())]
    return {"convs": len(first), "eliminated": sum(a["eliminated"] for a in first.values()), "profiles": len(audits),
            "failed_profiles": failed, "passed": not failed, "per_conv": first}


def _optimizer_log(log: Sequence[tuple[str, str]], split_names: Sequence[str]) -> dict[str, Any]:
    """Enterprise TensorRT's logged Concat decisions (`natsdeploy.export.tensorrt_log`); `passed` (where it
    logs them): every eliminated Concat of a transformed conv (``<conv>/concat``) had its inputs retargeted,
    no copy. TensorRT-RTX logs none: `logged` False, `passed` None."""
    from natsdeploy.export.tensorrt_log import parse_optimizer_log

    decisions = parse_optimizer_log(m for _, m in log)
    out = decisions.to_dict()
    if not decisions.logged:
        return {**out, "passed": None}
    ours = {c: d for c, d in decisions.concats.items() if any(c.startswith(f"{n}/") for n in split_names)}
    out["transformed_concats"] = {c: d.copy_free for c, d in ours.items()}
    out["passed"] = all(d.copy_free for d in ours.values())
    return out


def build_engines_for_export(out_dir, api, *, precision: str, dynamic: bool, input_shape: Sequence[int],
                             split_names: Sequence[str], aux_streams: int | None = None,
                             profiles: Sequence[Profile] = ()) -> "TensorRTSection":  # noqa: F821
    """Engines for `out_dir`'s model.onnx and baseline.onnx (written atomically), audited from the build log:
    the report's `tensorrt` section (`natsdeploy.export.report.TensorRTSection`).

    fp32/fp16: the Concat audit (`audit_concats`). int8 (the files are QDQ graphs): Int8 convolutions and
    the requantize audit against the baseline engine (`natsdeploy.export.tensorrt_int8`); the one-buffer
    Concat audit does not apply (each int8 branch writes its own tensor, read by one fused epilogue).
    `dynamic`: one engine with `profiles` (default: `default_profile(input_shape)`); every audit runs on
    every profile's layers, and layers are counted once (profile 0). Each engine also gets the optimizer
    decisions its log holds (`optimizer_log`; TensorRT-RTX logs none)."""
    from natsdeploy.export.report import TensorRTSection

    fp16, int8 = precision == "fp16", precision == "int8"
    if dynamic and not profiles:
        profiles = [default_profile(input_shape)]
    entries: dict[str, dict[str, Any]] = {}
    engines, layers_of = {}, {}
    for key in ("model", "baseline"):
        r = build(api, out_dir / f"{key}.onnx", out_dir / f"{key}.{precision}.engine", fp16=fp16, int8=int8,
                  profiles=list(profiles) if dynamic else None, input_shape=input_shape, aux_streams=aux_streams)
        layers = layers_of[key] = engine_layers(r.log)
        per_profile = by_profile(layers)
        first = per_profile[min(per_profile)]
        entry: dict[str, Any] = {"parse": "ok (as written)", "network": r.typing, "engine": str(r.engine),
                                 "build_s": round(r.seconds, 3), "engine_bytes": r.nbytes,
                                 "profiles": profile_dicts(r.profiles), "layers": len(first),
                                 "layer_counts": layer_counts(first), "stream_sync": sync_counts(first)}
        if len(per_profile) > 1:
            entry["layers_note"] = (f"the build log lists the layers once per profile ({len(layers)} in all, "
                                    f"{len(per_profile)} profiles); counted once, profile 0's")
        if int8:
            entry["conv_inputs"] = conv_input_types(layers)
        if key == "model" and not int8:
            entry["concat_audit"] = _concat_audit(layers, split_names)
        entry["optimizer_log"] = _optimizer_log(r.log, split_names if key == "model" else ())
        entries[key], engines[key] = entry, r.engine
    if int8:
        from natsdeploy.export.tensorrt_int8 import audit_requantize_profiles

        entries["model"]["requantize_audit"] = audit_requantize_profiles(layers_of["model"], layers_of["baseline"],
                                                                         split_names)
    run = _run_or_not(api, out_dir, engines, input_shape, precision) if gpu_available() else NOT_RUN
    return TensorRTSection(**api.describe(), precision=precision, max_aux_streams=aux_streams,
                           model=entries["model"], baseline=entries["baseline"], run=run)


def _run_or_not(api, out_dir, engines, input_shape, precision: str):
    """Run each engine once against ONNX Runtime (only where a GPU is present)."""
    from natsdeploy.runners import OrtRunner, TrtRunner
    from natsdeploy.verify.parity import DEFAULT_TOLERANCE, compare

    try:
        runners = {k: TrtRunner(e, trt=api.flavour) for k, e in engines.items()}
    except RuntimeError as e:  # e.g. a TensorRT-RTX engine on a GPU it has no kernels for
        return f"built, not run ({str(e).splitlines()[0]})"
    x = np.random.default_rng(0).standard_normal(tuple(input_shape), dtype=np.float32)
    out = {}
    for key, runner in runners.items():
        ref = OrtRunner(out_dir / f"{key}.onnx").run({"images": x})
        tol = INT8_ENGINE_TOLERANCE if precision == "int8" else DEFAULT_TOLERANCE[precision]
        out[key] = compare(runner.run({"images": x}), ref, tolerance=tol).to_dict()
    return {"parity_vs_ort": out}


def int8_engine_check(api, onnx_path, engine_path) -> dict[str, Any]:
    """What TensorRT makes of an int8 QDQ graph (`export --precision int8`): parse as written, then build.

    A build that fails is one line in `build`, not an exception; `conv_inputs` counts the engine's
    convolution layers by the data type of their first input, read from the builder's layer list
    (``Datatype: Int8`` where the conv runs in int8)."""
    parsed = parse_onnx(api, onnx_path)
    out: dict[str, Any] = {**api.describe(), "parse": "ok (as written)" if parsed.ok else
                           "failed: " + "; ".join(parsed.errors[:2]), "build": "not attempted", "conv_inputs": {}}
    if not parsed.ok:
        return out
    try:
        r = build(api, onnx_path, engine_path)
    except RuntimeError as e:
        out["build"] = "not built: " + (str(e).splitlines() or [""])[0][:300]
        return out
    types = conv_input_types(engine_layers(r.log))
    out.update(build=f"ok ({r.nbytes} bytes, {r.seconds:.1f} s)", engine=str(r.engine), conv_inputs=dict(types))
    return out


def __getattr__(name: str) -> Any:
    """`TrtRunner` moved to `natsdeploy.runners.tensorrt`; the old import path keeps working (PEP 562)."""
    if name == "TrtRunner":
        from natsdeploy.runners.tensorrt import TrtRunner

        return TrtRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
