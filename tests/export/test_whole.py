"""`natsdeploy.export.whole`: a trained detector as one deployable ONNX file, its ORT parity and TensorRT section.

The `natsdeploy export ARCH --checkpoint` flags are wired by the export CLI (`export_whole_cli`); here the
library is tested: the file, its dynamic H x W on ONNX Runtime against torchvision's detector, the
report, TensorRT's parser as the reference for the TensorRT section, and the bad-input errors.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from natsdeploy import Arch
from natsdeploy.errors import UsageError
from natsdeploy.export.tensorrt_support import graph_op_counts, probe_tensorrt
from natsdeploy.export.whole import BACKBONE_CHANNELS, WholeTolerance, export_whole, pin_roi_scales
from tests.conftest import EXAMPLES, FAST, REPO
from tests.helpers import trt_importable

ARCH = EXAMPLES / "resnet18_nats_c.json"


def _arch() -> Arch:
    return Arch.from_dict(json.loads(ARCH.read_text()))


@pytest.fixture(scope="module")
def trained(module_tmp, tiny_synth):
    """A Faster R-CNN on the example transformed ResNet-18 after one training step (64 px, FAST settings)."""
    from natsdeploy.train.loop import TrainConfig, train

    root = module_tmp("whole")
    cfg = TrainConfig(arch=str(ARCH), data=tiny_synth, out=str(root / "run"), epochs=1, steps=(1,), batch_size=2,
                      warmup_iters=2, lr_per_image=0.005, min_size=64, max_size=64, max_steps_per_epoch=1,
                      progress=False, detector_kwargs=dict(FAST, box_score_thresh=0.0))
    train(cfg, log=lambda s: None)  # threshold 0: so short a run scores far below 0.05; keeps 100 detections
    return {"data": tiny_synth, "checkpoint": str(root / "run" / "checkpoint.pth"), "root": root}


@pytest.fixture(scope="module")
def loaded(trained):
    """The detector rebuilt from the checkpoint by torchvision, never called (tests call deep copies)."""
    from natsdeploy.models.trained import load_detector_checkpoint

    return load_detector_checkpoint(trained["checkpoint"])[0]


@pytest.fixture(scope="module")
def exported(trained):
    """`export_whole` run once for the module (ONNX, ORT parity, TensorRT section where TensorRT imports)."""
    logged: list[str] = []
    result = export_whole(_arch(), trained["checkpoint"], trained["root"] / "out", data=trained["data"],
                          log=logged.append)
    return result, logged


def test_detector_onnx_is_valid_and_dynamic_on_ort_against_torchvision(trained, exported, loaded):
    """The written file passes onnx's full checker and, at two H x W the report did not use, gives
    torchvision's detections (the detector rebuilt from the checkpoint) on ONNX Runtime."""
    import onnxruntime as ort

    from natsdeploy.data.evaluate import match_detections

    result, _ = exported
    path = result.files["onnx"]
    assert path == trained["root"] / "out" / "detector.onnx" and path.is_file()
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["boxes", "labels", "scores"]
    detector = copy.deepcopy(loaded)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # torchvision's pooler takes its scales from its first image: one of the trained size
        detector([image])
    assert detector.roi_heads.box_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    for h, w in ((40, 72), (88, 56)):  # neither the val images' 64x64 nor the report's 48x64 crop
        x = torch.nn.functional.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        boxes, labels, scores = session.run(None, {"image": x.numpy()})
        assert boxes.shape == (len(labels), 4) and labels.dtype == np.int64 and scores.dtype == np.float32
        assert len(labels) > 0 and np.all(np.diff(scores) <= 0)  # highest score first
        assert boxes[:, [0, 2]].max() <= w + 1e-3 and boxes[:, [1, 3]].max() <= h + 1e-3 and boxes.min() >= -1e-3
        with torch.no_grad():
            ref = detector([x])[0]
        got = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels), "scores": torch.from_numpy(scores)}
        m = match_detections([ref], [got])
        assert m.reference == m.runtime == len(labels) and m.decided_share == 1.0, (h, w, m)
        assert m.max_score_diff < 1e-5 and m.max_box_diff < 1e-2, (h, w, m)


