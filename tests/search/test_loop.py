"""The search loop end to end on synthetic data: arch out, resume bit-identical, two-process DDP."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.multiprocessing as mp

from natsdeploy import load_arch
from natsdeploy.cli import main
from natsdeploy.search.loop import SearchConfig, run_search, split_indices

# deterministic sampling in the detector (take every anchor/proposal) so runs are comparable
DETERMINISTIC = {"rpn_batch_size_per_image": 100_000, "box_batch_size_per_image": 100_000}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A small synthetic COCO set, generated once for the module."""
    from natsdeploy.data.synthetic import make_synthetic_coco

    root = tmp_path_factory.mktemp("synth") / "data"
    make_synthetic_coco(root, train_images=12, val_images=2, image_size=(96, 128), seed=0)
    return str(root)


def _cfg(synth, out, **kw) -> SearchConfig:
    base = dict(data=synth, out=str(out), backbone="resnet18", epochs=2, warmup_epochs=1, batch_size=1,
                min_size=96, max_size=128, lr_per_image=0.002, lr_min_per_image=0.0001, groups=8,
                max_steps_per_epoch=3, progress=False, detector_kwargs=dict(DETERMINISTIC))
    base.update(kw)
    return SearchConfig(**base)


def test_split_is_deterministic_and_disjoint():
    a, b = split_indices(11, 0)
    assert sorted(a + b) == list(range(11)) and len(a) == 5
    assert split_indices(11, 0) == (a, b) and split_indices(11, 1) != (a, b)


def test_short_search_gives_an_arch_check_and_export_accept(synth, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["search", "--data", synth, "--backbone", "resnet18", "--epochs", "2", "--warmup-epochs", "1",
                 "--groups", "8", "--min-size", "96", "--max-size", "128", "--max-steps-per-epoch", "3",
                 "--alpha-lr", "0.5", "--out", str(out), "--no-progress"]) == 0
    arch = load_arch(out / "arch.json")
    assert arch.backbone == "resnet18" and arch.provenance["search_space"] == "NATS-C"
    assert (out / "alpha.png").read_bytes()[:4] == b"\x89PNG" and (out / "checkpoint.pth").is_file()
    assert main(["check", str(out / "arch.json")]) == 0
    assert main(["export", str(out / "arch.json"), "--input-shape", "1x3x64x64", "--latency-pairs", "0",
                 "--out", str(tmp_path / "e")]) == 0
    assert main(["decode", str(out / "checkpoint.pth"), "-o", str(tmp_path / "d.json")]) == 0
    assert load_arch(tmp_path / "d.json").convs == arch.convs
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    alphas = [v for k, v in ck["model"].items() if k.endswith(".alpha")]
    assert alphas and any(a.abs().sum() > 0 for a in alphas)  # alpha moved after warm-up


def test_alpha_frozen_during_warmup(synth, tmp_path):
    r = run_search(_cfg(synth, tmp_path, epochs=1, warmup_epochs=1), log=lambda s: None)
    assert all(float(p.detach().abs().sum()) == 0 for n, p in r.model.named_parameters() if n.endswith(".alpha"))


def test_resume_is_bit_identical(synth, tmp_path):
    full = run_search(_cfg(synth, tmp_path / "full"), log=lambda s: None)
    def interrupt_after_first_epoch(msg):
        if msg.startswith("epoch 1:"):  # logged after the checkpoint is written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(_cfg(synth, tmp_path / "part"), log=interrupt_after_first_epoch)
    assert not (tmp_path / "part" / "arch.json").exists()
    resumed = run_search(_cfg(synth, tmp_path / "part", resume=True), log=lambda s: None)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.history == resumed.history


