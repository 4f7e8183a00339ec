"""`natsdeploy train`: a short run writes a checkpoint and metrics, resume is bit-identical, bad input exits 2."""

from __future__ import annotations

import json
import os

import pytest
import torch

from natsdeploy import load_arch
from natsdeploy.cli import main
from natsdeploy.data.evaluate import METRICS
from natsdeploy.train.loop import (CHECKPOINT_FORMAT, TrainConfig, evaluate, load_detector_checkpoint, lr_factor,
                                   train)
from tests.conftest import EXAMPLES, FAST, FAST_OPTIONS
from tests.helpers import assert_exit_2

ARCH = EXAMPLES / "resnet18_nats_c.json"


@pytest.fixture
def synth(small_synth) -> str:
    """conftest's 8 train / 4 val images of 96x128."""
    return small_synth


def _cfg(synth, out, **kw) -> TrainConfig:
    base = dict(arch=str(ARCH), data=synth, out=str(out), epochs=2, steps=(1,), batch_size=2, warmup_iters=2,
                lr_per_image=0.005, min_size=96, max_size=128, max_steps_per_epoch=3, progress=False,
                detector_kwargs=dict(FAST))
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule_warmup_then_steps():
    f = lambda it: lr_factor(it, steps_per_epoch=10, steps=(8, 11), warmup_iters=5)  # noqa: E731
    assert f(0) == pytest.approx(0.001)
    assert f(1) == pytest.approx(0.001 * 0.8 + 0.2)
    assert f(5) == f(79) == 1.0
    assert f(80) == pytest.approx(0.1) and f(109) == pytest.approx(0.1)
    assert f(110) == pytest.approx(0.01) and f(129) == pytest.approx(0.01)


