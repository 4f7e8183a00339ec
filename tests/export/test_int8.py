"""INT8 quantization (`natsdeploy.export.int8`): shared branch scales, the dilation-1 invariant, QDQ structure,
preprocessing, and what OpenVINO and TensorRT make of the QDQ graphs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import numpy_helper

from natsdeploy.arch import Arch, Branch, ConvTransform
from natsdeploy.export.fold import fold_trunk, rewrite
from natsdeploy.export.int8 import preprocess, qdq_audit, quantize_pair
from natsdeploy.export.onnx import trunk_to_onnx
from natsdeploy.models.build import build_backbone, build_baseline
from natsdeploy.specs import BACKBONES
from natsdeploy.targets import cpu_flags, int8_pairs_saturate
from tests.conftest import EXAMPLES
from tests.helpers import ort_outputs, seeded_state_dict, trt_importable

SHAPE = (1, 3, 64, 96)


def _inputs(n: int = 4) -> list[np.ndarray]:
    return [np.random.default_rng(i).standard_normal(SHAPE, dtype=np.float32) for i in range(n)]


def _dilation_one_arch(*, permute: bool, seed: int = 0) -> Arch:
    """Every conv of ResNet-18 transformed into 3 dilation-1 branches (1/4, 1/4, 1/2), permuted where allowed."""
    rng = random.Random(seed)
    convs = {}
    for name, info in BACKBONES["resnet18"].convs.items():
        c = info.out_channels
        perm = list(range(c))
        rng.shuffle(perm)
        convs[name] = ConvTransform(tuple(Branch((1, 1), w) for w in (c // 4, c // 4, c // 2)),
                                    tuple(perm) if info.permutable and permute else None)
    return Arch(backbone="resnet18", convs=convs)


@pytest.fixture(scope="module")
def d1():
    """int8 graphs (calibrated on the same 4 inputs) of the all-dilation-1 arch, without and with permutations,
    branches kept apart (one Concat per conv: `split`; with permutations also merged, as export emits it),
    and of the baseline."""
    sd = seeded_state_dict("resnet18")
    fp32 = {"baseline": trunk_to_onnx(fold_trunk(build_baseline("resnet18", sd)), input_shape=SHAPE)}
    for tag, permute in (("", False), ("perm_", True)):
        model = build_backbone(_dilation_one_arch(permute=permute), sd)
        fp32[f"{tag}split"] = trunk_to_onnx(rewrite(fold_trunk(model), merge=False), input_shape=SHAPE)
    fp32["perm_merged"] = trunk_to_onnx(rewrite(fold_trunk(model)), input_shape=SHAPE)  # as export emits it
    q = quantize_pair(fp32, lambda: iter(_inputs()))
    q["split_unshared"] = quantize_pair({"s": fp32["split"]}, lambda: iter(_inputs()), shared_scales=False)["s"]
    if int8_pairs_saturate(cpu_flags()):  # 7-bit weights: ORT's vpmaddubsw kernels cannot clip
        q7 = quantize_pair({k: fp32[k] for k in ("baseline", "split")}, lambda: iter(_inputs()), reduce_range=True)
        q.update({f"{k}_7bit": v for k, v in q7.items()})
    return {"fp32": fp32, "int8": q}


def _rel(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))) for k in b)


def test_dilation_one_arch_quantizes_to_the_baseline_function(d1):
    """The invariant: branches of dilation 1 are the baseline conv cut into pieces, so with one scale per
    transformed conv the int8 graph computes the baseline's int8 function.

    Bound 1e-5 of max|ref| per output, not bitwise: the int8 codes are equal, but the outputs are float
    (DequantizeLinear, then Add/Relu that ORT fuses differently around a Concat), which leaves a few
    fp32 ulps (measured <= 2e-7). One differing int8 code at an output is a step of max|ref|/127 =
    7.9e-3 of max|ref| or more, so 1e-5 admits none.

    The QDQ graphs as written (ORT_DISABLE_ALL: float Quantize/Dequantize around float convs) compute the
    function exactly on every CPU. ORT's fused int8 convs do too where the CPU has VNNI or AMX (int32
    dot products). Without them (AVX2, e.g. AMD Zen 3) ORT adds u8 x s8 product pairs into saturating
    int16 (`vpmaddubsw`): a fused QLinearConv clips where the float conv does not, and with s8
    activations the baseline fuses convs that the branch form keeps float (module docstring of
    export/int8.py), so the two differ (measured 0.18 of max|ref|). With 7-bit weights (`reduce_range`)
    no pair can saturate and the fused graphs agree again."""
    q = d1["int8"]
    x = np.random.default_rng(9).standard_normal(SHAPE, dtype=np.float32)
    written = ort_outputs(q["baseline"], x, optimize=False)
    assert _rel(ort_outputs(q["split"], x, optimize=False), written) <= 1e-5
    ref = ort_outputs(q["baseline"], x)
    if not int8_pairs_saturate(cpu_flags()):
        assert _rel(ort_outputs(q["split"], x), ref) <= 1e-5
    else:
        assert _rel(ref, written) > 1e-2  # the fused baseline clips: more than an int8 step from its QDQ function
        assert _rel(ort_outputs(q["split_7bit"], x), ort_outputs(q["baseline_7bit"], x)) <= 1e-5
    # without the shared scale each branch requantizes on its own range: int8 steps off
    assert _rel(ort_outputs(q["split_unshared"], x, optimize=False), written) > 1e-2


def _act_scales(model) -> list[float]:
    inits = _inits(model)
    return [float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"]


def _weight_codes(model) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per conv (in graph order, branches of one conv concatenated): sorted int8 codes and sorted scales."""
    inits, out, by_conv = _inits(model), [], {}
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type == "Conv":
            dq = producer[n.input[1]]
            by_conv.setdefault(n.name.split("/")[0], []).append((inits[dq.input[0]], inits[dq.input[1]]))
    for parts in by_conv.values():
        out.append((np.sort(np.concatenate([w.ravel() for w, _ in parts])), np.sort(np.concatenate([s for _, s in parts]))))
    return out


