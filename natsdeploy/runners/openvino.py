"""The OpenVINO runner (an ONNX model on OpenVINO's CPU plugin at a pinned precision), and what this CPU
lets OpenVINO compute: `openvino_capabilities`, `openvino_supports`, `onednn_cap_below_avx512`.

OpenVINO itself is imported where it is used, so the precision table and the cap check stay cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from natsdeploy.errors import RuntimeBackendError

__all__ = ["OpenVinoRunner", "OPENVINO_PRECISIONS", "openvino_capabilities", "openvino_supports",
           "onednn_cap_below_avx512"]

OPENVINO_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
"""Inference precisions `OpenVinoRunner` offers (OpenVINO's INFERENCE_PRECISION_HINT values), each with
the name the reports use (the keys of `natsdeploy.verify.parity.DEFAULT_TOLERANCE`)."""

_CAPABILITY = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}


def openvino_capabilities(device: str = "CPU") -> frozenset[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES for `device` (e.g. BF16 only on CPUs with AVX-512 bf16/AMX)."""
    import openvino as ov

    return frozenset(str(c) for c in ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES"))


# oneDNN ISA caps under AVX-512: OpenVINO 2026.4 still lists BF16 (it reads CPUID) but a bf16 compile fails
# ("object is not initialized"); measured for AVX2 and AVX2_VNNI_2 (on a CPU without avx_ne_convert),
# AVX512_CORE and above compile bf16
_CAPS_BELOW_AVX512 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"})


def onednn_cap_below_avx512(env: Mapping[str, str] | None = None) -> str | None:
    """The oneDNN ISA cap (ONEDNN_MAX_CPU_ISA, else DNNL_MAX_CPU_ISA; upper-cased) when it is below
    AVX-512, where OpenVINO's CPU plugin cannot compile bf16/f16; None when unset or not below."""
    env = os.environ if env is None else env
    cap = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return cap if cap in _CAPS_BELOW_AVX512 else None


def _blocking_cap(precision: str, device: str, env: Mapping[str, str] | None = None) -> str | None:
    """The oneDNN cap that keeps OpenVINO's CPU plugin from compiling `precision` (bf16/f16), or None."""
    if precision == "f32" or not device.upper().startswith("CPU"):
        return None
    return onednn_cap_below_avx512(env)


def openvino_supports(precision: str, device: str = "CPU", *, env: Mapping[str, str] | None = None) -> bool:
    """Whether OpenVINO's `device` computes natively at `precision` (f32, bf16 or f16).

    Where it does not (bf16 on an AVX2-only CPU, or under a oneDNN ISA cap below AVX-512 from `env`,
    default os.environ), a request for it runs f32: `OpenVinoRunner` records both.
    """
    if precision not in _CAPABILITY:
        raise RuntimeBackendError(f"precision: got {precision!r}, expected one of {list(OPENVINO_PRECISIONS)}")
    if _blocking_cap(precision, device, env):
        return False
    return _CAPABILITY[precision] in openvino_capabilities(device)


class OpenVinoRunner:
    """An ONNX model on OpenVINO (CPU), at a pinned inference precision.

    OpenVINO's CPU plugin picks bf16 by itself on CPUs with AMX/AVX-512 bf16 (relative error about
    1e-2 against PyTorch fp32), so the precision is always set: `f32` by default, `bf16` or `f16` on
    request. What ran is the precision the compiled model reports, kept in `precision` and in `name`;
    what was asked for is `requested`. They differ where the CPU lacks the format (bf16 on AVX2 runs
    f32) or a oneDNN ISA cap below AVX-512 is set (then f32 is asked for: OpenVINO would fail to
    compile bf16), and `fallback_note` then says so in one line.
    `path_or_model` is an ONNX file path, serialised bytes or an `onnx.ModelProto`. OpenVINO cannot read
    ONNX model-local functions (the ``function`` export form): they are inlined in memory first. `threads` sets INFERENCE_NUM_THREADS; the performance hint is LATENCY.
    """

    def __init__(self, path_or_model: Any, *, threads: int | None = None, precision: str = "f32",
                 device: str = "CPU") -> None:
        if precision not in OPENVINO_PRECISIONS:
            raise RuntimeBackendError(f"precision: got {precision!r}, expected one of {list(OPENVINO_PRECISIONS)}")
        import onnx
        import openvino as ov

        from natsdeploy.onnx_utils import inline_functions

        if isinstance(path_or_model, onnx.ModelProto):
            proto = path_or_model
        elif isinstance(path_or_model, (bytes, bytearray)):
            proto = onnx.load_model_from_string(bytes(path_or_model))
        else:
            proto = onnx.load(os.fspath(path_or_model))
        core = ov.Core()
        cap = _blocking_cap(precision, device)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32" if cap else precision,
                                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(core.read_model(inline_functions(proto).SerializeToString()), device, config)
        self.request = self.compiled.create_infer_request()
        self.requested = precision
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.version = ov.__version__.split("-")[0]
        self.output_names = tuple(o.get_any_name() for o in self.compiled.outputs)
        self.name = f"openvino-{device.lower()}-{self.precision}"
        self.device = device
        self._cap = cap

    @property
    def fallback_note(self) -> str | None:
        """One line when the precision that ran is not the one requested (None when they agree)."""
        if self.precision == self.requested:
            return None
        why = (f"the oneDNN ISA cap {self._cap} (ONEDNN_MAX_CPU_ISA/DNNL_MAX_CPU_ISA) is below AVX-512"
               if self._cap else f"this CPU's OPTIMIZATION_CAPABILITIES lack {_CAPABILITY[self.requested]}")
        return f"OpenVINO: {self.requested} was asked for and {self.precision} ran ({why})"

    def precision_record(self) -> dict[str, str]:
        """`{"requested": ..., "ran": ...}` for reports (OpenVINO's names: f32, bf16, f16)."""
        return {"requested": self.requested, "ran": self.precision}

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feed the first array to the model's input; every output by name."""
        x = np.ascontiguousarray(next(iter(feed.values())), dtype=np.float32)
        res = self.request.infer({0: x})
        return {name: np.array(res[o]) for name, o in zip(self.output_names, self.compiled.outputs)}

    def describe(self) -> dict[str, Any]:
        """`{"runtime": "OpenVINO", "version", "precision" (what ran, as reports name it: fp32, bf16, fp16),
        "requested", "device", "threads"}`."""
        return {"runtime": "OpenVINO", "version": self.version, "precision": OPENVINO_PRECISIONS[self.precision],
                "requested": OPENVINO_PRECISIONS[self.requested], "device": self.device, "threads": self.threads}
