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
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from natsdeploy.errors import UsageError
from natsdeploy.extras import require

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "check_int8_request", "IMAGENET_MEAN", "IMAGENET_STD", "open_calibration",
           "calibration_count", "preprocess",
           "calibration_inputs", "calibrate", "shared_scale_overrides", "quantize_model", "quantize_pair",
           "qdq_audit", "ACTIVATIONS"]

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
                       dynamic: bool = False, engine: bool = False, activations: str | None = None) -> int:
    """Refuse, before any work, what `export --precision int8` cannot do; returns the number of calibration
    images asked (`open_calibration` checks the data; calibration uses fewer if it has fewer)."""
    from natsdeploy.cli_values import parse_int

    if activations is not None and activations not in ACTIVATIONS:
        raise UsageError(f"--int8-activations: got {activations!r}, expected one of {list(ACTIVATIONS)}")
    if precision != "int8":
        for flag, value in (("--calibration", calibration), ("--calibration-images", images),
                            ("--int8-activations", activations)):
            if value is not None:
                raise UsageError(f"{flag}: got {value!r} with --precision {precision}, expected it only with "
                                 "--precision int8")
        return DEFAULT_CALIBRATION_IMAGES
    if calibration is None:
        raise UsageError("--calibration: got nothing with --precision int8, expected a folder of images, a "
                         "COCO-format folder or 'synthetic'")
    for bad, why in ((form != "branches", f"--form: got {form!r} with --precision int8, expected 'branches'"),
                     (dynamic, "--dynamic: got it with --precision int8, expected a static --input-shape "
                               "(calibration runs at it)"),
                     (engine, "--engine: got it with --precision int8, expected --precision fp32 or fp16 (int8 engines "
                              "are not built by export; README, INT8: what TensorRT does with the int8 graphs)")):
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
        log(f"int8: calibrating {key} (MinMax) and quantizing (QDQ, per-channel symmetric int8 weights, "
            f"{activations} activations)")
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