def test_permuted_dilation_one_arch_has_the_baselines_quantization(d1):
    """With a channel permutation the same holds up to calibration noise: the int8 weight codes and per-channel
    scales of every conv are the baseline's, permuted (exactly), and every activation scale is the baseline's
    within 1e-6 relative. Not exactly: calibration runs the fp32 graph, whose consumer convs sum their
    (permuted) input channels in another order, so a calibrated max moves by fp32 ulps (measured 4e-7); on
    ORT such a scale can then round an int8 code one step apart, and that step propagates to later
    layers, so the outputs are compared through the parameters, not bitwise."""
    base = d1["int8"]["baseline"]
    for key in ("perm_split", "perm_merged"):
        q = d1["int8"][key]
        a, b = _act_scales(q), _act_scales(base)
        # the same distinct activation scales (a split conv repeats its one scale on each branch and the Concat)
        assert all(any(abs(v / u - 1) <= 1e-6 for u in b) for v in a), key
        assert all(any(abs(v / u - 1) <= 1e-6 for u in a) for v in b), key
        wa, wb = _weight_codes(q), _weight_codes(base)
        assert len(wa) == len(wb)
        for (ca, sa), (cb, sb) in zip(wa, wb):
            np.testing.assert_array_equal(ca, cb)
            np.testing.assert_array_equal(sa, sb)


