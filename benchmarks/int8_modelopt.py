"""INT8 three ways, built by TensorRT: natsdeploy vs NVIDIA ModelOpt vs ONNX Runtime's default placement.

The same fp32 graphs (as `natsdeploy export` emits them) are quantized on the same calibration images:
- **natsdeploy**: QDQ, per-channel symmetric int8 weights, s8 activations, one activation scale per
  transformed conv (every Concat input takes the Concat output's range);
- **modelopt**: NVIDIA ModelOpt's ONNX PTQ (`modelopt.onnx.quantization.quantize`: int8, max
  calibration, CPU, float tensors kept fp32, its default `concat_elimination` pass), run in its own venv
  (benchmarks/modelopt_quantize.py);
- **ort-default**: `quantize_static` with natsdeploy's settings minus the shared-scale override (one
  scale per branch: what a user gets without natsdeploy).

Each graph, model and baseline, is parsed and built by TensorRT-RTX ahead of time on the CPU
(strongly typed, ProfilingVerbosity.DETAILED). Recorded: the engine's layers by type, copy/reformat
layers, the requantize audit at transformed convs (model engine vs baseline engine, `tensorrt_int8`), Int8 convolutions, Q/DQ nodes in the graph and the
distinct scales at each Concat, and SQNR against fp32 per output on ONNX Runtime CPU (held-out images).

    .venv/bin/python benchmarks/int8_modelopt.py [--input-shape 1x3x128x192] [--calibration-images 8]
        [--eval-images 4] [--modelopt-python /work/venvs/modelopt/bin/python] [--out benchmarks/results/int8_modelopt.json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import onnx  # noqa: E402

from natsdeploy import align_arch, load_arch  # noqa: E402
from natsdeploy.cli_values import parse_input_shape  # noqa: E402
from natsdeploy.convert import load_ic_conv  # noqa: E402
from natsdeploy.export.fold import fold_trunk, iter_splits, rewrite  # noqa: E402
from natsdeploy.export.int8 import calibrate, calibration_inputs, open_calibration, quantize_model  # noqa: E402
from natsdeploy.export.int8 import int8_accuracy  # noqa: E402
from natsdeploy.export.onnx import trunk_to_onnx  # noqa: E402
from natsdeploy.export.tensorrt import build, parse_onnx, require_tensorrt  # noqa: E402
from natsdeploy.export.tensorrt import engine_layers, layer_counts  # noqa: E402
from natsdeploy.export.tensorrt_int8 import audit_requantize  # noqa: E402
from natsdeploy.models.build import build_trunks  # noqa: E402
from natsdeploy.timing.machine import machine_info  # noqa: E402

ICCONV = REPO.parent / "shared" / "reference" / "icconv" / "detection_ic_resnet50_k9.json"
QUANTIZERS = ("natsdeploy", "modelopt", "ort-default")


def archs(example: str):
    arch = load_arch(REPO / "examples" / example)
    yield f"nats-c ({example})", arch
    yield "nats-c aligned to 32", align_arch(arch, 32)
    if arch.backbone == "resnet50":
        if ICCONV.is_file():
            yield "ic-conv R50 (detection_ic_resnet50_k9.json)", load_ic_conv(ICCONV, "resnet50")
        else:
            print(f"skipping IC-Conv: {ICCONV} not found")


def concat_scales(q: onnx.ModelProto) -> dict[str, int]:
    """Per Concat of a QDQ graph: how many distinct scales its inputs' DequantizeLinear nodes carry."""
    init = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    producer = {o: n for n in q.graph.node for o in n.output}
    out = {}
    for node in q.graph.node:
        if node.op_type != "Concat":
            continue
        scales = set()
        for t in node.input:
            p = producer.get(t)
            if p is not None and p.op_type == "DequantizeLinear" and p.input[1] in init:
                scales.add(float(np.asarray(init[p.input[1]]).ravel()[0]))
            else:
                scales.add("float")  # an input that is not dequantized: the Concat runs in float
        out[node.name or node.output[0]] = len(scales)
    return out


def int8_convs(log) -> dict[str, int]:
    """Engine convolutions by the data type of their first input (as `int8_engine_check` reads them)."""
    types: Counter = Counter()
    for _, msg in log:
        for line in msg.splitlines():
            if "LayerType: correlation" in line or "LayerType: Convolution" in line:
                m = re.search(r"Inputs: \[ \{.*?Datatype: (\w+)", line)
                types[m.group(1) if m else "unknown"] += 1
    return dict(types)


