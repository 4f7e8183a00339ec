"""benchmarks/gpu.py: the GPU measurement runs end to end (--smoke, on the CPU) and writes what it promises.

GPU time is rare and short: this is how the script is known to work before one appears. The smoke run
checks the record's structure (every section measured with ordered intervals, or skipped with a reason),
the conv shapes against torchvision's own network, and the ORT parity; no timing value is asserted.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torchvision

from natsdeploy import load_arch
from tests.conftest import EXAMPLES, REPO

SCRIPT = REPO / "benchmarks" / "gpu.py"
SECTIONS = {"ort_cuda", "conv_genotypes", "conv_widths", "trunks", "tensorrt", "trunks_compile"}


def _script():
    """benchmarks/gpu.py as a module (it is a script, not part of the package); loaded once."""
    if "benchmarks_gpu" not in sys.modules:
        spec = importlib.util.spec_from_file_location("benchmarks_gpu", SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
        spec.loader.exec_module(mod)
    return sys.modules["benchmarks_gpu"]


def _torchvision_conv_inputs(backbone: str, hw: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Every 3x3 conv's input shape (C, H, W) in torchvision's own network, on the meta device."""
    with torch.device("meta"):
        model = getattr(torchvision.models, backbone)().eval()
    seen: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args, out) -> None:
            seen[name] = tuple(args[0].shape[1:])
        return hook

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3):
            m.register_forward_hook(record(name))
    with torch.no_grad():
        model(torch.empty(1, 3, *hw, device="meta"))
    return seen


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_smoke")
    r = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_smoke_cpu.json", "gpu_smoke_cpu.md"]
    return json.loads((out / "gpu_smoke_cpu.json").read_text()), (out / "gpu_smoke_cpu.md").read_text()


def test_every_section_is_measured_with_ordered_intervals_or_skipped_with_a_reason(smoke):
    record, md = smoke
    assert record["format"] == "natsdeploy-gpu-bench" and record["version"] == 1
    assert record["smoke"] is True and record["complete"] is True and record["device"] == "cpu"
    assert set(record["sections"]) == SECTIONS
    machine = record["machine"]
    assert machine["torch"] == torch.__version__ and machine["cpu"] and machine["cudnn_settings"]["benchmark"] is True
    for name, sec in record["sections"].items():
        assert sec["status"] in ("measured", "skipped"), name
        measured = [r for r in sec["rows"] if r["status"] == "measured"]
        if sec["status"] == "skipped":
            assert not measured and isinstance(sec["reason"], str) and sec["reason"].strip(), name
        else:
            assert measured, name
        assert sec["counts"]["measured"] == len(measured)
        for row in sec["rows"]:
            assert row["status"] in ("measured", "skipped", "failed"), (name, row)
            if row["status"] != "measured":
                assert isinstance(row["reason"], str) and row["reason"].strip(), (name, row)
                continue
            ratio = row["ratio"]
            lo, hi = ratio["ci95"]
            assert all(math.isfinite(v) and v > 0 for v in (ratio["median"], lo, hi)), (name, row)
            assert lo <= ratio["median"] <= hi, (name, row)
            assert ratio["n"] == record["plan"]["conv_timing" if name.startswith("conv") else "trunk_timing"]["pairs"]
            assert row["baseline_ms"]["p50"] > 0 and row["subject_ms"]["p50"] > 0
        assert f"## {name}" in md


def test_smoke_on_the_cpu_measures_what_a_cpu_can_and_says_why_not_the_rest(smoke):
    record, md = smoke
    sections = record["sections"]
    for name in ("ort_cuda", "conv_genotypes", "conv_widths", "trunks", "trunks_compile"):
        assert sections[name]["status"] == "measured", (name, sections[name].get("reason"))
        assert sections[name]["counts"]["failed"] == 0, [r["reason"] for r in sections[name]["rows"]
                                                         if r["status"] == "failed"]
    assert "CUDA GPU" in sections["tensorrt"]["reason"]
    graph_rows = [r for r in sections["trunks"]["rows"] if r["variant"] == "cuda_graph"]
    assert graph_rows and all(r["status"] == "skipped" and "CUDA" in r["reason"] for r in graph_rows)
    eager = {r["arch"] for r in sections["trunks"]["rows"] if r["variant"] == "eager" and r["status"] == "measured"}
    assert eager == {"example", "aligned32"}
    # ORT (the CPU provider standing in for CUDA) computes what PyTorch computes, within fp32 tolerance
    for row in sections["ort_cuda"]["rows"]:
        assert row["parity"]["passed"] is True and set(row["parity"]["outputs"]) == {"c2", "c3", "c4", "c5"}
        assert all(o["rel_err"] <= 1e-4 for o in row["parity"]["outputs"].values())
    compile_row = sections["trunks_compile"]["rows"][0]
    assert compile_row["compile_s"]["baseline"] > 0 and compile_row["compile_s"]["subject"] > 0


