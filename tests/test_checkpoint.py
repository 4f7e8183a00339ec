"""natsdeploy.checkpoint: safe loading, the declared schema, legacy files, atomic writes, and SIGKILL.

The payloads here are small (a Linear layer) but have every field and the exact types the search and
train loops write; the loops' own tests cover real checkpoints and bit-identical resume.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from natsdeploy.arch import Arch
from natsdeploy.checkpoint import (FORMATS, LEGACY_FORMATS, SCHEMAS, SEARCH, TRAIN, fit_state_dict, load_checkpoint,
                                   restore_state, save_checkpoint)
from natsdeploy.cli import main
from natsdeploy.errors import CheckpointError
from natsdeploy.runtime.rng import rng_state, set_rng_state
from tests.conftest import EXAMPLES, FAST_OPTIONS


def _states():
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return model, opt, sched, scaler


def payload(kind: str) -> dict:
    """Every key of SCHEMAS[kind], with the types the loops write."""
    model, opt, sched, scaler = _states()
    common = {"model": model.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": 1,
              "pretrained": False}
    if kind == SEARCH:
        return {**common, "opt_w": opt.state_dict(), "opt_a": opt.state_dict(), "sched": sched.state_dict(),
                "history": [{"epoch": 1, "loss_w": 0.5, "loss_a": None, "alpha_softmax": {"layer2": [0.5, 0.5]}}],
                "config": {"backbone": "resnet18", "preset": "NATS-C", "detector": "faster_rcnn", "data": "synthetic",
                           "stages": ["layer2"], "groups": 8, "channels_per_group": None, "detector_kwargs": {}},
                "credit": {"layer2.0.conv1": torch.tensor([0.9, 1.1])}}
    return {**common, "arch": Arch(backbone="resnet18").to_dict(), "detector": "faster_rcnn", "num_classes": 4,
            "label_to_cat_id": {1: 1, 2: 2, 3: 3}, "min_size": 96, "max_size": 128, "detector_kwargs": {},
            "trainable_layers": None, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "metrics": [{"epoch": 1, "AP": -1.0}], "config": {"seed": 0, "steps": [8, 11]}}


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("kind", [SEARCH, TRAIN])
def test_round_trip_is_plain_and_equal(tmp_path, kind):
    want = payload(kind)
    p = save_checkpoint(tmp_path / "ck.pth", kind, want)
    raw = torch.load(p, weights_only=True)  # nothing beyond tensors and plain containers
    assert raw["format"] == FORMATS[kind]
    ck = load_checkpoint(p, kind)
    assert set(ck) == set(want) | {"format"}
    for k, v in want["model"].items():
        assert torch.equal(ck["model"][k], v)
    assert ck["epoch"] == 1 and ck["config"] == want["config"]
    assert [f for f in os.listdir(tmp_path)] == ["ck.pth"]  # no temp file left


@pytest.mark.parametrize("kind, key", [(k, f.key) for k in (SEARCH, TRAIN) for f in SCHEMAS[k] if not f.optional])
def test_every_missing_key_is_one_line_naming_it(tmp_path, kind, key):
    ck = {"format": FORMATS[kind], **payload(kind)}
    del ck[key]
    (tmp_path / "ck.pth").write_bytes(_torch_bytes(ck))
    with pytest.raises(CheckpointError, match=rf"^--resume: .*ck.pth: key '{key}': missing, expected ") as e:
        load_checkpoint(tmp_path / "ck.pth", kind, flag="--resume")
    assert "\n" not in str(e.value)


def test_an_optional_key_may_be_absent_but_is_checked_when_present(tmp_path):
    # "credit" (the gumbel estimator's baselines) came after format /2: search checkpoints without it still load
    assert [f.key for f in SCHEMAS[SEARCH] if f.optional] == ["credit"]
    ck = {"format": FORMATS[SEARCH], **payload(SEARCH)}
    del ck["credit"]
    (tmp_path / "ck.pth").write_bytes(_torch_bytes(ck))
    assert "credit" not in load_checkpoint(tmp_path / "ck.pth", SEARCH, flag="--resume")


WRONG = [  # (kind, key, bad value, expected text)
    (TRAIN, "epoch", "2", "an int >= 0"),
    (TRAIN, "epoch", -1, "an int >= 0"),
    (TRAIN, "model", {"w": [1.0]}, "a state dict"),
    (TRAIN, "rng", {"torch": torch.zeros(3)}, "an RNG state"),
    (TRAIN, "rng", {**rng_state(), "numpy": {"keys": [0] * 10}}, "numpy"),
    (TRAIN, "arch", {"format": "natsdeploy-arch", "version": 1, "backbone": "resnet9"}, "backbone"),
    (TRAIN, "num_classes", 1, "an int >= 2"),
    (TRAIN, "label_to_cat_id", {"1": 1}, "int labels"),
    (TRAIN, "trainable_layers", 7, "0..5"),
    (TRAIN, "optimizer", {"state": {}}, "an optimizer state dict"),
    (TRAIN, "metrics", [{"AP": torch.zeros(1)}], "plain values"),
    (SEARCH, "config", {"backbone": "resnet18"}, "'preset'"),
    (SEARCH, "config", {**payload(SEARCH)["config"], "groups": 0}, "'groups'"),
    (SEARCH, "history", "none", "a list"),
    (SEARCH, "credit", {"layer2.0.conv1": [1.0]}, "a dict of conv name -> tensor"),
    (SEARCH, "pretrained", 1, "a bool"),
]


@pytest.mark.parametrize("kind, key, value, expected", WRONG, ids=[f"{k}-{key}-{i}" for i, (k, key, *_) in
                                                                    enumerate(WRONG)])
def test_wrong_field_is_one_line_naming_key_and_expectation(tmp_path, kind, key, value, expected):
    ck = {"format": FORMATS[kind], **payload(kind), key: value}
    (tmp_path / "ck.pth").write_bytes(_torch_bytes(ck))
    with pytest.raises(CheckpointError, match=rf"key '{key}': got .*expected .*{expected}") as e:
        load_checkpoint(tmp_path / "ck.pth", kind)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content, expected", [
    (b"", "cannot read"),
    (b"\x80\x04garbage" * 10, "cannot read"),
    (os.urandom(4096), "cannot read"),
    (None, "expected an existing file"),
])
def test_unreadable_files_are_one_line(tmp_path, content, expected):
    p = tmp_path / "ck.pth"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as e:
        load_checkpoint(p, TRAIN, flag="--checkpoint")
    assert str(e.value).startswith("--checkpoint: got ") and "\n" not in str(e.value)


def test_torn_file_is_refused(tmp_path):
    data = _torch_bytes({"format": FORMATS[TRAIN], **payload(TRAIN)})
    (tmp_path / "ck.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "ck.pth", TRAIN)


def test_other_kind_other_format_and_newer_version(tmp_path):
    save_checkpoint(tmp_path / "s.pth", SEARCH, payload(SEARCH))
    with pytest.raises(CheckpointError, match=", a search checkpoint, expected a train checkpoint"):
        load_checkpoint(tmp_path / "s.pth", TRAIN)
    (tmp_path / "n.pth").write_bytes(_torch_bytes({"format": "natsdeploy-train-checkpoint/9"}))
    with pytest.raises(CheckpointError, match="newer than this natsdeploy reads.*upgrade natsdeploy"):
        load_checkpoint(tmp_path / "n.pth", TRAIN)
    (tmp_path / "l.pth").write_bytes(_torch_bytes([torch.zeros(2)]))
    with pytest.raises(CheckpointError, match="holding \\[tensor"):
        load_checkpoint(tmp_path / "l.pth", TRAIN)


def _legacy_v1(kind: str) -> dict:
    """A checkpoint as natsdeploy 0.1 wrote it: numpy's RNG tuple (an ndarray), python's tuple, no 'pretrained'."""
    ck = {**payload(kind), "format": LEGACY_FORMATS[kind]}
    ck["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    del ck["pretrained"]
    if kind == TRAIN:
        del ck["trainable_layers"], ck["detector_kwargs"]
    else:
        ck["config"] = {**ck["config"], "stages": ("layer2",), "out": Path("search-out")}
    return ck


@pytest.mark.parametrize("kind", [SEARCH, TRAIN])
def test_legacy_v1_loads_safely_and_replays_its_rng(tmp_path, kind):
    np.random.seed(3)
    random.seed(4)
    old = _legacy_v1(kind)
    (tmp_path / "old.pth").write_bytes(_torch_bytes(old))
    with pytest.raises(pickle.UnpicklingError):  # not loadable with the defaults alone: numpy arrays inside
        torch.load(tmp_path / "old.pth", weights_only=True)
    ck = load_checkpoint(tmp_path / "old.pth", kind)
    assert ck["format"] == FORMATS[kind] and ck["pretrained"] is True  # 0.1 always froze BN
    expected = (np.random.rand(4), random.random())
    np.random.seed(99)
    random.seed(99)
    set_rng_state(ck["rng"])
    again = (np.random.rand(4), random.random())
    assert np.array_equal(expected[0], again[0]) and expected[1] == again[1]
    if kind == SEARCH:
        assert ck["config"]["out"] == "search-out"


class _Other:  # stands in for any object a checkpoint must not contain
    def __init__(self) -> None:
        self.x = 1


def test_legacy_v1_with_another_object_is_refused_with_the_way_forward(tmp_path):
    old = _legacy_v1(TRAIN)
    old["config"] = {"obj": _Other()}
    (tmp_path / "old.pth").write_bytes(_torch_bytes(old))
    with pytest.raises(CheckpointError, match=r"would build .*_Other.*can run code.*re-run the search or train") as e:
        load_checkpoint(tmp_path / "old.pth", TRAIN)
    assert "\n" not in str(e.value)


class _Marker:
    """Unpickling this creates `path` (what a hostile checkpoint would do with os.system)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "marker"
    evil = {"format": FORMATS[TRAIN], "x": _Marker(marker)}
    (tmp_path / "zip.pth").write_bytes(_torch_bytes(evil))
    (tmp_path / "raw.pth").write_bytes(pickle.dumps(evil, protocol=2))
    for name in ("zip.pth", "raw.pth"):
        for kind in (SEARCH, TRAIN):
            with pytest.raises(CheckpointError) as e:
                load_checkpoint(tmp_path / name, kind)
            assert "\n" not in str(e.value)
    assert not marker.exists()
    pickle.loads((tmp_path / "raw.pth").read_bytes())  # the payload is real: an unsafe load creates the marker
    assert marker.exists()


