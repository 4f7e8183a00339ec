"""Deployment targets and their channel blocks (ARCH_FORMAT "Alignment"), detected from CPU flags."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from natsdeploy.errors import UsageError
from natsdeploy.targets import TARGET_NAMES, Target, cpu_block, cpu_flags, detect_target, get_target, int8_pairs_saturate
from tests.conftest import REPO


@pytest.mark.parametrize("flags, block", [({"avx2", "avx512f", "fma"}, 16), ({"avx", "avx2"}, 8), (set(), 8),
                                          ({"avx512f"}, 16)])
def test_cpu_block_from_flags(flags, block):
    assert cpu_block(flags)[0] == block
    for name in ("ort-cpu", "openvino-cpu"):
        assert get_target(name, flags=flags).block == block


@pytest.mark.parametrize("flags, ort, ov", [({"avx512f"}, 64, 32), ({"avx2"}, 32, 16)])
def test_full_rate_width_per_cpu_runtime(flags, ort, ov):
    t = get_target("ort-cpu", flags=flags)
    assert t.full_rate == ort and "MLAS" in t.full_rate_reason and t.to_dict()["full_rate"] == ort
    assert get_target("openvino-cpu", flags=flags).full_rate == ov
    assert get_target("cuda-int8", flags=flags).full_rate == 32


@pytest.mark.parametrize("full_rate", [24, -16, 0, 8, True])
def test_full_rate_must_be_a_positive_multiple_of_the_block(full_rate):
    with pytest.raises(UsageError, match=rf"^full_rate: got {full_rate!r}, expected a positive multiple of block 16$"):
        Target("t", 16, "r", full_rate=full_rate)
    assert Target("t", 16, "r").full_rate == 16 and Target("t", 16, "r", full_rate=48).full_rate == 48


def test_gpu_blocks_do_not_depend_on_the_cpu():
    assert get_target("cuda-fp16", flags=set()).block == 8
    assert get_target("cuda-int8", flags={"avx512f"}).block == 32
    assert set(TARGET_NAMES) == {"ort-cpu", "openvino-cpu", "ort-cpu-int8", "openvino-cpu-int8", "cuda-fp16",
                                 "cuda-int8"}


def test_unknown_target_is_one_line():
    with pytest.raises(UsageError, match=r"^--target: got 'tpu', expected one of \['ort-cpu'"):
        get_target("tpu", field="--target")


def test_cpu_flags_reads_the_flags_line(tmp_path):
    p = tmp_path / "cpuinfo"
    p.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(p) == {"fpu", "avx2", "avx512f"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_detect_target_is_this_machines_cpu():
    t = detect_target()
    assert t.name == "ort-cpu" and t.block == cpu_block(cpu_flags())[0]
    assert detect_target(flags={"avx2"}).block == 8 and "AVX2" in detect_target(flags={"avx2"}).reason


def test_importing_targets_does_not_import_torch():
    code = "import sys, natsdeploy.targets, natsdeploy.align; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_int8_cpu_targets_take_their_block_from_the_isa():
    """int8 blocks: 16 with AMX or AVX-512 (VNNI or not), 8 with AVX-VNNI/AVX2. Full rate: measured on AMX, on
    AVX-512 VNNI without AMX and on AVX2 without VNNI (next test); elsewhere the block alone, and the reason
    says so."""
    cases = [({"avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_int8"}, 16, "AMX", "measured on AMX"),
             ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, 16, "VNNI", "measured on AVX-512 VNNI"),
             ({"avx2", "avx512f", "avx512_vnni"}, 16, "VNNI", "not measured"),  # int8 AVX-512 needs BW
             ({"avx2", "avx512f", "avx512bw"}, 16, "vpmaddubsw", "not measured"),
             ({"avx2", "avx_vnni"}, 8, "AVX-VNNI", "not measured"),
             ({"avx2", "fma"}, 8, "AVX2", "measured on AVX2"), ({"avx2", "avx512f"}, 8, "AVX2", "not measured"),  # int8 AVX-512 needs BW
             (set(), 8, "assumed", "not measured")]
    for name in ("ort-cpu-int8", "openvino-cpu-int8"):
        assert name in TARGET_NAMES
        for flags, block, word, rate_word in cases:
            t = get_target(name, flags=flags)
            assert t.block == block and word in t.reason and rate_word in t.full_rate_reason, (name, flags, t)
            assert t.full_rate % t.block == 0
            if rate_word == "not measured":
                assert t.full_rate == block


@pytest.mark.parametrize("results, flags", [("conv_width_int8.json", {"avx2", "avx512f", "avx512bw", "amx_int8"}),
                                            ("conv_width_int8_avx512vnni.json",
                                             {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni"}),
                                            ("conv_width_int8_avx2.json", {"avx2", "fma"})])
def test_int8_full_rate_is_the_narrowest_measured_width_within_15_percent(results, flags):
    """Each int8 CPU target's full rate, recomputed from the recorded measurement: the narrowest width whose
    per-channel cost is at most 1.15x at every stage and dilation; none (the block) if no width gets there.
    The reason quotes the measured range at 128 and 64 channels."""
    rec = json.loads((REPO / "benchmarks" / "results" / results).read_text())
    for name, runtime in (("ort-cpu-int8", "onnxruntime"), ("openvino-cpu-int8", "openvino")):
        rows = [r for r in rec["results"] if r["runtime"] == runtime]
        widths = sorted({r["width"] for r in rows})
        span = {w: [f(r["per_channel_ratio"] for r in rows if r["width"] == w) for f in (min, max)] for w in widths}
        t = get_target(name, flags=flags)
        assert t.full_rate == next((w for w in widths if span[w][1] <= 1.15), t.block), (name, results, span)
        for w in (128, 64):
            assert f"{span[w][0]:.2f}-{span[w][1]:.2f}x" in t.full_rate_reason, (t.full_rate_reason, w, span[w])


def test_int8_pairs_saturate_only_without_vnni_or_amx():
    """`vpmaddubsw` (int16 pair sums) is what x86 int8 kernels use without VNNI or AMX."""
    assert not int8_pairs_saturate({"avx2", "avx512bw", "avx512_vnni", "amx_int8"})
    assert not int8_pairs_saturate({"avx2", "avx512bw", "avx512_vnni"})
    assert not int8_pairs_saturate({"avx2", "avx_vnni"})
    assert int8_pairs_saturate({"avx2", "avx512f", "avx512bw"}) and int8_pairs_saturate({"avx2", "fma"})
    assert not int8_pairs_saturate(set())  # no flags known (not x86 Linux): no claim
