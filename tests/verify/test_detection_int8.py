"""`natsdeploy parity --precision int8`: ΔAP (int8 - fp32) for the transformed and the baseline backbone, and the
bootstrap verdict's three outcomes with their exit status."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from natsdeploy.cli import main
from natsdeploy.data.evaluate import METRICS
from natsdeploy.verify.bootstrap import EXIT_CODES, decide
from tests.conftest import EXAMPLES, FAST
from tests.helpers import assert_exit_2, int8_arms

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
    assert rc == EXIT_CODES[r["outcome"]] == r["exit_status"], printed
    assert r["passed"] == (r["outcome"] == "pass")
    assert r["precision"] == "int8" and r["images"] == 2 and r["calibration"]["images"] == 4
    assert r["calibration"]["split"] == "train" and r["calibration"]["activations"] == "s8"
    for key in ("model", "baseline"):
        fp32, int8 = r["metrics"][key]["fp32"], r["metrics"][key]["int8"]
        assert set(fp32) == set(int8) == set(METRICS)
        assert all(r["delta"][key][m] == pytest.approx(int8[m] - fp32[m]) for m in METRICS)
        # the int8 backbone really ran and still finds most of the fp32 run's detections
        m = r["matching"][key]
        assert m["reference_detections"] > 0 and m["runtime_detections"] > 0
    # the old fixed rule, the comparison with the baseline's delta, is still computed and shown, not deciding
    d = r["delta"]
    assert r["fixed_rule"]["passed"] == all(abs(d["model"][m]) <= abs(d["baseline"][m]) + r["tolerance_ap_points"]
                                            + 1e-9 for m in METRICS)
    assert r["fixed_rule"]["deciding"] is False and "fixed rule (shown, not deciding)" in printed
    assert "Δ model" in printed and "Δ baseline" in printed and "int8" in printed
    # the deciding verdict: D = Δ model - Δ baseline per metric, its interval, one outcome each
    v = r["verdict"]
    assert (v["replicates"], v["seed"], v["confidence"], v["images"]) == (1000, 0, 0.95, 2)
    assert v["tolerance_ap_points"] == r["tolerance_ap_points"] == 0.5 and v["outcome"] == r["outcome"]
    for m in METRICS:
        mv = v["metrics"][m]
        if mv["outcome"] == "undefined":
            assert r["metrics"]["model"]["fp32"][m] == -1.0
            continue
        assert mv["estimate"] == pytest.approx(d["model"][m] - d["baseline"][m], abs=1e-5)
        assert mv["outcome"] == decide(mv["low"], mv["high"], tolerance=0.5)
    assert "paired bootstrap interval over the 2 images (1000 replicates, seed 0)" in printed


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
    assert_exit_2(base + ["--precision", "int8", "--bootstrap-replicates", "50"], capsys,
                  contains="--bootstrap-replicates: got '50', expected an integer >= 100")
    assert_exit_2(base + ["--precision", "int8", "--bootstrap-seed", "-1"], capsys,
                  contains="--bootstrap-seed: got '-1', expected an integer >= 0")
    assert_exit_2(base + ["--bootstrap-seed", "3"], capsys,
                  contains="--bootstrap-seed: got '3' with --precision fp32, expected it only with --precision int8")


def test_int8_parity_real_command_pass_exits_0(trained, tmp_path, capsys):
    """The real command reaches pass: at a tolerance of 200 AP points no interval of D (within [-200, 200]) can
    fall below it, whatever int8 does to this barely trained detector. Fewer replicates, another seed: recorded."""
    out = tmp_path / "p.json"
    rc = main(["parity", str(ARCH), "--checkpoint", trained["checkpoint"], "--data", trained["data"],
               "--precision", "int8", "--calibration-images", "2", "--limit", "2", "--tolerance", "200",
               "--bootstrap-replicates", "100", "--bootstrap-seed", "5", "--json", str(out)])
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert rc == 0 and r["outcome"] == "pass" and r["exit_status"] == 0, printed
    assert (r["verdict"]["replicates"], r["verdict"]["seed"]) == (100, 5)
    assert all(v["outcome"] in ("pass", "undefined") for v in r["verdict"]["metrics"].values())
    assert "verdict: PASS (exit status 0;" in printed


def _constructed_result(missed, *, tolerance, replicates, seed):
    """What `detection_parity_int8` returns, from real pycocotools matches of constructed detectors (the
    trained fixture cannot lose AP to int8: its AP is ~0)."""
    from natsdeploy.data.evaluate import ap_points
    from natsdeploy.verify.bootstrap import int8_verdict
    from natsdeploy.verify.detection_int8 import DetectionInt8Result

    arms = int8_arms(images=30, missed={("model", "int8"): missed})
    metrics = {k: {p: ap_points(arms[k, p][0]) for p in ("fp32", "int8")} for k in ("model", "baseline")}
    match = {"iou": 0.99, "matched": 30, "reference_detections": 30}
    info = {"checkpoint": "constructed", "epoch": 0, "detector": "constructed", "backbone": "resnet18",
            "transformed_convs": 0, "data": "constructed", "runtime_name": "pycocotools", "reference": "fp32",
            "baseline": "constructed"}
    verdict = int8_verdict({k: m for k, (_, m) in arms.items()}, tolerance=tolerance, replicates=replicates, seed=seed)
    return DetectionInt8Result(metrics=metrics, matching={"model": match, "baseline": match}, tolerance=tolerance,
                               images=30, calibration={"images": 0, "data": "-", "split": "-"}, verdict=verdict,
                               info=info)


@pytest.mark.parametrize("missed, tolerance, outcome, line", [
    (range(0, 30, 3), "0.5", "fail", "verdict: FAIL (exit status 1;"),
    ([0], "1", "inconclusive", "verdict: INCONCLUSIVE: more images needed (exit status 3;"),
    ([0], "50", "pass", "verdict: PASS (exit status 0;"),
])
def test_int8_parity_exit_status_per_outcome(trained, tmp_path, capsys, monkeypatch, missed, tolerance, outcome, line):
    """Each outcome's exit status through the command (`natsdeploy.cli.main`: parsing, report, JSON, exit status),
    with the detector runs replaced by constructed per-image matches from real pycocotools evaluations."""
    import natsdeploy.verify.detection_int8 as d8

    seen = {}

    def fake(arch, checkpoint, data, *, tolerance, replicates, bootstrap_seed, **kw):
        seen.update(tolerance=tolerance, replicates=replicates, seed=bootstrap_seed)
        return _constructed_result(missed, tolerance=tolerance, replicates=replicates, seed=bootstrap_seed)

    monkeypatch.setattr(d8, "detection_parity_int8", fake)
    out = tmp_path / "p.json"
    rc = main(["parity", str(ARCH), "--checkpoint", trained["checkpoint"], "--data", trained["data"],
               "--precision", "int8", "--tolerance", tolerance, "--bootstrap-replicates", "200", "--json", str(out)])
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert seen == {"tolerance": float(tolerance), "replicates": 200, "seed": 0}
    assert rc == EXIT_CODES[outcome] == r["exit_status"] and r["outcome"] == outcome, printed
    assert line in printed and r["verdict"]["replicates"] == 200
    assert {m["outcome"] for m in r["verdict"]["metrics"].values()} >= {outcome}


def test_parity_help_states_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["parity", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    assert "Exit status: 0 pass, 1 fail, 2 bad input, 3 inconclusive (int8 only" in text
    assert EXIT_CODES == {"pass": 0, "fail": 1, "bad input": 2, "inconclusive": 3}
    assert "--bootstrap-replicates" in text and "--bootstrap-seed" in text


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
