"""The search loop end to end on synthetic data: arch out, resume bit-identical, two-process DDP."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from natsdeploy import load_arch
from natsdeploy.cli import main
from natsdeploy.search.loop import SearchConfig, run_search, split_indices
from tests.conftest import FAST, FAST_OPTIONS
from tests.helpers import assert_exit_2

# deterministic sampling in the detector (take every anchor/proposal) so runs are comparable
DETERMINISTIC = {"rpn_batch_size_per_image": 100_000, "box_batch_size_per_image": 100_000}
# ... of FAST's fewer proposals (all of torchvision's 2000 a step make RoIAlign's backward the main cost)
DETERMINISTIC_FAST = dict(FAST, **DETERMINISTIC)


@pytest.fixture
def synth(synth_coco) -> str:
    """12 train images of 96x128 (split 6 for the weights, 6 for alpha), written once per session."""
    return synth_coco(train_images=12, val_images=2)


# layer2 and layer3 only: the loop is stage-agnostic, and layer4's 9 replicas of 2.4M-weight convs would be
# two thirds of every checkpoint (~465 MB -> ~150 MB) and of the optimiser's work (the super-net itself and
# layer4's genotypes are tested in test_supernet.py and test_planted.py)
STAGES = ("layer2", "layer3")


def _cfg(synth, out, **kw) -> SearchConfig:
    base = dict(data=synth, out=str(out), backbone="resnet18", stages=STAGES, epochs=2, warmup_epochs=1, batch_size=1,
                min_size=96, max_size=128, lr_per_image=0.002, lr_min_per_image=0.0001, groups=8,
                max_steps_per_epoch=3, progress=False, detector_kwargs=dict(DETERMINISTIC_FAST))
    base.update(kw)
    return SearchConfig(**base)


def test_split_is_deterministic_and_disjoint():
    a, b = split_indices(11, 0)
    assert sorted(a + b) == list(range(11)) and len(a) == 5
    assert split_indices(11, 0) == (a, b) and split_indices(11, 1) != (a, b)


def test_short_search_gives_an_arch_check_and_export_accept(synth, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["search", "--data", synth, "--backbone", "resnet18", "--stages", ",".join(STAGES), "--epochs", "2",
                 "--warmup-epochs", "1",
                 "--groups", "8", "--min-size", "96", "--max-size", "128", "--max-steps-per-epoch", "2",
                 "--alpha-lr", "0.5", "--out", str(out), "--no-progress", *FAST_OPTIONS]) == 0
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

    # the convergence signal: the decode after every epoch, and how many filters changed dilation since the last
    from natsdeploy.align import align_report

    e1, e2 = load_arch(out / "arch_epoch_1.json"), load_arch(out / "arch_epoch_2.json")
    assert e2.convs == arch.convs and (e1.provenance["epoch"], e2.provenance["epoch"]) == (1, 2)
    history = json.loads((out / "history.json").read_text())
    filters = sum(arch.spec.convs[n].out_channels for n in arch.spec.convs if n.split(".")[0] in STAGES)
    assert [h["filters"] for h in history] == [filters, filters] and history[0]["changed_filters"] is None
    assert history[1]["changed_filters"] == align_report(e1, e2).changed
    assert f"{history[1]['changed_filters']} of {filters} filters changed dilation since the last epoch" in \
        capsys.readouterr().out


def test_alpha_frozen_during_warmup(synth, tmp_path):
    r = run_search(_cfg(synth, tmp_path, epochs=1, warmup_epochs=1), log=lambda s: None)
    assert all(float(p.detach().abs().sum()) == 0 for n, p in r.model.named_parameters() if n.endswith(".alpha"))


def test_resume_is_bit_identical(synth, tmp_path):
    # one step an epoch: epoch 1 warms up the weights, epoch 2 steps weights and alpha (both optimisers resumed).
    # gumbel: beyond softmax's state, the replicas <-> softmax-layout hooks, the draws' RNG and the estimator's
    # baselines must all come back; 3 epochs so the resumed run steps alpha from restored baselines
    cfg = dict(sampling="gumbel", max_steps_per_epoch=1, epochs=3)
    full = run_search(_cfg(synth, tmp_path / "full", **cfg), log=lambda s: None)

    def interrupt_after_second_epoch(msg):
        if msg.startswith("epoch 2:"):  # logged after the checkpoint is written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(_cfg(synth, tmp_path / "part", **cfg), log=interrupt_after_second_epoch)
    assert not (tmp_path / "part" / "arch.json").exists()
    ck = torch.load(tmp_path / "part" / "checkpoint.pth", weights_only=True)
    assert ck["credit"] and all(v.isfinite().all() for v in ck["credit"].values())  # set by epoch 2's alpha steps
    resumed = run_search(_cfg(synth, tmp_path / "part", resume=True, **cfg), log=lambda s: None)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.history == resumed.history


def _worker(rank, world, init_file, cfgs, out_dir):
    """One gloo rank: runs each config in turn, saving its final state dict as <name>.rank<rank>.pt."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        for name, cfg_dict in cfgs.items():
            r = run_search(SearchConfig(**cfg_dict), log=lambda s: None)
            torch.save(r.model.state_dict(), os.path.join(out_dir, f"{name}.rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def gloo(synth_coco, module_tmp):
    """Two gloo ranks, spawned once for both DDP tests: a softmax run from given weights, then a gumbel run."""
    from tests.helpers import plain_model

    synth, root = synth_coco(train_images=12, val_images=2), module_tmp("gloo")
    torch.manual_seed(0)
    weights = str(root / "init.pth")
    torch.save(plain_model("resnet18").state_dict(), weights)  # torchvision's seed-0 init
    common = dict(epochs=1, warmup_epochs=0, max_steps_per_epoch=2, lr_per_image=0.01)
    cfgs = {"softmax": _cfg(synth, root / "softmax", weights=weights, detector_kwargs=dict(DETERMINISTIC_FAST),
                            **common),
            "gumbel": _cfg(synth, root / "gumbel", sampling="gumbel", tau_start=1.0, tau_end=1.0, **common)}
    # fork, not spawn: the ranks start with torch already imported (spawn re-imports it: ~8 s on AVX2 machines)
    mp.start_processes(_worker, args=(2, str(root / "init"), {k: dataclasses.asdict(c) for k, c in cfgs.items()},
                                      str(root)), nprocs=2, join=True, start_method="fork")
    ranks = {k: [torch.load(root / f"{k}.rank{r}.pt", weights_only=True) for r in (0, 1)] for k in cfgs}
    return {"weights": weights, "ranks": ranks, "softmax_out": root / "softmax"}


def test_two_process_gloo_matches_single_process(synth, tmp_path, gloo):
    # from given weights, as the paper searches: BN frozen, so a rank's batch of 1 and the single
    # process's batch of 2 see the same normalisation and the updates are comparable (with trainable
    # BN they are not: per-rank batch statistics).
    weights = gloo["weights"]
    r0, r1 = gloo["ranks"]["softmax"]
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # ranks stay identical: gradients are synchronised

    kw = dict(epochs=1, warmup_epochs=0, weights=weights, detector_kwargs=dict(DETERMINISTIC_FAST))
    single = run_search(_cfg(synth, tmp_path / "one", max_steps_per_epoch=2, lr_per_image=0.01, batch_size=2, **kw),
                        log=lambda s: None).model.state_dict()
    # same global batch: the updates agree (torchvision's losses normalise per batch, so not bit-exactly;
    # measured here: weight steps 0.5% apart, alpha first moments at most 3.4%; gradients summed instead
    # of averaged would put them 100% apart). Weights: SGD's step is linear in the gradient, so compare
    # the steps taken from the given weights.
    k = "backbone.body.layer4.1.conv2.weight"
    start = torch.load(weights, weights_only=True)["layer4.1.conv2.weight"]
    d_ddp, d_one = r0[k] - start, single[k] - start
    assert d_one.norm() > 0 and float((d_ddp - d_one).norm() / d_one.norm()) < 0.1
    # alphas: Adam's steps are ~lr * sign(gradient) at first, so a near-zero gradient component that flips
    # sign moves a step by 2 lr (measured on every stage with all proposals: alpha steps up to 20% apart
    # where the first moments were at most 2.3% apart): compare Adam's first moment, a linear function of
    # the (synchronised) gradients of both steps, and that both runs took the same steps with the same lr
    opts = [torch.load(out / "checkpoint.pth", weights_only=True)["opt_a"] for out in (gloo["softmax_out"],
                                                                                   tmp_path / "one")]
    assert opts[0]["param_groups"] == opts[1]["param_groups"]  # same lr, betas, ...: not scaled by the world size
    moments = [{i: st["exp_avg"] for i, st in opt["state"].items()} for opt in opts]
    assert all(torch.equal(opts[0]["state"][i]["step"], st["step"]) and st["step"] == 2
               for i, st in opts[1]["state"].items())  # the same number of alpha steps
    assert set(moments[0]) == set(moments[1]) and len(moments[1]) == sum(k.endswith(".alpha") for k in r0)
    for i, m_one in moments[1].items():
        assert m_one.norm() > 0
        rel = float((moments[0][i] - m_one).norm() / m_one.norm())
        assert rel < 0.1, (i, rel)
    assert all((r0[k] != 0).any() for k in r0 if k.endswith(".alpha"))  # and the DDP run stepped every alpha


@pytest.mark.parametrize("detector, options", [("retinanet", {}), ("mask_rcnn", FAST)],  # RetinaNet has no RPN
                         ids=["retinanet", "mask_rcnn"])
def test_other_detectors_search(synth, tmp_path, detector, options):
    r = run_search(_cfg(synth, tmp_path, detector=detector, epochs=1, warmup_epochs=0, max_steps_per_epoch=1,
                        detector_kwargs=dict(options)), log=lambda s: None)
    assert r.arch_path is not None and load_arch(r.arch_path).backbone == "resnet18"
    assert r.history[0]["loss_a"] is not None


def test_resume_under_other_settings_is_refused(synth, tmp_path):
    from natsdeploy.errors import UsageError

    run_search(_cfg(synth, tmp_path, epochs=1, warmup_epochs=1, max_steps_per_epoch=1), log=lambda s: None)
    with pytest.raises(UsageError, match=r"--resume: .*checkpoint.pth was written with groups=8, expected 4"):
        run_search(_cfg(synth, tmp_path, epochs=2, warmup_epochs=1, max_steps_per_epoch=1, groups=4, resume=True),
                   log=lambda s: None)


def test_gumbel_search_smoke_anneals_tau_and_records_it(synth, tmp_path, capsys):
    import json

    from natsdeploy.errors import UsageError

    out = tmp_path / "g"
    assert main(["search", "--data", synth, "--backbone", "resnet18", "--stages", ",".join(STAGES), "--epochs", "2",
                 "--warmup-epochs", "0",
                 "--groups", "16", "--min-size", "96", "--max-size", "128", "--max-steps-per-epoch", "1",
                 "--alpha-lr", "0.5", "--sampling", "gumbel", "--estimator", "st", "--tau-start", "4", "--tau-end", "1",
                 "--tau-schedule", "exp", "--align", "16", "--out", str(out), "--no-progress", *FAST_OPTIONS]) == 0
    arch = load_arch(out / "arch.json")
    assert arch.provenance["sampling"] == "gumbel" and arch.provenance["tau"] == [4.0, 1.0]
    assert arch.provenance["estimator"] == "st"
    assert all(b.channels % 16 == 0 for ct in arch.convs.values() for b in ct.branches)  # --align with gumbel
    history = json.loads((out / "history.json").read_text())
    assert [h["tau"] for h in history] == pytest.approx([4.0, 1.0])
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    assert any(v.abs().sum() > 0 for k, v in ck["model"].items() if k.endswith(".alpha"))
    with pytest.raises(UsageError, match="written with sampling='gumbel', expected 'softmax'"):
        run_search(_cfg(synth, out, epochs=3, resume=True, detector_kwargs=dict(FAST), groups=16), log=lambda s: None)
    with pytest.raises(UsageError, match="written with estimator='st', expected 'local'"):
        run_search(_cfg(synth, out, epochs=3, resume=True, detector_kwargs=dict(FAST), groups=16, sampling="gumbel"),
                   log=lambda s: None)
    assert_exit_2(["search", "--data", tmp_path, "--sampling", "gumbel", "--tau-start", "2", "--out", tmp_path / "x"],
                  capsys, contains="--tau-start: got '2' with --estimator local, expected it only with --estimator st",
                  absent=[tmp_path / "x"])
    assert_exit_2(["search", "--data", tmp_path, "--estimator", "st", "--out", tmp_path / "x"], capsys,
                  contains="--estimator: got 'st' with --sampling softmax", absent=[tmp_path / "x"])
    assert_exit_2(["search", "--data", tmp_path, "--tau-start", "2", "--out", tmp_path / "x"], capsys,
                  contains="--tau-start: got '2' with --sampling softmax", absent=[tmp_path / "x"])


def test_gumbel_two_process_gloo_ranks_stay_identical(gloo):
    # undrawn replicas get no gradient (and the ranks may draw differently): DDP must still sync
    r0, r1 = gloo["ranks"]["gumbel"]
    assert any(k.endswith(".alpha") and v.abs().sum() > 0 for k, v in r0.items())
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
