"""Deployment targets and the channel block each computes convolutions in (ARCH_FORMAT "Alignment").

A branch whose width is not a multiple of its target's block leaves the runtime's fast path, so
`natsdeploy check` and the export report name such branches. CPU blocks depend on the machine's
vector width, read from /proc/cpuinfo; torch-free, so the CLI parser can use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from natsdeploy.errors import UsageError

__all__ = ["Target", "TARGET_NAMES", "cpu_flags", "cpu_block", "get_target", "detect_target"]

TARGET_NAMES = ("ort-cpu", "openvino-cpu", "cuda-fp16", "cuda-int8")
_GPU_BLOCKS = {"cuda-fp16": (8, "tensor cores, fp16: 8-channel blocks"),
               "cuda-int8": (32, "tensor cores, int8: 32-channel blocks")}


# Measured (benchmarks/README.md, section 0): ONNX Runtime's MLAS NCHWc conv computes up to 4 blocks
# of filters per kernel pass, so a 32-wide conv costs 1.25-1.5x per channel on AVX-512 and 64 runs
# at the baseline's rate; OpenVINO's CPU kernels reach it at 2 blocks (IC-Conv R50 aligned to 16:
# 1.040, to 32: 1.006).
_CPU_FULL_RATE = {
    "ort-cpu": lambda block: (4 * block, f"MLAS NCHWc kernels compute 4 blocks of {block} filters per pass"),
    "openvino-cpu": lambda block: (2 * block, f"measured: 2 blocks of {block} run at the baseline's rate"),
}


@dataclass(frozen=True)
class Target:
    """A runtime and device, with the channel block its convolution kernels work in."""

    name: str
    block: int
    reason: str
    """Why this block (e.g. which CPU flag decided it), for reports."""
    full_rate: int = 0
    """The branch width (a multiple of `block`) the runtime computes at the baseline's rate; 0: `block`."""
    full_rate_reason: str = ""

    def __post_init__(self) -> None:
        if not self.full_rate:
            object.__setattr__(self, "full_rate", self.block)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "block": self.block, "reason": self.reason, "full_rate": self.full_rate,
                "full_rate_reason": self.full_rate_reason}


def cpu_flags(path: str | os.PathLike[str] = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first processor listed in `path` (empty where unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_block(flags: Iterable[str]) -> tuple[int, str]:
    """(block, reason) of ONNX Runtime / OpenVINO CPU kernels: 16 with AVX-512, 8 with AVX2."""
    flags = set(flags)
    if "avx512f" in flags:
        return 16, "AVX-512 (avx512f): 16-channel blocks"
    if "avx2" in flags:
        return 8, "AVX2: 8-channel blocks"
    return 8, "no AVX2/AVX-512 flag found: 8-channel blocks assumed"


def get_target(name: str, *, flags: Iterable[str] | None = None, field: str = "target") -> Target:
    """The named target; CPU targets take their block from `flags` (default: this machine's)."""
    if name in _GPU_BLOCKS:
        block, reason = _GPU_BLOCKS[name]
        return Target(name, block, reason)
    if name in ("ort-cpu", "openvino-cpu"):
        block, reason = cpu_block(cpu_flags() if flags is None else flags)
        return Target(name, block, reason, *_CPU_FULL_RATE[name](block))
    raise UsageError(f"{field}: got {name!r}, expected one of {list(TARGET_NAMES)}")


def detect_target(*, flags: Iterable[str] | None = None) -> Target:
    """The default target of this machine: ONNX Runtime on its CPU (the exporter's runtime)."""
    return get_target("ort-cpu", flags=flags)
