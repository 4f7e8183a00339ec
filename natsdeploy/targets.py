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

__all__ = ["Target", "TARGET_NAMES", "cpu_flags", "cpu_block", "cpu_block_int8", "int8_pairs_saturate", "get_target", "detect_target"]

TARGET_NAMES = ("ort-cpu", "openvino-cpu", "ort-cpu-int8", "openvino-cpu-int8", "cuda-fp16", "cuda-int8")
_GPU_BLOCKS = {"cuda-fp16": (8, "tensor cores, fp16: 8-channel blocks"),
               "cuda-int8": (32, "tensor cores, int8: 32-channel blocks")}


# Full-rate width in blocks, per CPU runtime (benchmarks/README.md, section 0). ONNX Runtime: MLAS's
# NCHWc conv computes up to 4 blocks of filters per pass over its input; measured on AVX-512, a
# 32-wide conv costs 1.34-1.55x per channel and archs aligned to 64 run at the baseline's speed
# (IC-Conv R50: 1.003x). OpenVINO: measured on AVX-512, IC-Conv R50 aligned to 16: 1.040x, to 32:
# 1.006x. AVX2 values follow the same block counts (not measured).
_CPU_BLOCKS_PER_PASS = {
    "ort-cpu": (4, "MLAS NCHWc kernels compute up to 4 blocks of {block} filters per pass"),
    "openvino-cpu": (2, "OpenVINO CPU kernels reach the baseline's rate at 2 blocks of {block} (measured on AVX-512)"),
}


@dataclass(frozen=True)
class Target:
    """A runtime and device, with the channel block its convolution kernels work in."""

    name: str
    block: int
    reason: str
    """Why this block (e.g. which CPU flag decided it), for reports."""
    full_rate: int | None = None
    """The branch width (a multiple of `block`) the runtime computes at the baseline's rate; None: `block`."""
    full_rate_reason: str = ""

    def __post_init__(self) -> None:
        if self.full_rate is None:
            object.__setattr__(self, "full_rate", self.block)
        f = self.full_rate
        if not isinstance(f, int) or isinstance(f, bool) or f < 1 or f % self.block:
            raise UsageError(f"full_rate: got {f!r}, expected a positive multiple of block {self.block}")

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
    except OSError:  # no /proc/cpuinfo (not Linux): no flags known
        return frozenset()
    return frozenset()


def cpu_block(flags: Iterable[str]) -> tuple[int, str]:
    """(block, reason) of ONNX Runtime / OpenVINO CPU kernels: 16 with AVX-512, 8 with AVX2."""
    flags = set(flags)
    if "avx512f" in flags:
        return 16, "AVX-512 (avx512f): 16-channel blocks"
    if "avx2" in flags:
        return 8, "AVX2: 8-channel blocks"
    return 8, "no AVX2/AVX-512 flag found: 8-channel blocks assumed"


# INT8 CPU kernels (`export --precision int8` graphs): the block is the output channels one vector of int32
# accumulators holds. Full-rate widths as measured by benchmarks/conv_width_int8.py (benchmarks/README.md,
# section 6; per-channel cost of a `width`-output QDQ conv over a 256-wide one at ResNet-50's layer3 and
# layer4 shapes, dilations 1, 2 and (4, 1)): the narrowest measured width at most 1.15x everywhere; None
# where no measured width (8-128) gets there, so the block alone is assumed. Measured on three ISAs: AMX (the
# Xeon kind), AVX-512 VNNI without AMX (AMD Zen 5) and AVX2 without VNNI (AMD Zen 3); elsewhere only the
# block is known.
_MEASURED_SHAPES = "layer3/layer4 shapes; narrower convs, e.g. layer2's, not measured"
_INT8_FULL_RATE = {
    ("ort-cpu-int8", "amx"): (128, "measured on AMX (results/conv_width_int8.md, " + _MEASURED_SHAPES + "): "
                                   "1.09-1.13x per channel at 128 channels, 1.36-1.44x at 64"),
    ("openvino-cpu-int8", "amx"): (None, "measured on AMX (results/conv_width_int8.md, " + _MEASURED_SHAPES + "): "
                                         "no measured width reaches 1.15x per channel, 1.39-1.56x at 128 "
                                         "channels (2.18-2.40x at 64): the block alone is assumed"),
    ("ort-cpu-int8", "avx512_vnni"): (128, "measured on AVX-512 VNNI without AMX, AMD Zen 5 "
                                           "(results/conv_width_int8_avx512vnni.md, " + _MEASURED_SHAPES + "): "
                                           "1.08-1.13x per channel at 128 channels, 1.21-1.35x at 64"),
    ("openvino-cpu-int8", "avx512_vnni"): (None, "measured on AVX-512 VNNI without AMX, AMD Zen 5 "
                                                 "(results/conv_width_int8_avx512vnni.md, " + _MEASURED_SHAPES + "): "
                                                 "no measured width reaches 1.15x per channel, 1.08-1.25x at 128 "
                                                 "channels (1.42-1.71x at 64): the block alone is assumed"),
    ("ort-cpu-int8", "avx2"): (128, "measured on AVX2 without VNNI, AMD Zen 3 (results/conv_width_int8_avx2.md, "
                                    + _MEASURED_SHAPES + "): 1.02-1.06x per channel at 128 channels, 1.09-1.21x at 64"),
    ("openvino-cpu-int8", "avx2"): (128, "measured on AVX2 without VNNI, AMD Zen 3 (results/conv_width_int8_avx2.md, "
                                         + _MEASURED_SHAPES + "): 1.05-1.14x per channel at 128 channels, "
                                         "1.16-1.37x at 64"),
}
_INT8_NOT_MEASURED = ("not measured on this ISA (benchmarks/conv_width_int8.py ran on AMX, on AVX-512 VNNI "
                      "without AMX and on AVX2 without VNNI): the block alone is assumed")