def _inits(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_qdq_structure_one_scale_per_transformed_conv(d1):
    """Read from the graph itself: every Concat's inputs and output are dequantized/quantized with one scale
    (the baseline conv's), and every conv's weight is int8 with one scale per output channel."""
    q, inits = d1["int8"]["perm_split"], _inits(d1["int8"]["perm_split"])
    producer = {o: n for n in q.graph.node for o in n.output}
    concats = [n for n in q.graph.node if n.op_type == "Concat"]
    assert len(concats) == sum(1 for n in d1["fp32"]["perm_split"].graph.node if n.op_type == "Concat") == len(BACKBONES["resnet18"].convs)
    for c in concats:
        scales = {float(inits[producer[t].input[1]]) for t in c.input}
        scales |= {float(inits[n.input[1]]) for n in q.graph.node if n.op_type == "QuantizeLinear" and c.output[0] in n.input}
        assert len(scales) == 1, (c.name, scales)
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    for conv in convs:
        dq = producer[conv.input[1]]
        w, s = inits[dq.input[0]], inits[dq.input[1]]
        assert dq.op_type == "DequantizeLinear" and w.dtype == np.int8 and s.shape == (w.shape[0],)
        assert not any(n.op_type == "DequantizeLinear" and n.output[0] == conv.input[2] for n in q.graph.node)  # float bias
    audit = qdq_audit(q)
    assert (audit["transformed_convs"], audit["one_scale"], audit["passed"]) == (len(concats), len(concats), True)
    assert audit["per_channel_int8_weights"] == audit["convs"] == len(convs)
    # the audit fails a graph quantized without shared scales
    assert qdq_audit(d1["int8"]["split_unshared"])["one_scale"] == 0


def test_preprocess_is_the_detector_transform():
    """Fitting a 96x128 image into 64x96 scales it by min(64/96, 96/128): torchvision's transform with
    min_size 64 / max_size 96 does the same, then pads to a multiple of 32 (64x96)."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0))
    t = GeneralizedRCNNTransform(64, 96, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).eval()
    ref = t([image])[0].tensors[0]
    got = preprocess(image, (64, 96))
    assert got.shape == (3, 64, 96) == tuple(ref.shape)
    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-5)
    assert np.all(got[:, :, 86:] == 0)  # 128 * 2/3 = 85.3 -> 85 columns, zero padding on the right


@pytest.fixture(scope="module")
def example_int8(tmp_path_factory):
    """The ResNet-18 example and its baseline, quantized, written to files (OpenVINO and TensorRT read them)."""
    from natsdeploy.arch import load_arch
    from natsdeploy.models.build import build_trunks

    arch = load_arch(EXAMPLES / "resnet18_nats_c.json")
    t, b, _ = build_trunks(arch, None, 0)
    fp32 = {"model": trunk_to_onnx(rewrite(fold_trunk(t)), input_shape=SHAPE),
            "baseline": trunk_to_onnx(rewrite(fold_trunk(b)), input_shape=SHAPE)}
    q = quantize_pair(fp32, lambda: iter(_inputs()))
    out = tmp_path_factory.mktemp("int8")
    for k, m in q.items():
        (out / f"{k}.onnx").write_bytes(m.SerializeToString())
    return {"dir": out, "int8": q, "fp32": fp32}


def test_openvino_runs_the_convs_in_int8(example_int8):
    """OpenVINO's runtime model: every Convolution runs i8/u8 (not f32) for the QDQ graphs; the fp32 graph's
    convs run f32, so the check can fail."""
    from natsdeploy.export.int8 import openvino_conv_precisions

    for key in ("model", "baseline"):
        ov = openvino_conv_precisions(example_int8["int8"][key], threads=2)
        assert ov["all_int8"] and ov["convs"] > 0, ov
        assert set(ov["precisions"]) <= {"i8", "u8"}
    fp32 = openvino_conv_precisions(example_int8["fp32"]["model"], threads=2)
    assert not fp32["all_int8"] and fp32["int8_convs"] == 0


@pytest.mark.skipif(not trt_importable(), reason="no TensorRT Python API (tensorrt or tensorrt_rtx) importable")
def test_tensorrt_parses_the_qdq_graphs(example_int8, tmp_path):
    """TensorRT's ONNX parser takes the QDQ graphs as written (float biases, symmetric int8). Building an
    engine is reported in one line either way; where it builds, its convs read int8."""
    from natsdeploy.export.tensorrt import int8_engine_check, parse_onnx, require_tensorrt

    api = require_tensorrt("auto")
    for key in ("model", "baseline"):
        parsed = parse_onnx(api, example_int8["dir"] / f"{key}.onnx")
        assert parsed.ok, parsed.errors
        r = int8_engine_check(api, example_int8["dir"] / f"{key}.onnx", tmp_path / f"{key}.engine")
        assert r["parse"].startswith("ok") and "\n" not in r["build"]
        if r["build"].startswith("ok"):
            assert r["conv_inputs"].get("Int8", 0) == sum(r["conv_inputs"].values()) > 0, r


def _ort_optimized_ops(model, tmp_path, name: str) -> dict[str, int]:
    """Op counts of ONNX Runtime's optimised CPU graph (ORT_ENABLE_ALL) of `model`."""
    import collections

    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node))