def engine_record(api, path: Path) -> tuple[dict, list]:
    """The engine built from `path` (TensorRT-RTX, AOT): its record and its layers (empty when not built)."""
    parsed = parse_onnx(api, path)
    if not parsed.ok:
        return {"parse": "failed: " + "; ".join(parsed.errors[:2])}, []
    try:
        r = build(api, path, path.with_suffix(".engine"))
    except RuntimeError as e:
        return {"parse": "ok", "build": "failed: " + str(e).splitlines()[0][:300]}, []
    layers = engine_layers(r.log)
    return ({"parse": "ok", "build": "ok", "build_s": round(r.seconds, 2), "engine_bytes": r.nbytes,
             "layers": len(layers), "layer_counts": layer_counts(layers), "conv_inputs": int8_convs(r.log),
             "copy_layers": sorted(layer.name for layer in layers if layer.is_copy)}, layers)


def modelopt_quantize(python: str, fp32: Path, calib: Path, out: Path) -> dict:
    if not Path(python).exists():
        return {"ok": False, "error": f"no ModelOpt venv at {python} (python -m venv; pip install 'nvidia-modelopt[onnx]')"}
    p = subprocess.run([python, str(REPO / "benchmarks" / "modelopt_quantize.py"), str(fp32), str(calib), str(out)],
                       capture_output=True, text=True, timeout=1800)
    last = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not last:
        return {"ok": False, "error": f"exit {p.returncode}: " + (p.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(last[-1])


def run_case(label, arch, args, api, shape, tmp: Path) -> dict:
    t, b, weights = build_trunks(arch, None, 0)
    folded = {"model": rewrite(fold_trunk(t)), "baseline": rewrite(fold_trunk(b))}
    splits = [s.name for s in iter_splits(folded["model"]) if len(s.branches) > 1]
    fp32 = {k: trunk_to_onnx(f, input_shape=shape, graph_name=f"{arch.backbone}-{k}") for k, f in folded.items()}
    data = open_calibration(args.calibration, args.calibration_images + args.eval_images)
    calib = list(calibration_inputs(data, args.calibration_images, shape))
    evals = list(calibration_inputs(data, args.eval_images, shape, start=args.calibration_images))
    np.save(tmp / "calib.npy", np.concatenate(calib))
    row: dict = {"arch": label, "weights": weights, "transformed_convs": len(splits), "quantizers": {}}
    layers: dict[tuple[str, str], list] = {}
    for key, model in fp32.items():
        fp32_path = tmp / f"{key}.fp32.onnx"
        onnx.save_model(model, str(fp32_path))
        ranges = calibrate(model, calib)
        graphs: dict[str, onnx.ModelProto | dict] = {
            "natsdeploy": quantize_model(model, ranges, shared_scales=True),
            "ort-default": quantize_model(model, ranges, shared_scales=False),
        }
        mo_path = tmp / f"{key}.modelopt.onnx"
        mo = modelopt_quantize(args.modelopt_python, fp32_path, tmp / "calib.npy", mo_path)
        graphs["modelopt"] = onnx.load(str(mo_path)) if mo.get("ok") else mo
        for qname in QUANTIZERS:
            g = graphs[qname]
            entry = row["quantizers"].setdefault(qname, {})
            if isinstance(g, dict):
                entry[key] = {"quantized": False, "error": g.get("error")}
                print(f"  {qname:<12}{key:<9} ModelOpt failed: {g.get('error')}", flush=True)
                continue
            path = tmp / f"{key}.{qname}.onnx"
            onnx.save_model(g, str(path))
            ops = Counter(n.op_type for n in g.graph.node)
            cs = concat_scales(g)
            rec = {"quantized": True, "quantize_linear": ops["QuantizeLinear"], "dequantize_linear": ops["DequantizeLinear"],
                   "concats": len(cs), "concats_one_scale": sum(v == 1 for v in cs.values()),
                   "sqnr_db": {o: round(v["sqnr_db"], 2) for o, v in int8_accuracy(model, g, evals).items()},
                   "tensorrt": None}
            rec["tensorrt"], layers[qname, key] = engine_record(api, path)
            if qname == "modelopt":
                rec["modelopt"] = {k: v for k, v in mo.items() if k != "ok"}
            entry[key] = rec
            trt = rec["tensorrt"]
            print(f"  {qname:<12}{key:<9} SQNR min {min(rec['sqnr_db'].values()):6.2f} dB, Q/DQ {rec['quantize_linear']}/"
                  f"{rec['dequantize_linear']}, concats one-scale {rec['concats_one_scale']}/{rec['concats']}, TRT "
                  f"{trt.get('build', trt.get('parse'))} layers {trt.get('layers')} convs {trt.get('conv_inputs')} "
                  f"copies {len(trt.get('copy_layers', []))}", flush=True)
    for qname in QUANTIZERS:  # the requantize audit: each quantizer's model engine against its own baseline engine
        m, b = layers.get((qname, "model")), layers.get((qname, "baseline"))
        if m and b:
            a = audit_requantize(m, b, splits)
            row["quantizers"][qname]["requantize_audit"] = {
                "passed": a["passed"], "passed_convs": a["passed_convs"], "convs": a["convs"],
                "engine_kinds_equal": a["engine"]["equal"], "extra_in_model": a["engine"]["extra"],
                "failed_convs": sorted(k for k, v in a["per_conv"].items() if not v["passed"])}
            print(f"  {qname:<12}requantize audit: {a['passed_convs']}/{a['convs']} convs, engine kinds equal "
                  f"{a['engine']['equal']} ({'pass' if a['passed'] else 'FAIL'})", flush=True)
    return row


def markdown(record: dict) -> str:
    lines = [f"`{record['command']}`", "",
             f"TensorRT-RTX {record['tensorrt']} AOT on the CPU; input {record['input_shape']}; calibration "
             f"{record['calibration_images']} images of {record['calibration']}, SQNR on {record['eval_images']} other "
             "images (worst output, dB, ORT CPU vs the fp32 graph).", "",
             "| arch | quantizer | SQNR model / baseline | engine layers model / baseline | Int8 convs model / baseline "
             "| copy/reformat layers model / baseline | requantize audit (model vs baseline engine) | Concats with one scale (model) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in record["results"]:
        for q in QUANTIZERS:
            e = row["quantizers"].get(q, {})
            m, b = e.get("model", {}), e.get("baseline", {})
            if not m.get("quantized"):
                lines.append(f"| {row['arch']} | {q} | failed: {m.get('error', '')[:120]} | | | | | |")
                continue
            tm, tb = m["tensorrt"], b.get("tensorrt", {})
            a = e.get("requantize_audit", {})
            lines.append(
                f"| {row['arch']} | {q} | {min(m['sqnr_db'].values()):.2f} / {min(b['sqnr_db'].values()):.2f} | "
                f"{tm.get('layers')} / {tb.get('layers')} | {tm.get('conv_inputs', {}).get('Int8', 0)} / "
                f"{tb.get('conv_inputs', {}).get('Int8', 0)} | {len(tm.get('copy_layers', []))} / "
                f"{len(tb.get('copy_layers', []))} | {a.get('passed_convs')}/{a.get('convs')} convs, engine "
                f"{'equal' if a.get('engine_kinds_equal') else 'differs'} | "
                f"{m['concats_one_scale']}/{m['concats']} |")
    lines += ["", f"machine: {json.dumps(record['machine'], default=str)}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--example", default="resnet50_nats_c.json", help="arch in examples/ (default resnet50_nats_c.json)")
    ap.add_argument("--input-shape", default="1x3x128x192")
    ap.add_argument("--calibration", default="synthetic")
    ap.add_argument("--calibration-images", type=int, default=8)
    ap.add_argument("--eval-images", type=int, default=4)
    ap.add_argument("--modelopt-python", default="/work/venvs/modelopt/bin/python")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "int8_modelopt.json"))
    args = ap.parse_args()
    shape = parse_input_shape(args.input_shape)
    api = require_tensorrt("rtx")
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="natsdeploy-modelopt-") as tmp:
        for label, arch in archs(args.example):
            print(f"== {label}", flush=True)
            case = Path(tmp) / re.sub(r"\W+", "_", label)
            case.mkdir()
            rows.append(run_case(label, arch, args, api, shape, case))
    record = {"command": " ".join(["python", "benchmarks/int8_modelopt.py", *sys.argv[1:]]),
              "input_shape": list(shape), "calibration": args.calibration,
              "calibration_images": args.calibration_images, "eval_images": args.eval_images,
              "tensorrt": f"{api.trt.__name__} {api.version}", "wall_s": round(time.perf_counter() - t0, 1),
              "machine": machine_info(), "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(record))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