def test_off_schema_save_is_a_bug_and_writes_nothing(tmp_path):
    bad = {**payload(TRAIN), "config": {"path": Path("x")}}
    with pytest.raises(ValueError, match="key 'config'"):
        save_checkpoint(tmp_path / "ck.pth", TRAIN, bad)
    assert not any(tmp_path.iterdir())


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    p = save_checkpoint(tmp_path / "ck.pth", TRAIN, payload(TRAIN))
    before = p.read_bytes()

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        save_checkpoint(p, TRAIN, {**payload(TRAIN), "epoch": 2})
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["ck.pth"]


def test_fit_state_dict_and_restore_state_name_the_mismatch():
    model, opt, sched, _ = _states()
    sd = dict(model.state_dict())
    fit_state_dict(sd, model, where="--resume: ck")
    with pytest.raises(CheckpointError, match=r"key 'model': got 'bias' missing \(1 missing, 0 unexpected\)"):
        fit_state_dict({"weight": sd["weight"]}, model, where="--resume: ck")
    with pytest.raises(CheckpointError, match=r"got 'weight' of shape \[3, 2\], expected \[2, 3\]"):
        fit_state_dict({**sd, "weight": torch.zeros(3, 2)}, model, where="--resume: ck")
    other = torch.optim.SGD([nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))], lr=0.1).state_dict()
    other["param_groups"][0]["params"] = [0, 1, 2]
    with pytest.raises(CheckpointError, match=r"^--resume: ck: key 'optimizer': does not fit this run \(ValueError"):
        restore_state("optimizer", opt.load_state_dict, other, where="--resume: ck")