def test_roi_scales_are_pinned_whatever_image_comes_first(loaded):
    """torchvision infers the RoI pooler's scales from the first image and keeps them: a 40 x 72 image first
    (resized to 36 x 64, padded to 64) gives twice the true scales; `pin_roi_scales` sets the true ones."""
    detector = copy.deepcopy(loaded)
    with torch.no_grad():
        detector([torch.rand(3, 40, 72, generator=torch.Generator().manual_seed(0))])
    assert detector.roi_heads.box_roi_pool.scales == [1 / 2, 1 / 4, 1 / 8, 1 / 16]
    assert pin_roi_scales(detector) == {"box_roi_pool": [1 / 4, 1 / 8, 1 / 16, 1 / 32]}
    assert detector.roi_heads.box_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def test_report_records_ort_parity_and_the_interface(trained, exported):
    result, logged = exported
    out = trained["root"] / "out"
    assert result.files["report"] == out / "report.json"
    assert sorted(p.name for p in out.iterdir()) == ["detector.onnx", "report.json"]  # no temp file, no engine
    r = json.loads((out / "report.json").read_text())
    assert r == json.loads(json.dumps(result.report)) and r["format"] == "natsdeploy-whole-detector/1"
    assert r["detector"] == "faster_rcnn" and r["backbone"] == "resnet18" and r["min_size"] == 64
    assert r["roi_scales"] == {"box_roi_pool": [1 / 4, 1 / 8, 1 / 16, 1 / 32]}
    g = r["onnx"]
    assert g["opset"] == 17 and g["input"] == {"name": "image", "dtype": "float32", "shape": [3, "height", "width"]}
    assert [o["name"] for o in g["outputs"]] == ["boxes", "labels", "scores"]
    assert g["outputs"][0]["shape"] == ["detections", 4] and g["outputs"][1]["dtype"] == "int64"
    ops = graph_op_counts(onnx.load(str(out / "detector.onnx")))
    assert g["ops"] == dict(ops) and {"NonMaxSuppression", "RoiAlign", "TopK", "Resize", "Conv"} <= set(ops)
    p = r["ort_parity"]
    assert p["passed"] and all(p["checks"].values()) and r["verdict"]["passed"] and result.passed
    assert [row["size"] for row in p["images"]] == [[64, 64], [64, 64], [48, 64]]  # 2 val images + a crop
    assert all(row["pytorch"] == row["runtime"] == row["matched"] > 0 for row in p["images"])
    assert p["matching"]["decided_share"] == 1.0 and p["matching"]["max_box_diff"] <= WholeTolerance().box_px
    assert all(d == 0.0 for d in p["coco_ap"]["bbox"]["delta"].values())
    printed = logged[-1]
    assert "input  image    float32  3 x height x width" in printed and "48x64" in printed
    assert "verdict: PASS" in printed


def test_tensorrt_section_agrees_with_tensorrts_parser(exported):
    """Where TensorRT imports: the section's 'parse as written' is what TensorRT's parser says of the file, each
    rejected op is one of the graph's with its error and a remedy, and a build ran only on a graph that parsed."""
    result, _ = exported
    t, ops = result.report["tensorrt"], result.report["onnx"]["ops"]
    if not trt_importable():
        assert "not importable" in t["skipped"] and "install" in t["skipped"]
        return
    from natsdeploy.export.tensorrt import parse_onnx, require_tensorrt

    assert "crashed" not in t and t["flavour"] in ("tensorrt", "tensorrt-rtx")
    parsed = parse_onnx(require_tensorrt(), result.files["onnx"])
    ok, first = parsed.ok, (None if parsed.ok else parsed.parser.get_error(0).node_name())
    for name in ("parser", "network", "builder"):  # free in this order (see tensorrt_support)
        setattr(parsed, name, None)
    assert t["parse"].startswith("ok") == ok
    if ok:
        assert "rejected" not in t and t["build"].startswith(("ok", "failed")) and "engine" not in result.files
        return
    assert t["rejected"][0]["node"] == first and t["build"] == "not run: the graph as written does not parse"
    for rej in t["rejected"]:
        assert rej["op"] in ops and rej["nodes"] == ops[rej["op"]] and rej["error"] and rej["remedy"]
    assert t["parsed_after_cuts"].startswith("yes")  # the rest of the detector parsed
    assert set(t["accepted_ops"]) == set(ops) - {rej["op"] for rej in t["rejected"]}
    assert not (result.out_dir / "detector.engine").exists()