def _worker(rank, world, init_file, cfg_dict, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        r = run_search(SearchConfig(**cfg_dict), log=lambda s: None)
        torch.save(r.model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_matches_single_process(synth, tmp_path):
    # from given weights, as the paper searches: BN frozen, so a rank's batch of 1 and the single
    # process's batch of 2 see the same normalisation and the updates are comparable (with trainable
    # BN they are not: per-rank batch statistics). The weights are torchvision's seed-0 init.
    from tests.helpers import plain_model

    torch.manual_seed(0)
    weights = str(tmp_path / "init.pth")
    torch.save(plain_model("resnet18").state_dict(), weights)
    cfg = _cfg(synth, tmp_path / "ddp", epochs=1, warmup_epochs=0, max_steps_per_epoch=2, lr_per_image=0.01,
               weights=weights)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), dataclasses.asdict(cfg), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # ranks stay identical: gradients are synchronised

    single = run_search(_cfg(synth, tmp_path / "one", epochs=1, warmup_epochs=0, max_steps_per_epoch=2,
                             lr_per_image=0.01, batch_size=2, weights=weights), log=lambda s: None).model.state_dict()
    torch.manual_seed(0)
    init = run_search(_cfg(synth, tmp_path / "init0", epochs=1, warmup_epochs=0, max_steps_per_epoch=1,
                           lr_per_image=0.0, alpha_lr=0.0, weights=weights), log=lambda s: None).model.state_dict()
    # same global batch: the updates agree (torchvision's losses normalise per batch, so not bit-exactly)
    for k in [k for k in r0 if k.endswith(".alpha")] + ["backbone.body.layer4.1.conv2.weight"]:
        d_ddp, d_one = r0[k] - init[k], single[k] - init[k]
        assert d_one.norm() > 0
        rel = float((d_ddp - d_one).norm() / d_one.norm())
        assert rel < 0.1, (k, rel)


@pytest.mark.parametrize("detector", ["retinanet", "mask_rcnn"])
def test_other_detectors_search(synth, tmp_path, detector):
    r = run_search(_cfg(synth, tmp_path, detector=detector, epochs=1, warmup_epochs=0, max_steps_per_epoch=1,
                        detector_kwargs={}), log=lambda s: None)
    assert r.arch_path is not None and load_arch(r.arch_path).backbone == "resnet18"
    assert r.history[0]["loss_a"] is not None


def test_resume_under_other_settings_is_refused(synth, tmp_path):
    from natsdeploy.shapes import UsageError

    run_search(_cfg(synth, tmp_path, epochs=1, warmup_epochs=1, max_steps_per_epoch=1), log=lambda s: None)
    with pytest.raises(UsageError, match=r"--resume: .*checkpoint.pth was written with groups=8, expected 4"):
        run_search(_cfg(synth, tmp_path, epochs=2, warmup_epochs=1, max_steps_per_epoch=1, groups=4, resume=True),
                   log=lambda s: None)


def test_gumbel_search_smoke_anneals_tau_and_records_it(synth, tmp_path, capsys):
    import json

    from natsdeploy.shapes import UsageError

    out = tmp_path / "g"
    assert main(["search", "--data", synth, "--backbone", "resnet18", "--epochs", "2", "--warmup-epochs", "0",
                 "--groups", "16", "--min-size", "96", "--max-size", "128", "--max-steps-per-epoch", "1",
                 "--alpha-lr", "0.5", "--sampling", "gumbel", "--tau-start", "4", "--tau-end", "1",
                 "--tau-schedule", "exp", "--align", "16", "--out", str(out), "--no-progress"]) == 0
    arch = load_arch(out / "arch.json")
    assert arch.provenance["sampling"] == "gumbel" and arch.provenance["tau"] == [4.0, 1.0]
    assert all(b.channels % 16 == 0 for ct in arch.convs.values() for b in ct.branches)  # --align with gumbel
    history = json.loads((out / "history.json").read_text())
    assert [h["tau"] for h in history] == pytest.approx([4.0, 1.0])
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    assert any(v.abs().sum() > 0 for k, v in ck["model"].items() if k.endswith(".alpha"))
    with pytest.raises(UsageError, match="written with sampling='gumbel', expected 'softmax'"):
        run_search(_cfg(synth, out, epochs=3, resume=True, detector_kwargs={}, groups=16), log=lambda s: None)
    assert main(["search", "--tau-start", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--tau-start: got '2' with --sampling softmax" in capsys.readouterr().err


def test_gumbel_two_process_gloo_ranks_stay_identical(synth, tmp_path):
    # undrawn replicas get no gradient (and the ranks may draw differently): DDP must still sync
    cfg = _cfg(synth, tmp_path / "ddp", epochs=1, warmup_epochs=0, max_steps_per_epoch=2, lr_per_image=0.01,
               sampling="gumbel", tau_start=1.0, tau_end=1.0)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), dataclasses.asdict(cfg), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert any(k.endswith(".alpha") and v.abs().sum() > 0 for k, v in r0.items())
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
