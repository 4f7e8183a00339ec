"""Latency of unaligned vs hardware-aligned archs on ONNX Runtime CPU and OpenVINO CPU (issue 11).

For each arch (the shipped NATS-C example, the published IC-Conv ResNet-50 and ResNet-101 patterns
read from ../shared at run time) and its versions aligned to 16 and 32 channels (`align_arch`),
builds baseline and transformed ONNX in memory with the same seeded weights and times them
interleaved on each runtime (pairs in alternating order, median of per-pair ratios, bootstrap 95%
interval). Also counts the filters alignment moved to another dilation, and times the export forms
(branches, rows, function) of the unaligned archs side by side.

    .venv/bin/python benchmarks/alignment.py [--pairs 20] [--threads 2] [--shape 1x3x800x1216]
        [--archs nats-c,icconv-r50,icconv-r101] [--multiples 0,16,32] [--runtimes ort,openvino]
        [--forms branches,rows,function] [--out benchmarks/results/alignment.json]

Run it on a quiet machine (nothing else on the cores): noise shows up as CV in the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from natsdeploy import align_arch, align_report, build_backbone, build_baseline, count_onnx, load_arch  # noqa: E402
from natsdeploy.align import check_alignment  # noqa: E402
from natsdeploy.targets import get_target  # noqa: E402
from natsdeploy.convert import load_ic_conv  # noqa: E402
from natsdeploy.export.fold import fold_trunk, merge_same_dilation  # noqa: E402
from natsdeploy.export.onnx import save_onnx, trunk_to_onnx  # noqa: E402
from natsdeploy.runners import OpenVinoRunner, OrtRunner  # noqa: E402
from natsdeploy.cli_values import parse_input_shape  # noqa: E402
from natsdeploy.timing.latency import time_interleaved  # noqa: E402
from natsdeploy.timing.machine import machine_info  # noqa: E402

ICCONV = REPO.parent / "shared" / "reference" / "icconv"
OPSET = {"branches": 17, "function": 17, "rows": 18}


def load(name: str):
    if name == "nats-c":
        return load_arch(REPO / "examples" / "resnet50_nats_c.json")
    depth = {"icconv-r50": "50", "icconv-r101": "101"}[name]
    path = ICCONV / f"detection_ic_resnet{depth}_k9.json"
    if not path.is_file():
        return None
    return load_ic_conv(path, f"resnet{depth}")


def make_runner(runtime: str, path: Path, threads: int):
    if runtime == "ort":
        return OrtRunner(path, threads=threads)
    return OpenVinoRunner(path, threads=threads, precision="f32")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--shape", default="1x3x800x1216")
    ap.add_argument("--archs", default="nats-c,icconv-r50,icconv-r101")
    ap.add_argument("--multiples", default="0,16,32", help="0 = the arch as published")
    ap.add_argument("--runtimes", default="ort,openvino")
    ap.add_argument("--forms", default="branches,rows,function",
                    help="forms timed for the unaligned arch (aligned archs: branches only)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "alignment.json"))
    args = ap.parse_args()
    shape = parse_input_shape(args.shape)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    feed = {"images": x}
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="natsdeploy-align-bench-"))
    for name in args.archs.split(","):
        original = load(name)
        if original is None:
            print(f"skipping {name}: pattern not found under {ICCONV}")
            continue
        torch.manual_seed(0)
        sd = build_baseline(original.backbone).state_dict()
        base_proto = trunk_to_onnx(fold_trunk(build_baseline(original.backbone, sd)), input_shape=shape)
        base_path = save_onnx(base_proto, tmp / f"{name}_baseline.onnx")
        base_cost = count_onnx(base_proto)
        for multiple in [int(m) for m in args.multiples.split(",")]:
            arch = original if multiple == 0 else align_arch(original, multiple)
            moved = 0 if multiple == 0 else align_report(original, arch).changed
            share16 = check_alignment(arch, get_target("ort-cpu"), shape).mac_share
            trunk = merge_same_dilation(fold_trunk(build_backbone(arch, sd)))
            forms = args.forms.split(",") if multiple == 0 else ["branches"]
            for form in forms:
                proto = trunk_to_onnx(trunk, input_shape=shape, form=form, opset=OPSET[form])
                path = save_onnx(proto, tmp / f"{name}_{multiple}_{form}.onnx")
                cost = count_onnx(proto)
                for runtime in args.runtimes.split(","):
                    base, model = make_runner(runtime, base_path, args.threads), make_runner(runtime, path,
                                                                                            args.threads)
                    t0 = time.time()
                    timing = time_interleaved(lambda: base.run(feed), lambda: model.run(feed),
                                              pairs=args.pairs, warmup_s=args.warmup_s)
                    r = timing.ratio
                    row = {"arch": name, "aligned_to": multiple or None, "form": form, "runtime": runtime,
                           "filters_moved": moved, "unaligned_mac_share_ort_cpu": share16,
                           "cost_equal": (cost.params, cost.macs) == (base_cost.params, base_cost.macs),
                           "ratio": r.median, "ci95": [r.ci_low, r.ci_high],
                           "baseline_p50_ms": timing.baseline.p50, "model_p50_ms": timing.transformed.p50,
                           "baseline_cv": timing.baseline.cv, "model_cv": timing.transformed.cv,
                           "pairs": args.pairs, "runner": model.name}
                    results.append(row)
                    print(f"{name:<12} align {multiple or '-':>3} {form:<9} {runtime:<9} ratio {r.median:.3f} "
                          f"(CI {r.ci_low:.3f}-{r.ci_high:.3f})  base {timing.baseline.p50:7.1f} ms  "
                          f"model {timing.transformed.p50:7.1f} ms  cv {timing.baseline.cv:.1%}/"
                          f"{timing.transformed.cv:.1%}  moved {moved}  cost equal {row['cost_equal']}  "
                          f"({time.time() - t0:.0f}s)", flush=True)
                    del base, model
    import onnxruntime as ort
    import openvino as ov

    record = {"command": " ".join(["python", "benchmarks/alignment.py", *sys.argv[1:]]),
              "input_shape": list(shape), "threads": args.threads, "ort": ort.__version__,
              "openvino": ov.get_version(), "precision": "f32 (OpenVINO INFERENCE_PRECISION_HINT pinned)",
              "session": "ORT_ENABLE_ALL, intra_op threads as given, allow_spinning=0; OpenVINO CPU, "
                         "INFERENCE_NUM_THREADS as given",
              "machine": machine_info(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    Path(args.out).with_suffix(".md").write_text(markdown(record))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")


def markdown(record: dict) -> str:
    """The results as one table (ratio = transformed / baseline, median of pairs, 95% CI)."""
    lines = [f"`{record['command']}`", "",
             f"input {'x'.join(map(str, record['input_shape']))}, fp32, {record['threads']} threads, "
             f"ORT {record['ort']}, OpenVINO {record['openvino']}", "",
             "| arch | aligned to | form | runtime | ratio (95% CI) | baseline p50 ms | filters moved | "
             "unaligned MAC share (block 16) | cost equal |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in record["results"]:
        lines.append(f"| {r['arch']} | {r['aligned_to'] or '-'} | {r['form']} | {r['runtime']} | "
                     f"{r['ratio']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) | {r['baseline_p50_ms']:.0f} | "
                     f"{r['filters_moved']} | {r['unaligned_mac_share_ort_cpu']:.1%} | {r['cost_equal']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