def _int8_isa(flags: set[str]) -> str | None:
    """Which measured int8 ISA these flags are: 'amx', 'avx512_vnni' (AVX-512 BW + VNNI, no AMX), 'avx2'
    (no AVX-512 at all, no VNNI) or None."""
    if "amx_int8" in flags:
        return "amx"
    if {"avx512bw", "avx512_vnni"} <= flags:
        return "avx512_vnni"
    if "avx2" in flags and not flags & {"avx512f", "avx512bw", "avx512_vnni", "avx_vnni"}:
        return "avx2"
    return None


def cpu_block_int8(flags: Iterable[str]) -> tuple[int, str]:
    """(block, reason) of int8 convolution kernels on this ISA: 16 output channels with AMX or AVX-512
    (VNNI or not), 8 with AVX-VNNI/AVX2 (`vpmaddubsw`); from the ISA (the full rate is what was measured)."""
    flags = set(flags)
    if "amx_int8" in flags:
        return 16, ("AMX (amx_int8): tiles of 16 rows x 64 int8, 16-channel output blocks "
                    "(from the ISA)")
    if "avx512_vnni" in flags:
        return 16, "AVX-512 VNNI (avx512_vnni, vpdpbusd): 16 int32 lanes, 16-channel blocks (from the ISA)"
    if "avx512bw" in flags:
        return 16, "AVX-512 BW without VNNI (vpmaddubsw): 16 int32 lanes, 16-channel blocks (from the ISA)"
    if "avx_vnni" in flags:
        return 8, "AVX-VNNI (avx_vnni): 8 int32 lanes, 8-channel blocks (from the ISA)"
    if "avx2" in flags:
        return 8, "AVX2 without VNNI (vpmaddubsw): 8 int32 lanes, 8-channel blocks (from the ISA)"
    return 8, "no AVX2/AVX-512 flag found: 8-channel blocks assumed"


def int8_pairs_saturate(flags: Iterable[str]) -> bool:
    """Whether x86 int8 dot products here go through `vpmaddubsw` (no VNNI, no AMX): it adds each pair of
    u8 x s8 products into a saturating int16, so with full-range 8-bit weights ONNX Runtime's fused int8
    convs can clip where the QDQ graph does not (ORT's remedy: 7-bit weights, `reduce_range`)."""
    flags = set(flags)  # no x86 SIMD flags (another ISA, or no /proc/cpuinfo): nothing known, so no claim
    return bool(flags & {"avx2", "avx512bw"}) and not flags & {"amx_int8", "avx512_vnni", "avx_vnni"}


def get_target(name: str, *, flags: Iterable[str] | None = None, field: str = "target") -> Target:
    """The named target; CPU targets take their block from `flags` (default: this machine's)."""
    if name in _GPU_BLOCKS:
        block, reason = _GPU_BLOCKS[name]
        return Target(name, block, reason)
    if name in ("ort-cpu", "openvino-cpu"):
        block, reason = cpu_block(cpu_flags() if flags is None else flags)
        blocks, why = _CPU_BLOCKS_PER_PASS[name]
        return Target(name, block, reason, full_rate=blocks * block, full_rate_reason=why.format(block=block))
    if name in ("ort-cpu-int8", "openvino-cpu-int8"):
        flags = set(cpu_flags() if flags is None else flags)
        block, reason = cpu_block_int8(flags)
        full_rate, why = _INT8_FULL_RATE.get((name, _int8_isa(flags)), (None, _INT8_NOT_MEASURED))
        return Target(name, block, reason, full_rate=full_rate, full_rate_reason=why)
    raise UsageError(f"{field}: got {name!r}, expected one of {list(TARGET_NAMES)}")


def detect_target(*, flags: Iterable[str] | None = None) -> Target:
    """The default target of this machine: ONNX Runtime on its CPU (the exporter's runtime)."""
    return get_target("ort-cpu", flags=flags)