# -- interrupted runs: SIGKILL at random moments leaves only complete files ------------------------
ARCH = EXAMPLES / "resnet18_nats_c.json"


def _child(args: list[str], kill_at_replace: str | None, cwd: Path) -> None:
    """A forked child: the command as `natsdeploy` would run it, on one thread, its output discarded;
    with `kill_at_replace`, it SIGKILLs itself after that file is fully written, before it takes the old
    one's place."""
    os.chdir(cwd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    torch.set_num_threads(1)
    if kill_at_replace:
        real = os.replace

        def replace(src, dst, *a, **k):
            if os.path.basename(str(dst)) == kill_at_replace:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst, *a, **k)

        os.replace = replace
    try:
        code = main(args)
    except BaseException:  # noqa: BLE001 - a child must never return into pytest
        code = 1
    os._exit(code)


def _run(args: list[str], *, kill_after: float | None = None, kill_at_replace: str | None = None, cwd: Path) -> int:
    """Exit status of the command run in a forked process (torch already imported: a run's span is its data,
    model, steps and writes, not interpreter start-up); with `kill_after`, SIGKILL after that many seconds
    if still running. -SIGKILL when killed."""
    import multiprocessing

    proc = multiprocessing.get_context("fork").Process(target=_child, args=(args, kill_at_replace, cwd))
    proc.start()
    proc.join(timeout=600 if kill_after is None else kill_after)
    if proc.exitcode is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    return proc.exitcode