def test_short_train_writes_checkpoint_and_metrics(synth, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["train", str(ARCH), "--data", synth, "--detector", "faster_rcnn", "--epochs", "2", "--steps", "1",
                 "--batch-size", "2", "--warmup-iters", "2", "--min-size", "96", "--max-size", "128",
                 "--max-steps-per-epoch", "3", *FAST_OPTIONS, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1:" in printed and "epoch 2:" in printed and all(f"{m} " in printed for m in METRICS)

    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ck["format"] == CHECKPOINT_FORMAT and ck["epoch"] == 2 and ck["detector"] == "faster_rcnn"
    assert ck["arch"] == load_arch(ARCH).to_dict()
    assert ck["num_classes"] == 4 and ck["label_to_cat_id"] == {1: 1, 2: 2, 3: 3}
    assert (ck["min_size"], ck["max_size"]) == (96, 128)
    for key in ("model", "optimizer", "scheduler", "rng", "metrics"):
        assert ck[key], key

    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        for k in METRICS:  # AP points; -1 where pycocotools has no ground truth in the size range
            assert m[k] == -1.0 or 0.0 <= m[k] <= 100.0, (k, m[k])
    assert metrics[0]["lr"] == pytest.approx(0.0025) and metrics[1]["lr"] == pytest.approx(0.00025)  # / 10 from epoch 1
    assert metrics == ck["metrics"]

    # the checkpoint rebuilds the same detector: evaluating it again gives the logged metrics
    model, arch, meta = load_detector_checkpoint(out / "checkpoint.pth")
    assert not model.training and arch == load_arch(ARCH) and meta["epoch"] == 2
    from natsdeploy.data.coco import load_dataset

    again = evaluate(model, load_dataset(synth, "val"))
    assert again == {k: metrics[-1][k] for k in METRICS}


def test_resume_is_bit_identical(synth, tmp_path):
    # one step an epoch: the resumed epoch starts from the checkpoint's model, optimiser, scheduler and RNG
    full = train(_cfg(synth, tmp_path / "full", max_steps_per_epoch=1), log=lambda s: None)

    def interrupt_after_first_epoch(msg):
        if msg.startswith("epoch 1:"):  # logged after the checkpoint is written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(synth, tmp_path / "part", max_steps_per_epoch=1), log=interrupt_after_first_epoch)
    assert torch.load(tmp_path / "part" / "checkpoint.pth", weights_only=True)["epoch"] == 1
    resumed = train(_cfg(synth, tmp_path / "part", max_steps_per_epoch=1, resume=True), log=lambda s: None)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.metrics == resumed.metrics
    assert (tmp_path / "full" / "metrics.json").read_text() == (tmp_path / "part" / "metrics.json").read_text()


def test_baseline_trains_under_the_same_recipe(synth, tmp_path):
    r = train(_cfg(synth, tmp_path / "b", arch=None, backbone="resnet18", epochs=1, max_steps_per_epoch=1),
              log=lambda s: None)
    ck = torch.load(tmp_path / "b" / "checkpoint.pth", weights_only=True)
    assert ck["arch"]["convs"] == {} and ck["arch"]["backbone"] == "resnet18" and len(r.metrics) == 1


def test_baseline_without_backbone_exits_2(synth, tmp_path, capsys):
    assert_exit_2(["train", "--data", synth, "--out", tmp_path / "x"], capsys, contains="--backbone",
                  absent=[tmp_path / "x"])


def test_backbone_other_than_the_arch_exits_2(synth, tmp_path, capsys):
    assert_exit_2(["train", ARCH, "--backbone", "resnet50", "--data", synth, "--out", tmp_path / "x"], capsys,
                  contains="resnet18", absent=[tmp_path / "x"])


def test_dataset_without_annotations_exits_2(tmp_path, capsys):
    (tmp_path / "d" / "train").mkdir(parents=True)
    assert_exit_2(["train", ARCH, "--data", tmp_path / "d", "--out", tmp_path / "x"], capsys, contains="annotation",
                  absent=[tmp_path / "x"])


def _ddp_worker(rank, world, init_file, cfg_dict, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        r = train(TrainConfig(**cfg_dict), log=lambda s: None)
        torch.save({"model": r.model.state_dict(), "metrics": r.metrics, "checkpoint": r.checkpoint},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_ranks_agree_and_rank0_writes(synth, tmp_path):
    import dataclasses

    import torch.multiprocessing as mp

    cfg = _cfg(synth, tmp_path / "ddp", epochs=1, max_steps_per_epoch=2, batch_size=1)
    # fork, not spawn: the ranks start with torch already imported (spawn re-imports it: ~8 s on AVX2 machines)
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), dataclasses.asdict(cfg), str(tmp_path)), nprocs=2,
                       join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in (0, 1))
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k  # gradients are synchronised
    assert r0["metrics"] == r1["metrics"]  # evaluation is sharded and all-gathered
    assert r0["checkpoint"] is not None and r1["checkpoint"] is None
    ck = torch.load(tmp_path / "ddp" / "checkpoint.pth", weights_only=True)
    assert ck["metrics"] == r0["metrics"] and ck["config"]["batch_size"] == 1
    from natsdeploy.data.coco import load_dataset

    model, _, _ = load_detector_checkpoint(tmp_path / "ddp" / "checkpoint.pth")
    single = evaluate(model, load_dataset(synth, "val"))  # one process, every image
    assert single == {k: r0["metrics"][-1][k] for k in METRICS}


def test_backbone_weights_round_trip_into_the_arch(synth, tmp_path):
    """A trained transformed backbone maps back to torchvision layout and transfers to exactly the trained weights."""
    from natsdeploy.models.build import build_backbone, build_baseline
    from natsdeploy.train.loop import backbone_weights

    r = train(_cfg(synth, tmp_path / "w", epochs=1, max_steps_per_epoch=1), log=lambda s: None)
    ck = torch.load(tmp_path / "w" / "checkpoint.pth", weights_only=True)
    assert ck["pretrained"] is False  # no --weights: trainable BN, every layer trained (torchvision's rule)
    sd = backbone_weights(tmp_path / "w" / "checkpoint.pth")
    assert not any(".branches." in k for k in sd)
    rebuilt = build_backbone(load_arch(ARCH), sd).state_dict()
    trained = {k[len("backbone.body."):]: v for k, v in r.model.state_dict().items() if k.startswith("backbone.body.")}
    assert set(trained) <= set(rebuilt)
    for k, v in trained.items():
        assert torch.equal(rebuilt[k], v), k
    build_baseline("resnet18", sd)  # loads as plain torchvision weights too

    # from those weights: frozen BN and stem (pretrained=True), recorded in the checkpoint
    train(_cfg(synth, tmp_path / "p", epochs=1, max_steps_per_epoch=1, weights=sd), log=lambda s: None)
    ck2 = torch.load(tmp_path / "p" / "checkpoint.pth", weights_only=True)
    assert ck2["pretrained"] is True and not any(k.endswith("num_batches_tracked") for k in ck2["model"])
    model, _, meta = load_detector_checkpoint(tmp_path / "p" / "checkpoint.pth")
    assert meta["pretrained"] is True


def test_bad_trainable_layers_exits_2(synth, tmp_path, capsys):
    err = assert_exit_2(["train", ARCH, "--data", synth, "--trainable-layers", "6", "--out", tmp_path / "x"], capsys,
                        absent=[tmp_path / "x"])
    assert err == "natsdeploy: error: --trainable-layers: got '6', expected an integer in 0..5"


def test_bad_detector_option_exits_2(synth, tmp_path, capsys):
    err = assert_exit_2(["train", ARCH, "--data", synth, "--detector-option", "rpn_typo=3", "--out", tmp_path / "x"],
                        capsys, absent=[tmp_path / "x"])
    assert err.startswith("natsdeploy: error: --detector-option: got 'rpn_typo=3'")


def test_resume_under_other_settings_is_refused(synth, tmp_path):
    """A checkpoint trained from init (trainable BN) cannot be resumed as a pretrained run, nor with other heads."""
    from natsdeploy.errors import UsageError
    from tests.helpers import seeded_state_dict

    train(_cfg(synth, tmp_path / "r", epochs=1, max_steps_per_epoch=1), log=lambda s: None)
    with pytest.raises(UsageError, match=r"--resume: .*checkpoint.pth was written with pretrained=False, expected True"):
        train(_cfg(synth, tmp_path / "r", epochs=2, max_steps_per_epoch=1, resume=True,
                   weights=seeded_state_dict("resnet18")), log=lambda s: None)
    with pytest.raises(UsageError, match=r"was written with detector_kwargs=.*, expected \{\}"):
        train(_cfg(synth, tmp_path / "r", epochs=2, max_steps_per_epoch=1, resume=True, detector_kwargs={}),
              log=lambda s: None)


def test_trainable_layers_below_5_needs_weights(synth, tmp_path, capsys):
    err = assert_exit_2(["train", ARCH, "--data", synth, "--trainable-layers", "3", "--out", tmp_path / "x"], capsys,
                        absent=[tmp_path / "x"])
    assert err == ("natsdeploy: error: --trainable-layers: got 3 without --weights, expected 5 "
                   "(from the initialisation every layer trains, as in torchvision) or --weights")
