"""What TensorRT made of the int8 QDQ graphs' transformed convs: the requantize audit, model against baseline.

The fp32 Concat audit (`natsdeploy.export.tensorrt.audit_concats`: the branches write one buffer) does not
fit an int8 engine. Measured (TensorRT-RTX 1.7, strongly typed, the ResNet-18 and ResNet-50 examples): each
branch conv is a ``correlation`` layer (``layer2.0.conv1/b2_myl0_14``) writing its *own* tensor, and one
fused ``kgen`` kernel (``__myl_MulAddMulMinMaxRounCast...``) reads every branch output and writes one tensor,
the next conv's int8 input: the Concat is folded into the epilogue that also adds the bias, applies the
ReLU and requantizes. The baseline's conv is one ``correlation`` layer followed by one ``kgen`` (ResNet-18:
157 vs 51 layers, 18 kgen each, no copy or reformat layer). So the claim for int8 is that the branches add
no layer between them and their consumer that the baseline's conv does not also have:

- per transformed conv: its branch layers are found, and the layers reading their outputs are, kind for
  kind, those reading the baseline's same conv (found by name, ``layerX.Y.convZ``, in the baseline
  engine): one ``kgen`` each, no Quantize/Dequantize/Reformat/copy/Concat layer of its own;
- whole engine: the non-convolution layers (synchronisation ``wait``/``signal`` aside: the branches run
  on auxiliary streams) by kind equal the baseline's.

A layer's kind is its type, except that a ``kgen`` whose name says copy/move (`EngineLayer.is_copy`) is
its own kind: NVIDIA ModelOpt's graphs give a ``__myl_CastMulMulAddAddMoveReluCast...`` kernel in model
and baseline alike, so such a name is compared with the baseline, never flagged by itself.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from natsdeploy.export.tensorrt import EngineLayer, by_profile

__all__ = ["layer_kind", "is_requantize", "baseline_conv", "audit_requantize", "audit_requantize_profiles"]

SYNC_TYPES = ("wait", "signal")
_REQUANTIZE = re.compile(r"quantiz|reformat|concat|copy|move|shuffle|slice", re.IGNORECASE)


def layer_kind(layer: EngineLayer) -> str:
    """The layer's type; a ``kgen`` named like a copy or move is ``kgen (copy/move)``."""
    if layer.type.lower() == "kgen" and layer.is_copy:
        return "kgen (copy/move)"
    return layer.type


def is_requantize(layer: EngineLayer) -> bool:
    """A layer that only moves or re-encodes data: Quantize, Dequantize, Reformat, copy, Concat, shuffle, slice."""
    return not layer.is_conv and (layer.is_copy or bool(_REQUANTIZE.search(layer.type)))


def baseline_conv(layers: Sequence[EngineLayer], name: str) -> EngineLayer | None:
    """The convolution layer of conv `name` (``layer2.0.conv1``) in an engine: its name is `name`, then the
    end or a suffix TensorRT adds (``_myl0_13``, `` [profile 1]``, `` + relu``), never ``/b0`` or another digit."""
    pattern = re.compile(rf"(?:^|[\s+]){re.escape(name)}(?:$|[_\s+:])")
    return next((layer for layer in layers if layer.is_conv and pattern.search(layer.name)), None)


def _readers(layers: Sequence[EngineLayer]) -> dict[str, list[EngineLayer]]:
    out: dict[str, list[EngineLayer]] = {}
    for layer in layers:
        for t in layer.inputs:
            out.setdefault(t, []).append(layer)
    return out


def _consumers(readers: dict[str, list[EngineLayer]], producers: Sequence[EngineLayer]) -> list[EngineLayer]:
    """The distinct layers reading any output of `producers`, in log order."""
    seen: dict[str, EngineLayer] = {}
    for p in producers:
        for t in p.outputs:
            for r in readers.get(t, []):
                seen.setdefault(r.name, r)
    return list(seen.values())


def _engine_kinds(layers: Sequence[EngineLayer]) -> Counter:
    return Counter(layer_kind(x) for x in layers if not x.is_conv and x.type.lower() not in SYNC_TYPES)


def audit_requantize(model: Sequence[EngineLayer], baseline: Sequence[EngineLayer],
                     splits: Sequence[str]) -> dict[str, Any]:
    """The requantize audit of one profile's layers (`model`, `baseline`) for the transformed convs `splits`.

    Per conv: `passed` when its branch layers and the baseline's conv are found and the layers reading the
    branch outputs equal, kind for kind, those reading the baseline conv's; `extra_layers` names the model's
    consumers of a kind the baseline's conv lacks. `engine`: non-conv, non-sync layers by kind in each
    engine, `equal` when they match, `extra` what only the model has. `passed`: every conv and the engine."""
    readers_m, readers_b = _readers(model), _readers(baseline)
    per_conv = {}
    for name in splits:
        branches = [x for x in model if x.is_conv and f"{name}/b" in x.name]
        consumers = _consumers(readers_m, branches)
        base = baseline_conv(baseline, name)
        base_consumers = _consumers(readers_b, [base]) if base is not None else []
        kinds, base_kinds = Counter(map(layer_kind, consumers)), Counter(map(layer_kind, base_consumers))
        extra = kinds - base_kinds
        per_conv[name] = {
            "branch_layers": len(branches), "written_tensors": len({t for x in branches for t in x.outputs}),
            "consumers": [x.name for x in consumers], "consumer_kinds": dict(kinds),
            "baseline_layer": base.name if base is not None else None,
            "baseline_consumer_kinds": dict(base_kinds),
            "extra_layers": [x.name for x in consumers if extra[layer_kind(x)] > 0],
            "requantize_layers": [x.name for x in consumers if is_requantize(x)],
            "passed": bool(branches) and base is not None and bool(consumers) and kinds == base_kinds}
    km, kb = _engine_kinds(model), _engine_kinds(baseline)
    engine = {"model": dict(km.most_common()), "baseline": dict(kb.most_common()), "equal": km == kb,
              "extra": dict(km - kb), "missing": dict(kb - km)}
    passed_convs = sum(v["passed"] for v in per_conv.values())
    return {"convs": len(per_conv), "passed_convs": passed_convs, "engine": engine,
            "passed": passed_convs == len(per_conv) and engine["equal"], "per_conv": per_conv}


def audit_requantize_profiles(model: Sequence[EngineLayer], baseline: Sequence[EngineLayer],
                              splits: Sequence[str]) -> dict[str, Any]:
    """`audit_requantize` for every optimization profile (model profile k against baseline profile k): the
    profile-0 audit, with `profiles` (how many were audited) and `passed` over all of them."""
    m, b = by_profile(model), by_profile(baseline)
    audits = {k: audit_requantize(m[k], b.get(k, []), splits) for k in sorted(m)}
    first = audits[min(audits)]
    failed = [k for k, a in audits.items() if not a["passed"]]
    return {**first, "profiles": len(audits), "failed_profiles": failed, "passed": not failed}
