"""What benchmarks/gpu.py writes: the machine record, the JSON (one row a line) and the Markdown tables.

Kept apart from the measuring so each file has one job; the record is plain dicts (gpu.py's rows).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from natsdeploy.files import atomic_write_text
from natsdeploy.timing.machine import machine_info

__all__ = ["machine_record", "device_slug", "markdown", "dumps", "write"]


def driver_version() -> str | None:
    """The NVIDIA driver's version (NVML, else nvidia-smi), or None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_record(device: torch.device) -> dict:
    """`natsdeploy.timing.machine.machine_info` plus what a GPU timing depends on: GPU, driver, CUDA, cuDNN
    (version and settings), torch, triton."""
    info = machine_info()
    info["torch"] = torch.__version__
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info["cudnn_settings"] = {"benchmark": torch.backends.cudnn.benchmark,
                              "allow_tf32": torch.backends.cudnn.allow_tf32,
                              "deterministic": torch.backends.cudnn.deterministic}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_sm_count=props.multi_processor_count, gpu_capability=f"{props.major}.{props.minor}",
                    cuda_runtime=torch.version.cuda, driver=driver_version())
    return info


def device_slug(device: torch.device) -> str:
    """The GPU's name as a file-name slug (`nvidia_h100_80gb_hbm3`); `smoke_cpu` on the CPU."""
    if device.type != "cuda":
        return "smoke_cpu"
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")


def cell(row: dict | None, *, ms: bool = False) -> str:
    if row is None:
        return ""
    if row["status"] != "measured":
        return row["status"]
    r = row["ratio"]
    text = f"{r['median']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})"
    return text + (f", {row['baseline_ms']['p50']:.2f} ms" if ms else "")


def table(rows: list[dict], label: Callable[[dict], tuple], header: Sequence[str], *, ms: bool = False) -> list[str]:
    """One line per distinct `label(row)`, one column per setting, cells: ratio (95% CI)."""
    settings = [s for s in dict.fromkeys(r["setting"] for r in rows)]
    index: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        index.setdefault(label(r), {})[r["setting"]] = r
    lines = ["| " + " | ".join([*header, *settings]) + " |", "|" + " --- |" * (len(header) + len(settings))]
    for key, by in index.items():
        lines.append("| " + " | ".join([*map(str, key), *(cell(by.get(s), ms=ms) for s in settings)]) + " |")
    return lines


LABELS = {
    "conv_genotypes": (lambda r: (r["conv"], "x".join(map(str, r["input"][1:])),
                                  " ".join(f"d{d[0]},{d[1]}:{c}" for d, c in r["branches"])),
                       ("conv", "input CxHxW", "branches (dilation:channels)"), False),
    "conv_widths": (lambda r: (r["stage"], "x".join(map(str, r["input"][1:])), r["width"], "{},{}".format(*r["dilation"])),
                    ("stage", "input CxHxW", "width", "dilation"), False),
    "trunks": (lambda r: (r["arch"], r["variant"]), ("arch", "variant"), True),
    "trunks_compile": (lambda r: (r["arch"], r["variant"]), ("arch", "variant"), True),
    "ort_cuda": (lambda r: (r["arch"],), ("arch",), True),
    "tensorrt": (lambda r: (r["arch"], r["variant"]), ("arch", "variant"), True),
}


def markdown(record: dict) -> str:
    m = record["machine"]
    gpu = m.get("gpu", "no GPU (smoke run on the CPU)")
    lines = [f"# GPU measurement: {gpu}", "", f"`{record['command']}`", "",
             f"GPU {gpu}, driver {m.get('driver')}, CUDA {m.get('cuda_runtime')}, cuDNN {m.get('cudnn')}, "
             f"torch {m.get('torch')}, triton {m.get('triton')}; CPU {m.get('cpu')}. Input "
             f"{record['input_hw'][0]}x{record['input_hw'][1]}; budget {record['budget_s']:.0f} s, ran "
             f"{record['elapsed_s']:.0f} s{'' if record['complete'] else ' (incomplete: interrupted)'}.", "",
             "Cells: subject/baseline time, median of per-pair ratios (95% bootstrap interval); above 1 = the "
             "transformed (or dilated) one is slower. Trunk cells add the baseline's p50.", ""]
    for name, sec in record["sections"].items():
        lines += [f"## {name}", ""]
        if sec.get("note"):
            lines += [sec["note"], ""]
        if sec["status"] == "skipped":
            lines += [f"Skipped: {sec['reason']}", ""]
            continue
        label, header, ms = LABELS[name]
        lines += table(sec["rows"], label, header, ms=ms) + [""]
        reasons = sorted({r["reason"] for r in sec["rows"] if r["status"] != "measured"})
        lines += [f"- not measured: {r}" for r in reasons] + ([""] if reasons else [])
    return "\n".join(lines)


def rounded(obj):
    """Floats to 5 significant digits (monotonic, so ordered intervals stay ordered): a readable record."""
    if isinstance(obj, float):
        return float(f"{obj:.5g}") if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v) for v in obj]
    return obj


def dumps(record: dict) -> str:
    """The record as JSON, indented, with each row on one line (a full run has about a thousand rows)."""
    rec = rounded(record)
    sections = rec.pop("sections")
    parts = []
    for name, sec in sections.items():
        rows = ",\n".join("   " + json.dumps(r, separators=(",", ":")) for r in sec["rows"])
        head = json.dumps({k: v for k, v in sec.items() if k != "rows"})[:-1]
        parts.append(f'  {json.dumps(name)}: {head}, "rows": [\n{rows}\n  ]}}')
    return json.dumps(rec, indent=1)[:-2] + ',\n "sections": {\n' + ",\n".join(parts) + "\n }\n}\n"


def write(out_dir: Path, slug: str, record: dict) -> Path:
    path = out_dir / f"gpu_{slug}.json"
    atomic_write_text(path, dumps(record))
    atomic_write_text(path.with_suffix(".md"), markdown(record))
    return path
