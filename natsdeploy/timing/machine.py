"""What a result was measured on: CPU/GPU model, cores, library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata

from natsdeploy.targets import cpu_flags

__all__ = ["machine_info"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    return sorted(f for f in cpu_flags() if f.startswith(("avx", "fma", "amx")))


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_simd": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "versions": {p: _version(p) for p in ("natsdeploy", "torch", "torchvision", "onnx", "onnxruntime",
                                               "onnxruntime-gpu", "tensorrt")},
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except Exception:  # torch missing or broken CUDA: the record simply has no GPU
        pass
    return info
