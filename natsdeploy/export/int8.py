"""INT8: calibration images, static post-training QDQ quantization, and the QDQ audit.

`export --precision int8` and `parity --precision int8` quantize fp32 graphs with
`onnxruntime.quantization.quantize_static`: QDQ format (QuantizeLinear/DequantizeLinear pairs that
ONNX Runtime, OpenVINO and TensorRT's parser all read), per-channel symmetric int8 weights,
symmetric int8 activations (zero point 0, what TensorRT accepts) and float biases (`QuantizeBias`
off: TensorRT's parser rejects int32 `DequantizeLinear` inputs).

Activations (`activations`): `s8`, symmetric int8 with zero point 0, is the layout all three runtimes
read and the only one TensorRT accepts. `u8`, asymmetric uint8, is for ONNX Runtime's x86 CPU kernels:
with s8 activations ORT fuses a conv into `QLinearConv` only where the tensor it reads has no other
reader, so every conv that shares its input (each branch of a transformed conv, a bottleneck's conv1
beside its downsample or residual) stays an fp32 `Conv` between DequantizeLinear and QuantizeLinear;
with u8 every conv fuses (measured: ORT 1.32, README "INT8").

Calibration (MinMax) runs once per graph on the same images; then every transformed conv gets one
activation scale: each branch's output (its ReLU output, the `Concat` input, and the conv output
before that ReLU) takes the `Concat` output's range (`shared_scale_overrides`, passed as
`TensorQuantOverrides`). That is exactly the range the baseline's single conv gets, so the consumer
reads one quantized tensor, as in the baseline, and an arch of dilation-1 branches quantizes to the
baseline's function.

`export --precision int8` (`int8_export`) quantizes model and baseline on the same images and measures, for
each: per output, SQNR (dB) and max|err|/max|ref| of the int8 graph against the fp32 graph on ONNX Runtime
CPU; params and MACs of the QDQ graphs (weights counted once); the QDQ audit (`qdq_audit`); the precision
each conv runs at in OpenVINO's runtime model; and, unless `latency_pairs` is 0, int8 transformed / int8
baseline and int8 / fp32 on ONNX Runtime CPU and OpenVINO CPU by the interleaved method
(`natsdeploy.timing.latency`; OpenVINO only with `openvino`). Verdict: the transformed model's
quantization error compared with the baseline's (its SQNR, per output, at most `sqnr_margin_db` below the
baseline's), not with a fixed number. The result is the report's `int8` section (`export.report.Int8Section`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from natsdeploy.errors import UsageError
from natsdeploy.extras import available, require, skipped_line
from natsdeploy.targets import cpu_flags, int8_pairs_saturate

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "check_int8_request", "IMAGENET_MEAN", "IMAGENET_STD", "open_calibration",
           "calibration_count", "preprocess",
           "calibration_inputs", "calibrate", "shared_scale_overrides", "quantize_model", "quantize_pair",
           "qdq_audit", "ACTIVATIONS", "SQNR_MARGIN_DB", "int8_export", "int8_accuracy", "openvino_conv_precisions"]

DEFAULT_CALIBRATION_IMAGES = 64
ACTIVATIONS = ("s8", "u8")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's detectors (GeneralizedRCNNTransform)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_calibration(spec: str, n: int, *, field: str = "--calibration", seed: int = 0, log=None) -> Any:
    """The images calibration reads from `spec`, `ds[i] -> (image, target)`: `synthetic` or a folder with COCO
    annotations is a COCO-format set (its train split, else val); any other folder is a plain folder of
    images (`data/images.py`: recursive, sorted by path; the first `n` checked readable). Fewer than `n`
    images: calibration uses them all (`calibration_count`). `log` gets one line naming the source and,
    when there are fewer than `n`, one saying so. A one-line `InputError` otherwise."""
    from natsdeploy.data.coco import has_annotations, load_dataset
    from natsdeploy.errors import DatasetError

    if not isinstance(n, int) or n < 1:
        raise UsageError(f"--calibration-images: got {n!r}, expected a positive integer")
    if spec != "synthetic" and not Path(spec).expanduser().is_dir():
        raise UsageError(f"{field}: got {spec!r}, expected a folder of images, a COCO-format folder or 'synthetic'")
    if spec == "synthetic" or has_annotations(spec):
        require("pycocotools", "coco", f"{field} {spec} (a COCO-format set)")
        try:
            ds = load_dataset(spec, "train", seed=seed)
        except DatasetError as train_error:
            try:
                ds = load_dataset(spec, "val", seed=seed)
            except DatasetError:
                raise train_error from None
        kind = f"COCO-format, {ds.split} split"
    else:
        from natsdeploy.data.images import ImageFolder

        ds = ImageFolder(spec, field=field)
        ds.check(n)
        kind = "image folder, recursive" + (", sorted by path" if n < len(ds) else "")
    if log is not None:
        used = calibration_count(ds, n)
        first = f"the first {used} of {len(ds)}" if used < len(ds) else f"{used}"
        log(f"calibration: {first} images from {spec} ({kind})")
        if used < n:
            log(f"calibration: asked for {n} images (--calibration-images), found {len(ds)}: using all {used}")
    return ds


def calibration_count(dataset: Any, n: int) -> int:
    """How many images calibration uses when `n` are asked of `dataset`: `n`, or all it has if fewer."""
    return min(int(n), len(dataset))


def check_int8_request(precision: str, calibration: str | None, images: str | int | None, *, form: str = "branches",
                       dynamic: bool = False, engine: bool = False, activations: str | None = None,
                       reduce_range: bool = False) -> int:
    """Refuse, before any work, what `export --precision int8` cannot do; returns the number of calibration
    images asked (`open_calibration` checks the data; calibration uses fewer if it has fewer).

    `dynamic` is accepted: ONNX Runtime's calibrator and `quantize_static` run on a dynamic-shape graph
    (checked with onnxruntime 1.32: the QDQ graph keeps the dynamic batch/height/width and runs at other shapes);
    calibration images are prepared at the input shape. `engine` takes s8 activations only (TensorRT reads
    symmetric int8, zero point 0)."""
    from natsdeploy.cli_values import parse_int

    if activations is not None and activations not in ACTIVATIONS:
        raise UsageError(f"--int8-activations: got {activations!r}, expected one of {list(ACTIVATIONS)}")
    if precision != "int8":
        for flag, value in (("--calibration", calibration), ("--calibration-images", images),
                            ("--int8-activations", activations), ("--int8-reduce-range", reduce_range or None)):
            if value is not None:
                raise UsageError(f"{flag}: got {value!r} with --precision {precision}, expected it only with "
                                 "--precision int8")
        return DEFAULT_CALIBRATION_IMAGES
    if calibration is None:
        raise UsageError("--calibration: got nothing with --precision int8, expected a folder of images, a "
                         "COCO-format folder or 'synthetic'")
    for bad, why in ((form != "branches", f"--form: got {form!r} with --precision int8, expected 'branches'"),
                     (engine and activations == "u8", "--int8-activations: got 'u8' with --engine, expected 's8' "
                                                      "(TensorRT takes symmetric int8 only, zero point 0)")):
        if bad:
            raise UsageError(why)
    n = parse_int("--calibration-images", images, 1) if images is not None else DEFAULT_CALIBRATION_IMAGES
    open_calibration(calibration, n)
    return n


def preprocess(image: Any, hw: Sequence[int]) -> np.ndarray:
    """One image (float [3, h, w] in [0, 1]) as torchvision's `GeneralizedRCNNTransform` prepares it for an
    H x W input: ImageNet mean/std, bilinear resize keeping the aspect ratio to fit H x W, zero padding at
    the bottom and right. Returns float32 [3, H, W]."""
    import torch

    H, W = int(hw[0]), int(hw[1])
    x = torch.as_tensor(image, dtype=torch.float32)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = (x - mean) / std
    h, w = x.shape[-2:]
    scale = min(H / h, W / w)
    x = torch.nn.functional.interpolate(x[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                                        align_corners=False)[0]
    x = x[:, :H, :W]  # rounding never makes it larger, but stay inside the canvas regardless
    out = torch.zeros((3, H, W), dtype=torch.float32)
    out[:, :x.shape[1], :x.shape[2]] = x
    return out.numpy()


def calibration_inputs(dataset: Any, n: int, shape: Sequence[int], *, start: int = 0) -> Iterator[np.ndarray]:
    """Images `start .. start+n-1` of `dataset`, preprocessed for `shape` (N x 3 x H x W), `shape[0]` per batch."""
    batch = int(shape[0])
    if n % batch:
        raise UsageError(f"--calibration-images: got {n}, expected a multiple of the batch size {batch}")
    for i in range(start, start + n, batch):
        yield np.stack([preprocess(dataset[j][0], shape[2:]) for j in range(i, i + batch)])


class _Reader:
    """An onnxruntime `CalibrationDataReader` over arrays fed to input `name`."""

    def __init__(self, name: str, arrays: Any) -> None:
        self.name, self.it = name, iter(arrays)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.it, None)
        return None if x is None else {self.name: x}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs a pre-processing suggestion on the root logger at WARNING."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def calibrate(model: Any, arrays: Any, *, input_name: str = "images") -> Any:
    """MinMax ranges (`onnxruntime.quantization.TensorsData`) of every float tensor of `model` over `arrays`."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory(prefix="natsdeploy-calib-") as tmp, _quiet():
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path))
        cal = create_calibrator(path, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=CalibrationMethod.MinMax)
        cal.collect_data(_Reader(input_name, arrays))
        data = cal.compute_data()
        del cal
    return data