def test_conv_rows_run_each_transformed_conv_at_torchvisions_shape(smoke):
    record, _ = smoke
    arch = load_arch(EXAMPLES / "resnet18_nats_c.json")
    hw = tuple(record["input_hw"])
    shapes = _torchvision_conv_inputs("resnet18", hw)
    rows = record["sections"]["conv_genotypes"]["rows"]
    settings = [s for s in record["plan"]["conv_settings"]]
    assert len(rows) == len(arch.convs) * len(settings)
    for row in rows:
        ct = arch.convs[row["conv"]]
        assert tuple(row["input"][1:]) == shapes[row["conv"]]
        assert row["branches"] == [[list(b.dilation), b.channels] for b in ct.branches]
    widths = record["sections"]["conv_widths"]["rows"]
    assert {r["stage"] for r in widths} == {"layer2", "layer3", "layer4"}
    assert {r["width"] for r in widths} == set(record["plan"]["widths"])


@pytest.mark.parametrize("backbone, hw", [("resnet50", (800, 1216)), ("resnet18", (97, 131)), ("resnet50", (33, 45))])
def test_conv_input_shape_matches_torchvision(backbone, hw):
    from natsdeploy.specs import get_spec

    gpu = _script()
    spec = get_spec(backbone)
    shapes = _torchvision_conv_inputs(backbone, hw)
    assert set(shapes) == set(spec.convs)
    for name, info in spec.convs.items():
        assert (info.in_channels, *gpu.conv_input_hw(spec, name, hw)) == shapes[name], name


def test_a_missing_icconv_pattern_is_a_reason_not_a_failure(tmp_path):
    gpu = _script()
    models = gpu.load_models(gpu.smoke_plan(str(EXAMPLES / "resnet18_nats_c.json")), tmp_path / "absent.json",
                             ("icconv",))
    assert models.archs == {} and "--icconv" in models.missing["icconv"]
    assert str(tmp_path / "absent.json") in models.missing["icconv"]


@pytest.mark.parametrize("argv, expected", [
    (["--smoke", "--budget-s", "0"], "--budget-s: got '0', expected a number >= 1"),
    (["--smoke", "--budget-s", "soon"], "--budget-s: got 'soon', expected a number >= 1"),
    ([], "device: got no CUDA GPU"),
])
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(argv, expected, tmp_path, capsys):
    if not argv and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: without --smoke the script would measure it")
    gpu = _script()
    out = tmp_path / "out"
    assert gpu.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_spent_budget_skips_every_part_for_time_and_leaves_torch_as_it_was(tmp_path):
    gpu = _script()
    gpu.T_START -= 3600  # the budget counts from the script's start: an hour ago, so 1 s is spent, on any machine
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    assert gpu.main(["--smoke", "--budget-s", "1", "--out", str(tmp_path)]) == 0
    assert (torch.get_num_threads(), torch.is_grad_enabled()) == (threads, grad)
    record = json.loads((tmp_path / "gpu_smoke_cpu.json").read_text())
    assert record["complete"] is True and set(record["sections"]) == SECTIONS
    for name, sec in record["sections"].items():
        assert sec["status"] == "skipped" and sec["reason"], name
        for row in sec["rows"]:
            assert row["status"] == "skipped" and (row["reason"] == gpu.TIME or "CUDA" in row["reason"]), row
    assert sum(len(s["rows"]) for s in record["sections"].values()) > 0
    assert gpu.TIME in record["sections"]["conv_genotypes"]["reason"]
    assert "## conv_genotypes" in (tmp_path / "gpu_smoke_cpu.md").read_text()
