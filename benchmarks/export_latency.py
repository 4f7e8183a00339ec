"""Whole-trunk latency of exported forms vs the baseline on ONNX Runtime CPU (issue: export perf target).

For each arch (the shipped NATS-C example and the published IC-Conv ResNet-50 pattern, read from
../shared at run time) and each export variant, builds baseline.onnx and model.onnx in memory with
the same weights, then times them interleaved (median of per-pair ratios, bootstrap 95% CI).

    .venv/bin/python benchmarks/export_latency.py [--pairs 20] [--threads 2] [--shape 1x3x800x1216]
        [--variants branches-nomerge,branches,sum,rows] [--out benchmarks/results/export_latency.json]

Run it on a quiet machine: anything else on the cores shows up as noise (CV in the output).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from natsdeploy import build_backbone, build_baseline, count_onnx, load_arch  # noqa: E402
from natsdeploy.convert import load_ic_conv  # noqa: E402
from natsdeploy.export.autotune import choose_rows  # noqa: E402
from natsdeploy.export.fold import fold_trunk, merge_same_dilation  # noqa: E402
from natsdeploy.export.onnx import FORMS, trunk_to_onnx  # noqa: E402
from natsdeploy.runners import ort_session_options  # noqa: E402
from natsdeploy.cli_values import parse_input_shape  # noqa: E402
from natsdeploy.timing.latency import time_interleaved  # noqa: E402
from natsdeploy.timing.machine import machine_info  # noqa: E402

ICCONV = REPO.parent / "shared" / "reference" / "icconv" / "detection_ic_resnet50_k9.json"

# variant -> (form, merge same-dilation branches, opset)
VARIANTS = {
    "branches-nomerge": ("branches", False, 17),
    "branches": ("branches", True, 17),
    "sum": ("sum", True, 17),
    "rows": ("rows", True, 18),
    "auto": ("auto", True, 18),  # per-block choice of rows/branches, timed on this machine
}


def archs():
    yield "nats-c (examples/resnet50_nats_c.json)", load_arch(REPO / "examples" / "resnet50_nats_c.json")
    if ICCONV.is_file():
        yield "ic-conv (detection_ic_resnet50_k9.json)", load_ic_conv(ICCONV, "resnet50")
    else:
        print(f"skipping IC-Conv: {ICCONV} not found")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--shape", default="1x3x800x1216")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "export_latency.json"))
    args = ap.parse_args()
    shape = parse_input_shape(args.shape)
    variants = [v for v in args.variants.split(",") if VARIANTS[v][0] in (*FORMS, "auto")]
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    so = ort_session_options(threads=args.threads)
    results = []
    for label, arch in archs():
        torch.manual_seed(0)
        sd = build_baseline(arch.backbone).state_dict()
        transformed, baseline = build_backbone(arch, sd), build_baseline(arch.backbone, sd)
        base_proto = trunk_to_onnx(fold_trunk(baseline), input_shape=shape)
        base = ort.InferenceSession(base_proto.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
        base_cost = count_onnx(base_proto)
        for v in variants:
            form, merge, opset = VARIANTS[v]
            trunk = fold_trunk(transformed)
            if merge:
                trunk = merge_same_dilation(trunk)
            rows_only = None
            if form == "auto":
                rows_only, _ = choose_rows(trunk, shape, threads=args.threads, log=lambda s: None)
            proto = trunk_to_onnx(trunk, input_shape=shape, form="rows" if form == "auto" else form, opset=opset,
                                  rows_only=rows_only)
            cost = count_onnx(proto)
            sess = ort.InferenceSession(proto.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
            t0 = time.time()
            timing = time_interleaved(lambda: base.run(None, {"images": x}), lambda: sess.run(None, {"images": x}),
                                      pairs=args.pairs, warmup_s=args.warmup_s)
            r = timing.ratio
            row = {"arch": label, "variant": v, "form": form, "merge": merge, "opset": opset,
                   "cost_equal": (cost.params, cost.macs) == (base_cost.params, base_cost.macs),
                   "ratio": r.median, "ci95": [r.ci_low, r.ci_high],
                   "baseline_p50_ms": timing.baseline.p50, "model_p50_ms": timing.transformed.p50,
                   "baseline_cv": timing.baseline.cv, "model_cv": timing.transformed.cv, "pairs": args.pairs,
                   "nodes": len(proto.graph.node),
                   "rows_convs": rows_only}
            results.append(row)
            print(f"{label:<42} {v:<17} ratio {r.median:.3f} (CI {r.ci_low:.3f}-{r.ci_high:.3f})  "
                  f"base {timing.baseline.p50:7.1f} ms  model {timing.transformed.p50:7.1f} ms  "
                  f"cv {timing.baseline.cv:.1%}/{timing.transformed.cv:.1%}  cost equal {row['cost_equal']}  "
                  f"({time.time() - t0:.0f}s)", flush=True)
    record = {"command": " ".join(["python", "benchmarks/export_latency.py", *sys.argv[1:]]),
              "input_shape": list(shape), "threads": args.threads, "ort": ort.__version__,
              "session": "ORT_ENABLE_ALL, intra_op threads as given, 1 inter-op thread, allow_spinning=0",
              "machine": machine_info(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