def test_u8_activations_let_ort_run_every_conv_as_qlinearconv(example_int8, tmp_path):
    """With u8 (asymmetric) activations ONNX Runtime fuses every conv, branches included, into QLinearConv;
    the u8 graphs keep one activation scale per transformed conv and the dilation-1 invariant."""
    q = quantize_pair(example_int8["fp32"], lambda: iter(_inputs()), activations="u8")
    for key, m in q.items():
        ops = _ort_optimized_ops(m, tmp_path, key)
        convs = sum(1 for n in example_int8["fp32"][key].graph.node if n.op_type == "Conv")
        assert ops.get("Conv", 0) == 0 and ops.get("QLinearConv", 0) == convs, ops
        assert qdq_audit(m)["passed"]
        zps = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
        assert zps and all(_inits(m)[n.input[2]].dtype == np.uint8 for n in zps)


def test_u8_dilation_one_arch_quantizes_to_the_baseline_function(d1):
    """The invariant holds for u8 activations too: run as written (QDQ as float Quantize/Dequantize ops), the
    two graphs agree within the s8 test's bound. ORT's optimised u8 graphs differ by a few int8 steps
    (measured 1.2e-2 of max|ref|): there every branch is its own QLinearConv feeding a QLinearConcat, whose
    integer kernels round differently from the baseline's one QLinearConv (the place inside ORT not isolated);
    the quantized function itself is the baseline's."""
    fp32 = {k: d1["fp32"][k] for k in ("baseline", "split")}
    q = quantize_pair(fp32, lambda: iter(_inputs()), activations="u8")
    x = np.random.default_rng(9).standard_normal(SHAPE, dtype=np.float32)
    ref = ort_outputs(q["baseline"], x, optimize=False)
    assert _rel(ort_outputs(q["split"], x, optimize=False), ref) <= 1e-5
    unshared = quantize_pair({"s": fp32["split"]}, lambda: iter(_inputs()), activations="u8", shared_scales=False)
    assert _rel(ort_outputs(unshared["s"], x, optimize=False), ref) > 1e-2  # the check can fail


@pytest.mark.parametrize("precision, activations, msg", [
    ("int8", "s4", r"^--int8-activations: got 's4', expected one of \['s8', 'u8'\]$"),
    ("fp32", "u8", r"^--int8-activations: got 'u8' with --precision fp32, expected it only with --precision int8$")])
def test_int8_activations_request_errors(precision, activations, msg):
    from natsdeploy.errors import UsageError
    from natsdeploy.export.int8 import check_int8_request

    with pytest.raises(UsageError, match=msg):
        check_int8_request(precision, "synthetic" if precision == "int8" else None, None, activations=activations)


