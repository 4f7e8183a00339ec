"""`export --precision int8`: quantize model and baseline on the same images, and the report's `int8` section.

For model and baseline alike: per output, SQNR (dB) and max|err|/max|ref| of the int8 graph against
the fp32 graph on ONNX Runtime CPU; params and MACs of the QDQ graphs (weights counted once); the
QDQ audit (`natsdeploy.export.int8.qdq_audit`); the precision each conv runs at in OpenVINO's
runtime model; and, unless `latency_pairs` is 0, int8 transformed / int8 baseline and int8 / fp32
on ONNX Runtime CPU and OpenVINO CPU by the interleaved method (`natsdeploy.timing.latency`).
Verdict: the transformed model's quantization error compared with the baseline's (its SQNR, per
output, at most `sqnr_margin_db` below the baseline's), not with a fixed number.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from natsdeploy.extras import available, skipped_line
from natsdeploy.targets import cpu_flags, int8_pairs_saturate

__all__ = ["SQNR_MARGIN_DB", "int8_export", "add_int8_section", "int8_accuracy", "openvino_conv_precisions", "format_int8"]

SQNR_MARGIN_DB = 1.0
"""The verdict's bound: the transformed model's SQNR may be at most this far below the baseline's."""
_EVAL_IMAGES = 4


def int8_accuracy(fp32: Any, int8: Any, inputs: Sequence[np.ndarray], *, threads: int | None = None) -> dict:
    """Per output of `int8` against `fp32` (ModelProtos) on ONNX Runtime CPU over `inputs`: SQNR (dB,
    10 log10 of signal power over error power, summed over every input) and max|err| / max|ref|."""
    from natsdeploy.runners import OrtRunner

    import tempfile
    from pathlib import Path

    runners = {}
    with tempfile.TemporaryDirectory(prefix="natsdeploy-int8-eval-") as tmp:
        for key, proto in (("fp32", fp32), ("int8", int8)):
            path = Path(tmp) / f"{key}.onnx"
            path.write_bytes(proto.SerializeToString())
            runners[key] = OrtRunner(path, threads=threads)
        sig: dict[str, float] = {}
        err: dict[str, float] = {}
        max_err: dict[str, float] = {}
        max_ref: dict[str, float] = {}
        for x in inputs:
            ref, got = runners["fp32"].run({"images": x}), runners["int8"].run({"images": x})
            for k, r in ref.items():
                r64, d = r.astype(np.float64), got[k].astype(np.float64) - r.astype(np.float64)
                sig[k] = sig.get(k, 0.0) + float(np.sum(r64 * r64))
                err[k] = err.get(k, 0.0) + float(np.sum(d * d))
                max_err[k] = max(max_err.get(k, 0.0), float(np.max(np.abs(d))) if d.size else 0.0)
                max_ref[k] = max(max_ref.get(k, 0.0), float(np.max(np.abs(r64))) if r64.size else 0.0)
    out = {}
    for k in sig:
        sqnr = math.inf if err[k] == 0 else (10 * math.log10(sig[k] / err[k]) if sig[k] > 0 else -math.inf)
        out[k] = {"sqnr_db": sqnr, "rel_err": max_err[k] / max_ref[k] if max_ref[k] > 0 else math.inf,
                  "max_abs_err": max_err[k], "nan": bool(math.isnan(max_err[k]))}
    return out


def openvino_conv_precisions(proto: Any, *, threads: int | None = None) -> dict[str, Any]:
    """How OpenVINO CPU runs `proto`'s convs: {runtimePrecision: count} and {primitiveType: count} of the
    runtime model's Convolution layers, and whether every one runs in i8/u8."""
    from natsdeploy.runners import OpenVinoRunner

    runner = OpenVinoRunner(proto, threads=threads, precision="f32")
    precisions, primitives = Counter(), Counter()
    for op in runner.compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) != "Convolution":
            continue
        precisions[rt["runtimePrecision"].astype(str)] += 1
        primitives[rt["primitiveType"].astype(str)] += 1
    n = sum(precisions.values())
    low = sum(v for k, v in precisions.items() if k.lower() in ("i8", "u8"))
    return {"runtime": f"OpenVINO {runner.version} CPU", "convs": n, "int8_convs": low,
            "precisions": dict(precisions), "primitives": dict(primitives), "all_int8": n > 0 and low == n}