def _assert_complete(folder: Path) -> list[str]:
    """Every visible file in `folder` parses completely; hidden temporaries are the only other thing allowed."""
    import onnx

    seen = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            assert rel.parts[0].startswith((".natsdeploy-staging-", ".checkpoint.pth.", ".metrics.json.",
                                            ".report.json.")), rel  # an unfinished temp, never read
            continue
        if p.is_dir():
            continue
        seen.append(str(rel))
        if p.suffix == ".onnx":
            onnx.checker.check_model(onnx.load(str(p)))
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.name == "checkpoint.pth":
            assert load_checkpoint(p, TRAIN)["epoch"] >= 1
        else:
            raise AssertionError(f"unexpected output file {rel}")
    return seen


def _train_args(data: str, out: Path, epochs: int) -> list[str]:
    return ["train", str(ARCH), "--data", data, "--epochs", str(epochs), "--steps", "9", "--batch-size", "2",
            "--warmup-iters", "0", "--min-size", "64", "--max-size", "64", "--max-steps-per-epoch", "1",
            *FAST_OPTIONS, "--resume", "--no-progress", "--device", "cpu", "--out", str(out)]


def test_train_killed_while_writing_or_at_random_moments_leaves_complete_checkpoints(tiny_synth, tmp_path):
    out = tmp_path / "run"
    assert main(_train_args(tiny_synth, out, 1)) == 0  # epoch 1, in this process (no start-up cost)
    before = (out / "checkpoint.pth").read_bytes()
    t0 = time.perf_counter()
    rc = _run(_train_args(tiny_synth, out, 2), kill_at_replace="checkpoint.pth", cwd=tmp_path)
    span = time.perf_counter() - t0  # fork to the checkpoint's replace: a whole run on this machine
    assert rc == -signal.SIGKILL
    assert (out / "checkpoint.pth").read_bytes() == before  # the new one was written but never took its place
    _assert_complete(out)
    rng = random.Random(12)
    for epochs in (2, 3):  # each run resumes the last; killed within its span: data, model, a step, a write
        _run(_train_args(tiny_synth, out, epochs), kill_after=rng.uniform(0.3, 1.0) * span, cwd=tmp_path)
        _assert_complete(out)
        assert 1 <= load_checkpoint(out / "checkpoint.pth", TRAIN)["epoch"] <= epochs


def _export_args(out: Path, seed: int) -> list[str]:
    return ["export", str(ARCH), "--input-shape", "1x3x64x64", "--latency-pairs", "0", "--openvino", "off",
            "--seed", str(seed), "--out", str(out)]


def test_export_killed_while_writing_or_at_random_moments_leaves_complete_files(tmp_path):
    out = tmp_path / "e"
    assert main(_export_args(out, 0)) == 0
    t0 = time.perf_counter()
    rc = _run(_export_args(out, 1), kill_at_replace="baseline.onnx", cwd=tmp_path)
    span = time.perf_counter() - t0  # fork to the last file's replace: nearly a whole run
    assert rc == -signal.SIGKILL  # model.onnx already replaced, baseline.onnx not: each file old or new, whole
    assert sorted(_assert_complete(out)) == ["baseline.onnx", "model.onnx", "report.json"]
    rng = random.Random(7)
    for seed in (2, 3):  # killed at a random moment within a run's span
        _run(_export_args(out, seed), kill_after=rng.uniform(0.3, 1.0) * span, cwd=tmp_path)
        assert sorted(_assert_complete(out)) == ["baseline.onnx", "model.onnx", "report.json"]