def _tiny_graph(path: Path, *, nonzero: bool) -> Path:
    """Image 3 x H x W -> Conv -> Relu (-> NonZero): a graph every TensorRT parses, or one with NonZero."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    nodes = [helper.make_node("Unsqueeze", ["image", "axes"], ["x"], name="unsqueeze"),
             helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["y"], ["out"], name="relu")]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, "height", "width"])]
    if nonzero:
        nodes.append(helper.make_node("NonZero", ["out"], ["nz"], name="nonzero"))
        outputs.append(helper.make_tensor_value_info("nz", TensorProto.INT64, [4, "n"]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            [3, "height", "width"])],
                              outputs, initializer=[w, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


SHAPES = dict(min_shape=(3, 32, 32), opt_shape=(3, 64, 64), max_shape=(3, 96, 96))


@pytest.mark.skipif(not trt_importable(), reason="TensorRT (tensorrt or tensorrt_rtx) is not importable here")
def test_probe_builds_and_writes_an_engine_only_when_asked(tmp_path):
    path = _tiny_graph(tmp_path / "tiny.onnx", nonzero=False)
    kept = probe_tensorrt(path, engine_path=None, **SHAPES)
    assert kept["parse"] == "ok (as written)" and kept["build"].startswith("ok"), kept
    assert kept["engine"] is None and kept["engine_bytes"] > 0 and kept["profile"]["max"] == [3, 96, 96]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]
    t = probe_tensorrt(path, engine_path=tmp_path / "tiny.engine", **SHAPES)
    assert t["engine"] == str(tmp_path / "tiny.engine") and (tmp_path / "tiny.engine").stat().st_size == t["engine_bytes"]


@pytest.mark.skipif(not trt_importable(), reason="TensorRT (tensorrt or tensorrt_rtx) is not importable here")
def test_probe_names_a_rejected_op_and_parses_the_rest(tmp_path):
    """NonZero: native in TensorRT 8.5+, a missing plugin in TensorRT-RTX; what the parser says is recorded."""
    path = _tiny_graph(tmp_path / "nz.onnx", nonzero=True)
    t = probe_tensorrt(path, engine_path=tmp_path / "nz.engine", **SHAPES)
    if t["parse"].startswith("ok"):
        assert "rejected" not in t and t["accepted_ops"]["NonZero"] == 1
        return
    assert t["parse"] == "failed at node nonzero (NonZero)" and [r["op"] for r in t["rejected"]] == ["NonZero"]
    assert "plugin" in t["rejected"][0]["remedy"] and t["rejected"][0]["nodes"] == 1
    assert t["parsed_after_cuts"].startswith("yes") and t["accepted_ops"] == {"Conv": 1, "Relu": 1, "Unsqueeze": 1}
    assert t["build"].startswith("not run") and not (tmp_path / "nz.engine").exists()


def test_probe_records_a_crash_with_what_came_before(tmp_path, monkeypatch):
    """A child killed by a signal (TensorRT crashing) is a line in the section, after the findings it reported."""
    def crashing(cmd, **kwargs):
        result = Path(cmd[cmd.index("--result") + 1])
        result.write_text(json.dumps({"flavour": "tensorrt-rtx", "stage": "parse as written"}) + "\n")
        return subprocess.CompletedProcess(cmd, -11, "", "")

    monkeypatch.setattr(subprocess, "run", crashing)
    t = probe_tensorrt(tmp_path / "any.onnx", **SHAPES)
    assert t["flavour"] == "tensorrt-rtx"
    assert t["crashed"] == "TensorRT's child process ended with signal SIGSEGV during parse as written"


def test_checkpoint_of_another_arch_raises_one_line_and_writes_nothing(trained, tmp_path):
    """The CLI maps this UsageError to exit 2 (`natsdeploy export ARCH --checkpoint` is wired by the export CLI)."""
    out = tmp_path / "out"
    with pytest.raises(UsageError) as e:
        export_whole(Arch(backbone="resnet18"), trained["checkpoint"], out, data=trained["data"], log=lambda s: None)
    msg = str(e.value)
    assert "\n" not in msg and re.match(r"--checkpoint: got '.*checkpoint\.pth' trained on another arch: .* expected ",
                                        msg), msg
    assert not out.exists()


@pytest.mark.parametrize("kwargs, expected", [
    (dict(trt="bogus"), "--trt: got 'bogus', expected one of ['auto', 'tensorrt', 'rtx', 'off']"),
    (dict(trt="off", engine=True), "--engine: got it with --trt off, expected --trt auto, tensorrt or rtx"),
    (dict(images=0), "--images: got 0, expected 1 or more"),
])
def test_bad_options_raise_before_reading_anything(tmp_path, kwargs, expected):
    with pytest.raises(UsageError, match=re.escape(expected)):
        export_whole(_arch(), tmp_path / "missing.pth", tmp_path / "out", log=lambda s: None, **kwargs)
    assert not (tmp_path / "out").exists()


def test_backbone_outputs_match_torchvision_and_the_docs():
    """The backbone-only export's c2..c5 (documented for users' own necks): channels and strides as torchvision's
    ResNets give them, and the table in docs/whole-detector.md says the same."""
    import torchvision

    with torch.device("meta"):  # shapes only: no init, no arithmetic
        x = torch.zeros(1, 3, 64, 96)
    for name in ("resnet18", "resnet50"):
        with torch.device("meta"):
            m = getattr(torchvision.models, name)(weights=None).eval()
        with torch.no_grad():
            y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            for i, layer in enumerate((m.layer1, m.layer2, m.layer3, m.layer4)):
                y = layer(y)
                stride = 4 * 2 ** i
                assert (y.shape[1], y.shape[2], y.shape[3]) == (BACKBONE_CHANNELS[name][f"c{i + 2}"], 64 // stride,
                                                                96 // stride), (name, i)
    doc = (REPO / "docs" / "whole-detector.md").read_text()
    for name, channels in BACKBONE_CHANNELS.items():
        row = re.search(rf"^\| `{name}` \|(.*)\|$", doc, re.MULTILINE)
        assert row, name
        assert [int(c) for c in re.findall(r"\d+", row.group(1))] == list(channels.values()), name


@pytest.mark.parametrize("extra, expected", [
    (dict(precision="fp16"), "--precision: got 'fp16' with --checkpoint, expected none"),
    (dict(weights="imagenet"), "--weights: got 'imagenet' with --checkpoint, expected none"),
    (dict(images="0"), "--images: got '0', expected an integer >= 1"),
])
def test_export_whole_cli_refuses_backbone_flags_before_any_work(tmp_path, extra, expected):
    """`export_whole_cli` takes export's parsed args (the lead wires `--checkpoint` to it): flags of the backbone
    export that cannot apply to the whole detector exit 2 before the checkpoint is read."""
    import argparse

    from natsdeploy.export.whole import export_whole_cli

    args = argparse.Namespace(**{"arch": str(ARCH), "checkpoint": str(tmp_path / "missing.pth"), "out": str(tmp_path / "o"),
                                 "data": None, "engine": False, "trt": "auto", "threads": None, "weights": None,
                                 "precision": None, "fp16": False, "images": None, **extra})
    with pytest.raises(UsageError, match=re.escape(expected)):
        export_whole_cli(args)
    assert not (tmp_path / "o").exists()


def test_export_checkpoint_through_the_command(trained, tmp_path, capsys):
    """`natsdeploy export ARCH --checkpoint CKPT --data DIR` writes detector.onnx and its report through the
    real command; an arch the checkpoint was not trained on, and --data without --checkpoint, exit 2 in one
    line with nothing written."""
    from natsdeploy.cli import main
    from tests.helpers import assert_exit_2

    out = tmp_path / "whole"
    assert main(["export", str(ARCH), "--checkpoint", trained["checkpoint"], "--data", trained["data"], "--images", "1",
                 "--trt", "off", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads((out / "report.json").read_text())
    assert (out / "detector.onnx").is_file() and r["ort_parity"]["passed"] and r["verdict"]["passed"]
    assert "verdict: PASS" in printed
    other = tmp_path / "other.json"
    Arch(backbone="resnet18").save(other)
    assert_exit_2(["export", str(other), "--checkpoint", trained["checkpoint"], "--out", str(tmp_path / "o2")], capsys,
                  contains="--checkpoint: got ")
    assert_exit_2(["export", str(ARCH), "--data", trained["data"], "--out", str(tmp_path / "o3")], capsys,
                  contains="--data: got ")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
