"""What TensorRT made of a graph: the engine's layers from the build log, the Concat audit, and the
convolutions of a parsed network.

The builder, run with ``ProfilingVerbosity.DETAILED`` and a verbose logger, logs the engine's layer
list; no engine has to be deserialised (that needs CUDA). Two formats are read:

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
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EngineLayer", "engine_layers", "layer_counts", "sync_counts", "audit_concats", "NetworkConv",
           "network_convs"]

CONV_TYPES = ("correlation", "convolution", "caskconvolution", "cudnnconvolution", "caskgemmconvolution")
_COPY = re.compile(r"concat|copy|reformat|move|shuffle|slice", re.IGNORECASE)
_RTX = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), Inputs: \[(?P<ins>.*?)\], Constants: .*?"
                  r"Outputs: \[(?P<outs>.*?)\], TacticName")
_TRT = re.compile(r"^Layer\((?P<type>[^)]*)\): (?P<name>.*?), Tactic: [^,]*, (?P<ins>.*) -> (?P<outs>.*)$")


@dataclass(frozen=True)
class EngineLayer:
    name: str
    type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

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
                                              _tensor_names(m["outs"], trt_format)))
                    break
    return layers


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
