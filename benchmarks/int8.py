"""INT8 on CPU (issue 21): SQNR, int8 transformed / int8 baseline latency and int8 / fp32 speed-up.

For the NATS-C ResNet-50 example, its aligned-32 version (`natsdeploy.align_arch`) and the published
IC-Conv R50 pattern (read from ../shared at run time), each with its baseline (same seeded weights):
builds the fp32 graphs as `natsdeploy export` does, quantizes both on the same calibration images
(`natsdeploy.export.int8.int8_export`: QDQ, per-channel symmetric int8, one scale per
transformed conv) and times them interleaved on ONNX Runtime CPU and OpenVINO CPU (median of
per-pair ratios, bootstrap 95% interval).

    .venv/bin/python benchmarks/int8.py [--input-shape 1x3x800x1216] [--pairs 20] [--threads N]
        [--calibration synthetic] [--calibration-images 64] [--warmup-s 2] [--int8-activations s8|u8]
        [--out benchmarks/results/int8.json]

A quick run: --input-shape 1x3x64x96 --pairs 2 --calibration-images 4. Run the full one on a quiet
machine: anything else on the cores shows up as noise (CV in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from natsdeploy import align_arch, load_arch  # noqa: E402
from natsdeploy.convert import load_ic_conv  # noqa: E402
from natsdeploy.export.int8 import int8_export  # noqa: E402
from natsdeploy.export.onnx import to_onnx  # noqa: E402
from natsdeploy.models.build import build_trunks  # noqa: E402
from natsdeploy.cli_values import parse_input_shape  # noqa: E402
from natsdeploy.timing.machine import machine_info  # noqa: E402

ICCONV = REPO.parent / "shared" / "reference" / "icconv" / "detection_ic_resnet50_k9.json"


def archs():
    example = load_arch(REPO / "examples" / "resnet50_nats_c.json")
    yield "nats-c (examples/resnet50_nats_c.json)", example
    yield "nats-c aligned to 32 (align_arch)", align_arch(example, 32)
    if ICCONV.is_file():
        yield "ic-conv (detection_ic_resnet50_k9.json)", load_ic_conv(ICCONV, "resnet50")
    else:
        print(f"skipping IC-Conv: {ICCONV} not found")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input-shape", default="1x3x800x1216")
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--calibration", default="synthetic", help="COCO-format folder or 'synthetic'")
    ap.add_argument("--calibration-images", type=int, default=64)
    ap.add_argument("--int8-activations", default="s8", choices=("s8", "u8"),
                    help="s8 (symmetric, TensorRT's layout) or u8 (asymmetric, ONNX Runtime CPU's fast path)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "int8.json"))
    args = ap.parse_args()
    shape = parse_input_shape(args.input_shape)
    rows = []
    for label, arch in archs():
        print(f"== {label}", flush=True)
        t, b, weights = build_trunks(arch, None, 0)
        fp32 = {k: to_onnx(m, input_shape=shape, graph_name=f"{arch.backbone}-{k}").model
                for k, m in (("model", t), ("baseline", b))}
        _, section = int8_export(fp32, calibration=args.calibration, calibration_images=args.calibration_images,
                                 shape=shape, threads=args.threads, latency_pairs=args.pairs, warmup_s=args.warmup_s,
                                 activations=args.int8_activations)
        s = section.to_dict()
        row = {"arch": label, "weights": weights, "sqnr_db": {k: {o: v["sqnr_db"] for o, v in s["accuracy"][k].items()}
                                                              for k in ("model", "baseline")},
               "int8": s}
        rows.append(row)
        for rt in ("onnxruntime", "openvino"):
            e = s["latency"][rt]
            r = e["int8_model_over_int8_baseline"]["ratio"]
            print(f"  {rt:<12} int8 model/baseline {r['median']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}); "
                  f"fp32/int8 baseline {e['baseline_speedup']:.2f}x, model {e['model_speedup']:.2f}x", flush=True)
    record = {"command": " ".join(["python", "benchmarks/int8.py", *sys.argv[1:]]), "input_shape": list(shape),
              "pairs": args.pairs, "threads": args.threads, "calibration": args.calibration,
              "int8_activations": args.int8_activations,
              "calibration_images": args.calibration_images, "machine": machine_info(), "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=float) + "\n")
    lines = [f"`{record['command']}`", "", f"input {args.input_shape}, {args.threads} threads, {args.pairs} interleaved "
             f"pairs, {args.int8_activations} activations, calibrated on {args.calibration_images} images of {args.calibration}; ratios: median of per-pair "
             "ratios (95% interval); SQNR of int8 vs the fp32 graph, worst output", "",
             "| arch | SQNR dB model / baseline | ORT int8 model/baseline | ORT fp32/int8 (baseline, model) | "
             "OpenVINO int8 model/baseline | OpenVINO fp32/int8 (baseline, model) |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        s, sq = row["int8"], row["sqnr_db"]
        cells = [row["arch"], f"{min(sq['model'].values()):.1f} / {min(sq['baseline'].values()):.1f}"]
        for rt in ("onnxruntime", "openvino"):
            e = s["latency"][rt]
            r = e["int8_model_over_int8_baseline"]["ratio"]
            cells += [f"{r['median']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})",
                      f"{e['baseline_speedup']:.2f}x, {e['model_speedup']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    m = record["machine"]
    lines += ["", f"machine: {json.dumps(m, default=str)}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