# -- calibration data: a COCO-format set or a plain folder of images -----------------------------------------
def _write_images(root, n: int) -> Path:
    """`n` small RGB PNGs of different sizes, the last ones in a subfolder, and a file that is not an image."""
    from PIL import Image

    (root / "sub").mkdir(parents=True)
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 256, (40 + 8 * i, 56 - 4 * i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / ("sub" if i >= n // 2 else ".") / f"img{i}.png")
    (root / "labels.txt").write_text("no annotations here")
    return root


def test_calibration_reads_coco_as_coco_and_its_images_as_a_folder(synth_coco):
    """A folder with COCO annotations is a COCO set (its train split); its `train/` images, read as a plain
    folder, give the very same calibration tensors (same files in the same order, same preprocessing)."""
    from natsdeploy.data.coco import CocoDetection
    from natsdeploy.data.images import ImageFolder
    from natsdeploy.export.int8 import calibration_inputs, open_calibration

    root = Path(synth_coco(train_images=4, val_images=2))
    lines: list[str] = []
    coco = open_calibration(str(root), 4, log=lines.append)
    folder = open_calibration(str(root / "train"), 4, log=lines.append)
    assert isinstance(coco, CocoDetection) and coco.split == "train" and isinstance(folder, ImageFolder)
    assert lines == [f"calibration: 4 images from {root} (COCO-format, train split)",
                     f"calibration: 4 images from {root / 'train'} (image folder, recursive)"]
    for shape in ((1, 3, 64, 96), (2, 3, 48, 40)):
        a, b = list(calibration_inputs(coco, 4, shape)), list(calibration_inputs(folder, 4, shape))
        assert len(a) == len(b) == 4 // shape[0]
        for x, y in zip(a, b):
            assert x.shape == tuple(shape) and np.array_equal(x, y)


def test_fewer_images_than_asked_uses_them_all(tmp_path, synth_coco):
    from natsdeploy.export.int8 import calibration_count, open_calibration

    photos = _write_images(tmp_path / "photos", 3)
    lines: list[str] = []
    ds = open_calibration(str(photos), 64, log=lines.append)
    assert calibration_count(ds, 64) == 3 == len(ds)
    assert [p.relative_to(photos).as_posix() for p in ds.paths] == ["img0.png", "sub/img1.png", "sub/img2.png"]
    assert lines == [f"calibration: 3 images from {photos} (image folder, recursive)",
                     "calibration: asked for 64 images (--calibration-images), found 3: using all 3"]
    lines.clear()
    assert calibration_count(open_calibration(str(photos), 2, log=lines.append), 2) == 2
    assert lines == [f"calibration: the first 2 of 3 images from {photos} (image folder, recursive, sorted by path)"]
    lines.clear()
    coco = synth_coco(train_images=4, val_images=2)
    assert calibration_count(open_calibration(coco, 5, log=lines.append), 5) == 4
    assert lines == [f"calibration: 4 images from {coco} (COCO-format, train split)",
                     "calibration: asked for 5 images (--calibration-images), found 4: using all 4"]


def test_calibration_source_errors(tmp_path):
    """One line each: no such folder, no images, an unreadable image among those used, and a folder with a
    COCO annotation file but not its images (read as COCO, not quietly as images)."""
    from natsdeploy.errors import DatasetError, UsageError
    from natsdeploy.export.int8 import open_calibration

    with pytest.raises(UsageError, match=r"^--calibration: got '.*nowhere', expected a folder of images, a "
                                         r"COCO-format folder or 'synthetic'$"):
        open_calibration(str(tmp_path / "nowhere"), 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"^--calibration: got '.*empty' with no \.jpg/\.jpeg/\.png/\.bmp file"):
        open_calibration(str(tmp_path / "empty"), 4)
    photos = _write_images(tmp_path / "photos", 2)
    (photos / "sub" / "zz.jpg").write_bytes(b"not a jpeg")
    assert len(open_calibration(str(photos), 2)) == 3  # zz.jpg is not among the 2 used: not opened
    with pytest.raises(DatasetError, match=r"^.*/sub/zz\.jpg: got an unreadable image \(not an image format PIL "
                                           r"recognises\), expected a JPEG, PNG or BMP image$"):
        open_calibration(str(photos), 3)
    (photos / "annotations").mkdir()
    (photos / "annotations" / "instances_train.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"photos/train: got no image folder, expected the images of "
                                           r"instances_train\.json there$"):
        open_calibration(str(photos), 2)