def _timings(fp32: dict, int8: dict, *, threads: int, pairs: int, warmup_s: float, log) -> dict[str, Any]:
    """int8 model / int8 baseline and int8 / fp32 per graph, interleaved, on ORT CPU and OpenVINO CPU."""
    import onnxruntime as ort

    from natsdeploy.runners import OpenVinoRunner, ort_session_options
    from natsdeploy.timing.latency import time_interleaved

    shape = [d.dim_value for d in fp32["model"].graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    out: dict[str, Any] = {"input_shape": shape, "threads": threads, "pairs": pairs}
    for runtime in ("onnxruntime", "openvino") if available("openvino") else ("onnxruntime",):
        runs = {}
        for prec, protos in (("fp32", fp32), ("int8", int8)):
            for key, proto in protos.items():
                if runtime == "onnxruntime":
                    s = ort.InferenceSession(proto.SerializeToString(), sess_options=ort_session_options(threads=threads),
                                             providers=["CPUExecutionProvider"])
                    runs[prec, key] = (lambda s=s: s.run(None, {"images": x}))
                else:
                    r = OpenVinoRunner(proto, threads=threads, precision="f32")
                    runs[prec, key] = (lambda r=r: r.run({"images": x}))
        log(f"int8: timing {runtime} CPU, {threads} threads, {pairs} interleaved pairs per comparison")
        entry = {}
        for name, a, b in (("int8_model_over_int8_baseline", ("int8", "baseline"), ("int8", "model")),
                           ("baseline_int8_over_fp32", ("fp32", "baseline"), ("int8", "baseline")),
                           ("model_int8_over_fp32", ("fp32", "model"), ("int8", "model"))):
            t = time_interleaved(runs[a], runs[b], pairs=pairs, warmup_s=warmup_s)
            entry[name] = {"ratio": t.ratio.to_dict(), "first_p50_ms": t.baseline.p50, "second_p50_ms": t.transformed.p50,
                           "first": "/".join(a), "second": "/".join(b)}
        for key in ("baseline", "model"):
            entry[f"{key}_speedup"] = 1.0 / entry[f"{key}_int8_over_fp32"]["ratio"]["median"]
        out[runtime] = entry
    return out


def int8_export(fp32: dict[str, Any], *, calibration: str, calibration_images: int, shape: Sequence[int],
                threads: int | None = None, latency_pairs: int = 20, warmup_s: float = 2.0,
                sqnr_margin_db: float = SQNR_MARGIN_DB, activations: str = "s8", log=print) -> tuple[dict[str, Any], dict[str, Any]]:
    """The int8 QDQ graphs of `fp32` (key -> ModelProto: model, baseline), calibrated on the same
    `calibration_images` images of `calibration`, and the report's `int8` section."""
    import os

    import onnxruntime as ort

    from natsdeploy.export.int8 import calibration_count, calibration_inputs, open_calibration, qdq_audit, quantize_pair
    from natsdeploy.verify.count import count_onnx

    threads = int(threads or os.cpu_count() or 1)
    ds = open_calibration(calibration, calibration_images, log=log)
    calibration_images = calibration_count(ds, calibration_images)
    int8 = quantize_pair(fp32, lambda: calibration_inputs(ds, calibration_images, shape), activations=activations,
                         log=log)
    evaluated_on, eval_inputs = _eval_inputs(calibration, ds, calibration_images, shape)
    accuracy = {k: int8_accuracy(fp32[k], int8[k], eval_inputs, threads=threads) for k in ("model", "baseline")}
    counts = {k: {p: count_onnx(m[k]).to_dict() for p, m in (("fp32", fp32), ("int8", int8))} for k in fp32}
    cost = {k: c["int8"] for k, c in counts.items()}
    cost["unchanged"] = all(c["int8"] == c["fp32"] for c in counts.values())
    cost["equal"] = cost["model"] == cost["baseline"]
    try:  # on by default in the int8 section; without the openvino extra, one line
        ov = ({k: openvino_conv_precisions(int8[k], threads=threads) for k in ("model", "baseline")}
              if available("openvino") else {"skipped": skipped_line("OpenVINO", "openvino")})
    except Exception as e:  # noqa: BLE001 - a runtime refusing the graph is a finding, one line
        ov = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    latency = (_timings(fp32, int8, threads=threads, pairs=latency_pairs, warmup_s=warmup_s, log=log)
               if latency_pairs > 0 else None)
    gaps = {o: accuracy["baseline"][o]["sqnr_db"] - accuracy["model"][o]["sqnr_db"] for o in accuracy["model"]}
    worst = max(gaps.values()) if gaps else 0.0
    finite = all(not a[o]["nan"] for a in accuracy.values() for o in a)
    audit = {k: qdq_audit(int8[k]) for k in ("model", "baseline")}
    section = {
        "calibration": {"data": str(calibration), "split": ds.split, "images": calibration_images,
                        "preprocess": f"ImageNet mean/std, resize keeping aspect to fit {shape[2]}x{shape[3]}, "
                                      "zero pad bottom/right (torchvision GeneralizedRCNNTransform)",
                        "method": "MinMax, the same images for model and baseline"},
        "quantizer": {"tool": f"onnxruntime {ort.__version__} quantize_static", "format": "QDQ",
                      "weights": "int8, symmetric, per output channel", "activation_type": activations,
                      "activations": ("int8, symmetric (zero point 0)" if activations == "s8" else
                                      "uint8, asymmetric (ONNX Runtime CPU; TensorRT's parser rejects it)"),
                      "bias": "float (QuantizeBias off: TensorRT's parser rejects int32 DequantizeLinear)",
                      "transformed_convs": "one activation scale per transformed conv (all branches take the "
                                           "Concat output's range)"},
        "qdq": {k: {n: v for n, v in a.items() if n != "per_conv"} for k, a in audit.items()},
        "accuracy": {"against": "the fp32 graph on ONNX Runtime CPU", "evaluated_on": evaluated_on,
                     "int8_pairs_saturate": int8_pairs_saturate(cpu_flags()), **accuracy},
        "cost": cost, "openvino": ov, "latency": latency,
        "verdict": {"passed": bool(finite and worst <= sqnr_margin_db and audit["model"]["passed"] and cost["unchanged"]),
                    "sqnr_margin_db": sqnr_margin_db, "worst_sqnr_gap_db": worst,
                    "rule": f"per output, transformed SQNR >= baseline SQNR - {sqnr_margin_db:g} dB; QDQ audit passes; "
                            "params/MACs unchanged by quantization"},
    }
    return int8, section


def add_int8_section(report: dict[str, Any], fp32: dict[str, Any], **kwargs: Any) -> dict[str, bytes]:
    """`int8_export` into `report` (its `int8` section and verdict); returns the int8 graphs' bytes to write."""
    int8, report["int8"] = int8_export(fp32, **kwargs)
    ok = report["int8"]["verdict"]["passed"]
    report["verdict"].update(passed=bool(report["verdict"]["passed"] and ok), int8_passed=ok)
    report["export"]["io_dtype"] = "float32 (int8 QuantizeLinear/DequantizeLinear inside)"
    return {k: p.SerializeToString(deterministic=True) for k, p in int8.items()}


def _eval_inputs(spec: str, calib: Any, n: int, shape: Sequence[int]) -> tuple[str, list[np.ndarray]]:
    """Up to 4 images of the val split (other images than calibration's), else the last calibration images."""
    from natsdeploy.data.coco import load_dataset
    from natsdeploy.errors import DatasetError
    from natsdeploy.export.int8 import calibration_inputs

    b = int(shape[0])
    try:
        val = load_dataset(spec, "val") if calib.split != "val" else None
    except DatasetError:
        val = None
    if val is not None and len(val) >= b:
        k = min(_EVAL_IMAGES, len(val)) // b * b
        return f"{k} images of the val split", list(calibration_inputs(val, k, shape))
    k = max(b, min(_EVAL_IMAGES, n) // b * b)
    return f"the last {k} calibration images (no val split)", list(calibration_inputs(calib, k, shape, start=n - k))


def format_int8(s: dict[str, Any]) -> list[str]:
    """The printed table's int8 rows."""
    c, a = s["calibration"], s["accuracy"]
    act = s.get("quantizer", {}).get("activation_type", "s8")
    lines = ["", f"  int8 (QDQ, per-channel symmetric int8 weights, {act} activations; calibrated on {c['images']} images of {c['data']} "
                 f"{c['split']}; error vs the fp32 graph on ORT CPU, {a['evaluated_on']}):",
             f"  {'':<10}" + "".join(f"{o + ' SQNR dB':>14}{'rel err':>9}" for o in a["model"])]
    for key in ("model", "baseline"):
        lines.append(f"  {key:<10}" + "".join(f"{v['sqnr_db']:>14.2f}{v['rel_err']:>9.1e}" for v in a[key].values()))
    if a.get("int8_pairs_saturate"):
        lines.append("  this CPU has no VNNI/AMX: ORT's int8 convs add u8 x s8 product pairs in saturating int16 "
                     "(vpmaddubsw), so these errors include that clipping (7-bit weights avoid it: reduce_range)")
    q, cost = s["qdq"]["model"], s["cost"]
    lines.append(f"  QDQ: {q['one_scale']}/{q['transformed_convs']} transformed convs read one activation scale; "
                 f"{q['per_channel_int8_weights']}/{q['convs']} convs have per-channel int8 weights")
    lines.append(f"  params {cost['model']['params']:,} / {cost['baseline']['params']:,}, MACs "
                 f"{cost['model']['macs']:,} / {cost['baseline']['macs']:,} (model / baseline): "
                 f"{'unchanged by quantization' if cost['unchanged'] else 'CHANGED by quantization'}")
    ov = s["openvino"]
    if "skipped" in ov:
        lines.append(f"  {ov['skipped']}")
    elif "error" in ov:
        lines.append(f"  OpenVINO: could not compile the int8 graphs ({ov['error']})")
    else:
        for key in ("model", "baseline"):
            o = ov[key]
            lines.append(f"  OpenVINO runtime model, {key}: {o['int8_convs']}/{o['convs']} convs in i8/u8 "
                         f"({', '.join(f'{k} {v}' for k, v in o['precisions'].items())})")
    lat = s.get("latency")
    if lat:
        lines.append(f"  latency at {'x'.join(map(str, lat['input_shape']))}, {lat['threads']} threads, "
                     f"{lat['pairs']} interleaved pairs (median of per-pair ratios, 95% interval):")
        lines.append(f"  {'':<13}{'int8 model/baseline':>26}{'baseline fp32/int8':>22}{'model fp32/int8':>20}")
        for rt in ("onnxruntime", "openvino"):
            if rt not in lat:  # openvino: its extra is missing (the line above says so)
                continue
            e = lat[rt]
            r = e["int8_model_over_int8_baseline"]["ratio"]
            lines.append(f"  {rt:<13}{r['median']:>12.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})"
                         f"{e['baseline_speedup']:>21.2f}x{e['model_speedup']:>19.2f}x")
    v = s["verdict"]
    lines.append(f"  int8 verdict: {'PASS' if v['passed'] else 'FAIL'} (worst SQNR gap to the baseline "
                 f"{v['worst_sqnr_gap_db']:+.2f} dB; bound {v['sqnr_margin_db']:g} dB)")
    return lines
