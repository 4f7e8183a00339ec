"""One small runner interface for every backend: feed named numpy arrays, get named numpy arrays.

`TorchRunner` runs a backbone module, `OrtRunner` an ONNX file on ONNX Runtime, `OpenVinoRunner`
an ONNX file (or model) on OpenVINO's CPU plugin, and `natsdeploy.export.tensorrt.TrtRunner` a
TensorRT engine. Heavy imports happen on construction.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["Runner", "TorchRunner", "OrtRunner", "OpenVinoRunner", "OPENVINO_PRECISIONS", "ort_session_options",
           "openvino_capabilities", "openvino_supports", "onednn_cap_below_avx512"]

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
        raise ValueError(f"precision: got {precision!r}, expected one of {list(OPENVINO_PRECISIONS)}")
    if _blocking_cap(precision, device, env):
        return False
    return _CAPABILITY[precision] in openvino_capabilities(device)


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


class OpenVinoRunner:
    """An ONNX model on OpenVINO (CPU), at a pinned inference precision.

    OpenVINO's CPU plugin picks bf16 by itself on CPUs with AMX/AVX-512 bf16 (relative error about
    1e-2 against PyTorch fp32), so the precision is always set: `f32` by default, `bf16` or `f16` on
    request. What ran is the precision the compiled model reports, kept in `precision` and in `name`;
    what was asked for is `requested`. They differ where the CPU lacks the format (bf16 on AVX2 runs
    f32) or a oneDNN ISA cap below AVX-512 is set (then f32 is asked for: OpenVINO would fail to
    compile bf16), and `fallback_note` then says so in one line.
    OpenVINO cannot read ONNX model-local functions (the ``function`` export form): they are
    inlined in memory first. `threads` sets INFERENCE_NUM_THREADS; the performance hint is LATENCY.
    """

    def __init__(self, path_or_model: Any, *, threads: int | None = None, precision: str = "f32",
                 device: str = "CPU") -> None:
        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"precision: got {precision!r}, expected one of {list(OPENVINO_PRECISIONS)}")
        import onnx
        import openvino as ov

        from natsdeploy.onnx_utils import inline_functions

        proto = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model))
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
        x = np.ascontiguousarray(next(iter(feed.values())), dtype=np.float32)
        res = self.request.infer({0: x})
        return {name: np.array(res[o]) for name, o in zip(self.output_names, self.compiled.outputs)}
