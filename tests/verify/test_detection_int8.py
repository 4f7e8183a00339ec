"""`natsdeploy parity --precision int8`: ΔAP (int8 - fp32) for the transformed and the baseline backbone."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from natsdeploy.cli import main
from natsdeploy.data.evaluate import METRICS
from tests.conftest import EXAMPLES, FAST
from tests.helpers import assert_exit_2

ARCH = EXAMPLES / "resnet18_nats_c.json"


@pytest.fixture(scope="module")
def trained(module_tmp, small_synth):
    """A briefly trained Faster R-CNN on the example ResNet-18 (as tests/verify/test_detection_parity.py trains it)."""
    from natsdeploy.train.loop import TrainConfig, train

    root = module_tmp("parity-int8")
    cfg = TrainConfig(arch=str(ARCH), data=str(small_synth), out=str(root / "run"), epochs=1, steps=(1,), batch_size=2,
                      warmup_iters=2, lr_per_image=0.005, min_size=96, max_size=128, max_steps_per_epoch=3,
                      progress=False, detector_kwargs=dict(FAST, box_score_thresh=0.0))
    train(cfg, log=lambda s: None)
    return {"data": str(small_synth), "checkpoint": str(root / "run" / "checkpoint.pth")}


def _int8_parity(trained, out, *extra: str) -> tuple[int, dict, str]:
    """`parity --precision int8` on 4 calibration images and 2 val images: exit status, JSON and printed text."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["parity", str(ARCH), "--checkpoint", trained["checkpoint"], "--data", trained["data"],
                   "--precision", "int8", "--calibration-images", "4", "--limit", "2", "--json", str(out), *extra])
    return rc, json.loads(out.read_text()), printed.getvalue()


@pytest.fixture(scope="module")
def coco_run(trained, module_tmp):
    """Calibrated on --data's train split (the default)."""
    return _int8_parity(trained, module_tmp("parity-int8-coco") / "p.json")


def test_int8_parity_reports_both_delta_rows(coco_run):
    rc, r, printed = coco_run
    assert rc == (0 if r["passed"] else 1), printed
    assert r["precision"] == "int8" and r["images"] == 2 and r["calibration"]["images"] == 4
    assert r["calibration"]["split"] == "train" and r["calibration"]["activations"] == "s8"
    for key in ("model", "baseline"):
        fp32, int8 = r["metrics"][key]["fp32"], r["metrics"][key]["int8"]
        assert set(fp32) == set(int8) == set(METRICS)
        assert all(r["delta"][key][m] == pytest.approx(int8[m] - fp32[m]) for m in METRICS)
        # the int8 backbone really ran and still finds most of the fp32 run's detections
        m = r["matching"][key]
        assert m["reference_detections"] > 0 and m["runtime_detections"] > 0
    # the verdict is the comparison with the baseline's delta, not a fixed number
    d = r["delta"]
    assert r["passed"] == all(abs(d["model"][m]) <= abs(d["baseline"][m]) + r["tolerance_ap_points"] + 1e-9
                              for m in METRICS)
    assert "Δ model" in printed and "Δ baseline" in printed and "int8" in printed


def test_int8_parity_bad_requests_exit_2(trained, tmp_path, capsys):
    base = ["parity", str(ARCH), "--checkpoint", trained["checkpoint"], "--data", trained["data"]]
    assert_exit_2(base + ["--precision", "int4"], capsys, contains="--precision: got 'int4'")
    assert_exit_2(base + ["--precision", "int8", "--backend", "openvino"], capsys, contains="--backend")
    assert_exit_2(base + ["--precision", "int8", "--calibration-images", "many"], capsys,
                  contains="--calibration-images: got 'many'")
    assert_exit_2(base + ["--precision", "int8", "--calibration", str(tmp_path / "nowhere")], capsys,
                  contains=f"--calibration: got {str(tmp_path / 'nowhere')!r}, expected a folder of images")
    (tmp_path / "empty").mkdir()
    assert_exit_2(base + ["--precision", "int8", "--calibration", str(tmp_path / "empty")], capsys,
                  contains=f"--calibration: got {str(tmp_path / 'empty')!r} with no .jpg/.jpeg/.png/.bmp file")
    assert_exit_2(base + ["--calibration-images", "4"], capsys, contains="only with --precision int8")
    assert_exit_2(base + ["--calibration", trained["data"]], capsys,
                  contains=f"--calibration: got {trained['data']!r} with --precision fp32, expected it only with "
                           "--precision int8")
    assert_exit_2(base + ["--int8-activations", "u8"], capsys,
                  contains="--int8-activations: got 'u8' with --precision fp32, expected it only with --precision int8")
    assert_exit_2(base + ["--precision", "int8", "--int8-activations", "u4"], capsys,
                  contains="--int8-activations: got 'u4', expected one of ['s8', 'u8']")


def test_int8_parity_calibrates_on_a_folder_of_images(trained, coco_run, tmp_path):
    """`--calibration` a plain folder: the data's own train images (no annotations there) give the same
    calibration, hence the same int8 backbones and the very same metrics and matches as the default run; a
    line names the folder and how many of its images are used."""
    images = f"{trained['data']}/train"
    rc, r, printed = _int8_parity(trained, tmp_path / "p.json", "--calibration", images)
    c = r["calibration"]
    assert (c["data"], c["split"], c["images"]) == (images, "image folder", 4)
    assert f"calibration: the first 4 of 8 images from {images} (image folder, recursive, sorted by path)" in printed
    assert r["metrics"] == coco_run[1]["metrics"] and r["matching"] == coco_run[1]["matching"]
    assert rc == coco_run[0]