def _range(ranges: Any, name: str) -> tuple[np.float32, np.float32]:
    lo, hi = ranges[name].range_value
    return np.float32(np.min(lo)), np.float32(np.max(hi))


def shared_scale_overrides(model: Any, ranges: Any) -> dict[str, list[dict[str, Any]]]:
    """`TensorQuantOverrides` giving all branches of each transformed conv (each channel `Concat`) one scale.

    Every Concat input (a branch output after its ReLU) and, where a ReLU is there, that ReLU's input
    (the branch's conv output) take the Concat output's calibrated range. The baseline's conv gets the
    same: its output's range (the union of the branches') and, as onnxruntime's quantizer sets the input
    of a ReLU to the ReLU output's range, the same range before its ReLU.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    out: dict[str, list[dict[str, Any]]] = {}
    for node in model.graph.node:
        if node.op_type != "Concat":
            continue
        lo, hi = _range(ranges, node.output[0])
        for t in node.input:
            out[t] = [{"rmin": lo, "rmax": hi}]
            if t in producer and producer[t].op_type == "Relu":
                out[producer[t].input[0]] = [{"rmin": lo, "rmax": hi}]
    return out


def quantize_model(model: Any, ranges: Any, *, shared_scales: bool = True, int32_bias: bool = False,
                   activations: str = "s8", reduce_range: bool = False) -> Any:
    """`model` as a static QDQ int8 graph from calibrated `ranges` (a `ModelProto`). `int32_bias` quantizes
    biases too (TensorRT's parser rejects it); `activations` s8 (symmetric int8) or u8 (asymmetric uint8,
    ONNX Runtime CPU's fast path; module docstring); `reduce_range` 7-bit weights, for CPUs whose int8
    kernels saturate pair sums (`targets.int8_pairs_saturate`)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static, save_tensors_data

    if activations not in ACTIVATIONS:
        raise UsageError(f"activations: got {activations!r}, expected one of {list(ACTIVATIONS)}")
    extra: dict[str, Any] = {"ActivationSymmetric": activations == "s8", "WeightSymmetric": True,
                             "QuantizeBias": int32_bias}
    if shared_scales:
        extra["TensorQuantOverrides"] = shared_scale_overrides(model, ranges)
    with tempfile.TemporaryDirectory(prefix="natsdeploy-int8-") as tmp, _quiet():
        cache, out = Path(tmp) / "ranges.json", Path(tmp) / "int8.onnx"
        save_tensors_data(ranges, cache)
        quantize_static(model, str(out), None, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8 if activations == "s8" else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, extra_options=extra, reduce_range=reduce_range,
                        calibration_cache_path=str(cache))
        q = onnx.load(str(out))
    del q.graph.value_info[:]  # keep the file lean; shape inference recomputes them
    return q


def quantize_pair(models: dict[str, Any], arrays_for: Any, *, shared_scales: bool = True, int32_bias: bool = False,
                  activations: str = "s8", reduce_range: bool = False, log=lambda s: None) -> dict[str, Any]:
    """Each of `models` (key -> fp32 ModelProto) calibrated on `arrays_for()` (the same images for each:
    a fresh iterable per call) and quantized."""
    out = {}
    for key, model in models.items():
        log(f"int8: calibrating {key} (MinMax) and quantizing (QDQ, per-channel symmetric int8 weights"
            f"{', 7-bit' if reduce_range else ''}, {activations} activations)")
        out[key] = quantize_model(model, calibrate(model, arrays_for()), shared_scales=shared_scales,
                                  int32_bias=int32_bias, activations=activations, reduce_range=reduce_range)
    return out


def _init_arrays(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def qdq_audit(qmodel: Any) -> dict[str, Any]:
    """The QDQ structure: per transformed conv (channel `Concat`), the distinct activation scales on its
    inputs and output; per Conv, whether its weight is dequantized with one scale per output channel."""
    inits = _init_arrays(qmodel)
    producer = {o: n for n in qmodel.graph.node for o in n.output}

    def scale_of(tensor: str) -> float | None:
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        return float(inits[dq.input[1]]) if dq.input[1] in inits else None

    concats = {}
    for node in qmodel.graph.node:
        if node.op_type != "Concat":
            continue
        consumers = [n for n in qmodel.graph.node if node.output[0] in n.input and n.op_type == "QuantizeLinear"]
        scales = {scale_of(t) for t in node.input}
        scales |= {float(inits[q.input[1]]) for q in consumers if q.input[1] in inits}
        concats[node.name] = {"branches": len(node.input), "scales": sorted(s for s in scales if s is not None),
                              "one_scale": len(scales) == 1 and None not in scales}
    convs = {}
    for node in qmodel.graph.node:
        if node.op_type != "Conv":
            continue
        dq = producer.get(node.input[1])
        ok = False
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            w, s = inits[dq.input[0]], inits.get(dq.input[1])
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            ok = (w.dtype == np.int8 and s is not None and s.ndim == 1 and s.shape[0] == w.shape[0] and axis == 0)
        convs[node.name] = ok
    return {"transformed_convs": len(concats), "one_scale": sum(c["one_scale"] for c in concats.values()),
            "convs": len(convs), "per_channel_int8_weights": sum(convs.values()), "per_conv": concats,
            "passed": all(c["one_scale"] for c in concats.values()) and all(convs.values())}


# -- export --precision int8: model and baseline quantized, measured, the report's int8 section -------------
SQNR_MARGIN_DB = 1.0
"""The verdict's bound: the transformed model's SQNR may be at most this far below the baseline's."""
_EVAL_IMAGES = 4


def int8_accuracy(fp32: Any, int8: Any, inputs: Sequence[np.ndarray], *, threads: int | None = None) -> dict:
    """Per output of `int8` against `fp32` (ModelProtos) on ONNX Runtime CPU over `inputs`: SQNR (dB,
    10 log10 of signal power over error power, summed over every input) and max|err| / max|ref|."""
    from natsdeploy.runners import OrtRunner

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


def _timings(fp32: dict, int8: dict, *, shape: Sequence[int], threads: int, pairs: int, warmup_s: float, log,
             runtimes: Sequence[str] = ("onnxruntime", "openvino")) -> dict[str, Any]:
    """int8 model / int8 baseline and int8 / fp32 per graph at `shape`, interleaved, on ORT CPU and OpenVINO CPU."""
    import onnxruntime as ort

    from natsdeploy.runners import OpenVinoRunner, OrtRunner
    from natsdeploy.timing.latency import time_interleaved

    shape = [int(d) for d in shape]
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    out: dict[str, Any] = {"input_shape": shape, "threads": threads, "pairs": pairs}
    for runtime in runtimes:
        runs = {}
        for prec, protos in (("fp32", fp32), ("int8", int8)):
            for key, proto in protos.items():
                if runtime == "onnxruntime":
                    s = OrtRunner(proto, threads=threads).session  # timed through the raw session, as export does
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
                sqnr_margin_db: float = SQNR_MARGIN_DB, activations: str = "s8", reduce_range: bool = False,
                openvino: bool = True, log=print) -> tuple[dict[str, Any], "Int8Section"]:  # noqa: F821
    """The int8 QDQ graphs of `fp32` (key -> ModelProto: model, baseline), calibrated on the same
    `calibration_images` images of `calibration` at `shape` (a dynamic graph too: it stays dynamic), and the
    report's `int8` section. `reduce_range`: 7-bit weights. `openvino` False leaves OpenVINO out (its conv
    precisions and its timings)."""
    import os

    import onnxruntime as ort

    from natsdeploy.export.report import Int8Section
    from natsdeploy.verify.count import count_onnx

    threads = int(threads or os.cpu_count() or 1)
    ds = open_calibration(calibration, calibration_images, log=log)
    calibration_images = calibration_count(ds, calibration_images)
    int8 = quantize_pair(fp32, lambda: calibration_inputs(ds, calibration_images, shape), activations=activations,
                         reduce_range=reduce_range, log=log)
    evaluated_on, eval_inputs = _eval_inputs(calibration, ds, calibration_images, shape)
    accuracy = {k: int8_accuracy(fp32[k], int8[k], eval_inputs, threads=threads) for k in ("model", "baseline")}
    counts = {k: {p: count_onnx(m[k], shape).to_dict() for p, m in (("fp32", fp32), ("int8", int8))} for k in fp32}
    cost = {k: c["int8"] for k, c in counts.items()}
    cost["unchanged"] = all(c["int8"] == c["fp32"] for c in counts.values())
    cost["equal"] = cost["model"] == cost["baseline"]
    ov = None
    if openvino and not available("openvino"):  # on by default: without the extra, one line instead
        ov, openvino = {"skipped": skipped_line("OpenVINO", "openvino")}, False
    elif openvino:
        ov = _openvino_precisions(int8, threads=threads)
    runtimes = ("onnxruntime", "openvino") if openvino else ("onnxruntime",)
    latency = (_timings(fp32, int8, shape=shape, threads=threads, pairs=latency_pairs, warmup_s=warmup_s, log=log,
                        runtimes=runtimes) if latency_pairs > 0 else None)
    gaps = {o: accuracy["baseline"][o]["sqnr_db"] - accuracy["model"][o]["sqnr_db"] for o in accuracy["model"]}
    worst = max(gaps.values()) if gaps else 0.0
    finite = all(not a[o]["nan"] for a in accuracy.values() for o in a)
    audit = {k: qdq_audit(int8[k]) for k in ("model", "baseline")}
    section = Int8Section(
        calibration={"data": str(calibration), "split": ds.split, "images": calibration_images,
                     "preprocess": f"ImageNet mean/std, resize keeping aspect to fit {shape[2]}x{shape[3]}, "
                                   "zero pad bottom/right (torchvision GeneralizedRCNNTransform)",
                     "method": "MinMax, the same images for model and baseline"},
        quantizer={"tool": f"onnxruntime {ort.__version__} quantize_static", "format": "QDQ",
                   "weights": "int8, symmetric, per output channel" + (", 7-bit (reduce_range)" if reduce_range
                                                                         else ""),
                   "reduce_range": reduce_range, "activation_type": activations,
                   "activations": ("int8, symmetric (zero point 0)" if activations == "s8" else
                                   "uint8, asymmetric (ONNX Runtime CPU; TensorRT's parser rejects it)"),
                   "bias": "float (QuantizeBias off: TensorRT's parser rejects int32 DequantizeLinear)",
                   "transformed_convs": "one activation scale per transformed conv (all branches take the "
                                        "Concat output's range)"},
        qdq={k: {n: v for n, v in a.items() if n != "per_conv"} for k, a in audit.items()},
        accuracy={"against": "the fp32 graph on ONNX Runtime CPU", "evaluated_on": evaluated_on,
                  "int8_pairs_saturate": int8_pairs_saturate(cpu_flags()), **accuracy},
        cost=cost, openvino=ov, latency=latency,
        verdict={"passed": bool(finite and worst <= sqnr_margin_db and audit["model"]["passed"] and cost["unchanged"]),
                 "sqnr_margin_db": sqnr_margin_db, "worst_sqnr_gap_db": worst,
                 "rule": f"per output, transformed SQNR >= baseline SQNR - {sqnr_margin_db:g} dB; QDQ audit passes; "
                         "params/MACs unchanged by quantization"})
    return int8, section


def _openvino_precisions(int8: dict[str, Any], *, threads: int) -> dict[str, Any]:
    """`openvino_conv_precisions` of model and baseline, or one `error` line where OpenVINO refuses a graph."""
    try:
        return {k: openvino_conv_precisions(int8[k], threads=threads) for k in ("model", "baseline")}
    except Exception as e:  # noqa: BLE001 - a runtime refusing the graph is a finding, one line
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def _eval_inputs(spec: str, calib: Any, n: int, shape: Sequence[int]) -> tuple[str, list[np.ndarray]]:
    """Up to 4 images of the val split (other images than calibration's), else the last calibration images."""
    from natsdeploy.data.coco import load_dataset
    from natsdeploy.errors import DatasetError

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
