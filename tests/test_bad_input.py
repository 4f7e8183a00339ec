"""Every subcommand x every class of bad input it takes: exit 2, one line on stderr, no traceback, no files.

Classes: missing file, garbage bytes, wrong schema, out-of-range numbers, data too small for the batch,
an IC-Conv pattern file where an arch file is expected. Then hostile checkpoints and weights (a pickle
that would create a marker file: it never appears), and `--help` without torch.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from natsdeploy.checkpoint import FORMATS, SEARCH, TRAIN
from tests.conftest import EXAMPLES, REPO
from tests.helpers import assert_exit_2

ARCH = str(EXAMPLES / "resnet18_nats_c.json")
SMALL_SEARCH = ["--backbone", "resnet18", "--groups", "8", "--epochs", "1", "--warmup-epochs", "0", "--min-size", "64",
                "--max-size", "64", "--max-steps-per-epoch", "1", "--device", "cpu", "--no-progress"]
SMALL_TRAIN = ["--epochs", "1", "--min-size", "64", "--max-size", "64", "--max-steps-per-epoch", "1", "--device", "cpu",
               "--no-progress"]


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _file(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


def _resume_dir(path: Path, content: bytes) -> str:
    path.mkdir()
    (path / "checkpoint.pth").write_bytes(content)
    return str(path)


@pytest.fixture
def inputs(tmp_path, tiny_synth) -> dict[str, str]:
    """The bad inputs, written under tmp_path/in; OUT (tmp_path/out) must never appear. SYNTH: conftest's tiny_synth."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "empty_data" / "train").mkdir(parents=True)
    (d / "full").mkdir()
    (d / "full" / "keep.txt").write_text("x")
    train_nokeys = _bytes({"format": FORMATS[TRAIN], "epoch": 1})  # the right tag, the keys missing
    search_nokeys = _bytes({"format": FORMATS[SEARCH], "epoch": 1})
    return {
        "ARCH": ARCH, "SYNTH": tiny_synth, "OUT": str(tmp_path / "out"), "MISSING": str(d / "missing.json"),
        "NODATA": str(d / "no_such_folder"), "EMPTYDATA": str(d / "empty_data"), "FULL": str(d / "full"),
        "GARBAGE": _file(d / "garbage.bin", b"\x80\xfe\xff\x00" + bytes(range(256)) * 4),
        "WRONG": _file(d / "wrong.json", json.dumps({"hello": "world"}).encode()),
        "PATTERN": _file(d / "pattern.json", json.dumps([{"(0, 0)": 64}, {"(1, 1)": 64}]).encode()),  # IC-Conv
        "LISTPTH": _file(d / "list.pth", _bytes([torch.zeros(2), 3])),
        "TRAIN_NOKEYS": _file(d / "train_nokeys.pth", train_nokeys),
        "SEARCH_NOKEYS": _file(d / "search_nokeys.pth", search_nokeys),
        "RESUME_GARBAGE": _resume_dir(d / "resume_garbage", b"PK\x03\x04 not a zip"),
        "RESUME_TRAIN_NOKEYS": _resume_dir(d / "resume_train_nokeys", train_nokeys),
        "RESUME_SEARCH_NOKEYS": _resume_dir(d / "resume_search_nokeys", search_nokeys),
    }


HINT = "natsdeploy convert --from ic-conv"
CASES = [  # (id, argv with placeholders, text the one line must contain)
    ("check-missing", ["check", "MISSING"], "expected an existing file"),
    ("check-garbage", ["check", "GARBAGE"], "undecodable bytes"),
    ("check-schema", ["check", "WRONG"], "hello"),
    ("check-pattern", ["check", "PATTERN"], HINT),
    ("check-range", ["check", "ARCH", "--input-shape", "0x3x64x64"], "--input-shape"),
    ("align-missing", ["align", "MISSING", "--multiple", "8", "-o", "OUT/a.json"], "expected an existing file"),
    ("align-pattern", ["align", "PATTERN", "--multiple", "8", "-o", "OUT/a.json"], HINT),
    ("align-range", ["align", "ARCH", "--multiple", "0", "-o", "OUT/a.json"], "--multiple"),
    ("convert-missing", ["convert", "--from", "ic-conv", "MISSING", "--backbone", "resnet18", "-o", "OUT/a.json"],
     "expected an existing file"),
    ("convert-garbage", ["convert", "--from", "ic-conv", "GARBAGE", "--backbone", "resnet18", "-o", "OUT/a.json"],
     "invalid JSON"),
    ("convert-schema", ["convert", "--from", "ic-conv", "ARCH", "--backbone", "resnet18", "-o", "OUT/a.json"],
     "expected a JSON list"),
    ("convert-length", ["convert", "--from", "ic-conv", "PATTERN", "--backbone", "resnet18", "-o", "OUT/a.json"],
     "entries"),
    ("convert-backbone", ["convert", "--from", "ic-conv", "PATTERN", "--backbone", "resnet9", "-o", "OUT/a.json"],
     "--backbone"),
    ("export-missing", ["export", "MISSING", "--out", "OUT"], "expected an existing file"),
    ("export-garbage", ["export", "GARBAGE", "--out", "OUT"], "undecodable bytes"),
    ("export-schema", ["export", "WRONG", "--out", "OUT"], "hello"),
    ("export-pattern", ["export", "PATTERN", "--out", "OUT"], HINT),
    ("export-range", ["export", "ARCH", "--latency-pairs", "-1", "--out", "OUT"], "--latency-pairs"),
    ("export-weights-missing", ["export", "ARCH", "--weights", "MISSING", "--out", "OUT"], "existing .pth"),
    ("export-weights-garbage", ["export", "ARCH", "--weights", "GARBAGE", "--out", "OUT"], "cannot read"),
    ("export-weights-schema", ["export", "ARCH", "--weights", "LISTPTH", "--out", "OUT"], "holding list"),
    ("bench-missing", ["bench", "MISSING", "--json", "OUT/b.json"], "expected an existing file"),
    ("bench-pattern", ["bench", "PATTERN", "--json", "OUT/b.json"], HINT),
    ("bench-range", ["bench", "ARCH", "--runs", "0", "--json", "OUT/b.json"], "--runs"),
    ("bench-weights-garbage", ["bench", "ARCH", "--backend", "ort", "--input-shape", "1x3x64x64", "--runs", "1",
                               "--warmup-s", "0", "--weights", "GARBAGE", "--json", "OUT/b.json"], "cannot read"),
    ("search-data-missing", ["search", "--data", "NODATA", "--out", "OUT", *SMALL_SEARCH], "--data"),
    ("search-data-schema", ["search", "--data", "EMPTYDATA", "--out", "OUT", *SMALL_SEARCH], "annotation"),
    ("search-range", ["search", "--data", "SYNTH", "--epochs", "0", "--out", "OUT", *SMALL_SEARCH[:4]], "--epochs"),
    ("search-batch", ["search", "--data", "SYNTH", "--batch-size", "8", "--out", "OUT", *SMALL_SEARCH], "--batch-size"),
    ("search-weights-missing", ["search", "--data", "SYNTH", "--weights", "MISSING", "--out", "OUT", *SMALL_SEARCH],
     "existing .pth"),
    ("search-weights-garbage", ["search", "--data", "SYNTH", "--weights", "GARBAGE", "--out", "OUT", *SMALL_SEARCH],
     "cannot read"),
    ("search-weights-schema", ["search", "--data", "SYNTH", "--weights", "LISTPTH", "--out", "OUT", *SMALL_SEARCH],
     "holding list"),
    ("search-resume-garbage", ["search", "--data", "SYNTH", "--resume", "--out", "RESUME_GARBAGE", *SMALL_SEARCH],
     "--resume: got"),
    ("search-resume-schema", ["search", "--data", "SYNTH", "--resume", "--out", "RESUME_SEARCH_NOKEYS", *SMALL_SEARCH],
     "key 'model': missing"),
    ("search-resume-kind", ["search", "--data", "SYNTH", "--resume", "--out", "RESUME_TRAIN_NOKEYS", *SMALL_SEARCH],
     ", a train checkpoint, expected a search"),
    ("decode-missing", ["decode", "MISSING", "-o", "OUT/a.json"], "expected an existing file"),
    ("decode-garbage", ["decode", "GARBAGE", "-o", "OUT/a.json"], "cannot read"),
    ("decode-json", ["decode", "ARCH", "-o", "OUT/a.json"], "cannot read"),
    ("decode-schema", ["decode", "SEARCH_NOKEYS", "-o", "OUT/a.json"], "key 'model': missing"),
    ("decode-list", ["decode", "LISTPTH", "-o", "OUT/a.json"], "holding [tensor"),
    ("decode-kind", ["decode", "TRAIN_NOKEYS", "-o", "OUT/a.json"], ", a train checkpoint, expected a search"),
    ("data-range", ["data", "synth", "--out", "OUT", "--images", "0"], "--images"),
    ("data-size", ["data", "synth", "--out", "OUT", "--size", "8x8"], "--size"),
    ("data-nonempty", ["data", "synth", "--out", "FULL", "--images", "2", "--val-images", "1"], "FULL"),
    ("erf-missing", ["erf", "MISSING", "-o", "OUT/e.png"], "expected an existing file"),
    ("erf-pattern", ["erf", "PATTERN", "-o", "OUT/e.png"], HINT),
    ("erf-range", ["erf", "ARCH", "--input-size", "8", "-o", "OUT/e.png"], "--input-size"),
    ("erf-share", ["erf", "ARCH", "--share", "1.5", "-o", "OUT/e.png"], "--share"),
    ("erf-weights-garbage", ["erf", "ARCH", "--input-size", "64", "--weights", "GARBAGE", "-o", "OUT/e.png"],
     "cannot read"),
    ("train-missing", ["train", "MISSING", "--data", "SYNTH", "--out", "OUT", *SMALL_TRAIN],
     "expected an existing file"),
    ("train-garbage", ["train", "GARBAGE", "--data", "SYNTH", "--out", "OUT", *SMALL_TRAIN], "undecodable bytes"),
    ("train-schema", ["train", "WRONG", "--data", "SYNTH", "--out", "OUT", *SMALL_TRAIN], "hello"),
    ("train-pattern", ["train", "PATTERN", "--data", "SYNTH", "--out", "OUT", *SMALL_TRAIN], HINT),
    ("train-data-missing", ["train", "ARCH", "--data", "NODATA", "--out", "OUT", *SMALL_TRAIN], "--data"),
    ("train-data-schema", ["train", "ARCH", "--data", "EMPTYDATA", "--out", "OUT", *SMALL_TRAIN], "annotation"),
    ("train-range", ["train", "ARCH", "--data", "SYNTH", "--epochs", "0", "--out", "OUT"], "--epochs"),
    ("train-batch", ["train", "ARCH", "--data", "SYNTH", "--batch-size", "8", "--out", "OUT", *SMALL_TRAIN],
     "--batch-size"),
    ("train-weights-garbage", ["train", "ARCH", "--data", "SYNTH", "--weights", "GARBAGE", "--out", "OUT",
                               *SMALL_TRAIN], "cannot read"),
    ("train-weights-schema", ["train", "ARCH", "--data", "SYNTH", "--weights", "LISTPTH", "--out", "OUT",
                              *SMALL_TRAIN], "holding list"),
    ("train-resume-garbage", ["train", "ARCH", "--data", "SYNTH", "--resume", "--out", "RESUME_GARBAGE",
                              *SMALL_TRAIN], "--resume: got"),
    ("train-resume-schema", ["train", "ARCH", "--data", "SYNTH", "--resume", "--out", "RESUME_TRAIN_NOKEYS",
                             *SMALL_TRAIN], "key 'model': missing"),
    ("train-resume-kind", ["train", "ARCH", "--data", "SYNTH", "--resume", "--out", "RESUME_SEARCH_NOKEYS",
                           *SMALL_TRAIN], ", a search checkpoint, expected a train"),
    ("parity-missing", ["parity", "MISSING", "--checkpoint", "TRAIN_NOKEYS", "--data", "SYNTH"],
     "expected an existing file"),
    ("parity-pattern", ["parity", "PATTERN", "--checkpoint", "TRAIN_NOKEYS", "--data", "SYNTH"], HINT),
    ("parity-ckpt-missing", ["parity", "ARCH", "--checkpoint", "MISSING", "--data", "SYNTH"],
     "expected an existing file"),
    ("parity-ckpt-garbage", ["parity", "ARCH", "--checkpoint", "GARBAGE", "--data", "SYNTH"], "cannot read"),
    ("parity-ckpt-schema", ["parity", "ARCH", "--checkpoint", "TRAIN_NOKEYS", "--data", "SYNTH"],
     "key 'model': missing"),
    ("parity-ckpt-kind", ["parity", "ARCH", "--checkpoint", "SEARCH_NOKEYS", "--data", "SYNTH"],
     ", a search checkpoint, expected a train"),
    ("parity-range", ["parity", "ARCH", "--checkpoint", "TRAIN_NOKEYS", "--data", "SYNTH", "--limit", "0",
                      "--json", "OUT/p.json"], "--limit"),
]


def _argv(args: list[str], inputs: dict[str, str]) -> list[str]:
    out = []
    for a in args:
        head, sep, tail = a.partition("/")
        out.append(inputs[head] + sep + tail if head in inputs else a)
    return out


@pytest.mark.parametrize("args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_no_files(inputs, tmp_path, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(tmp_path)  # a stray write to the working folder would show in the snapshot too
    # no output files, nothing touched
    assert_exit_2(_argv(args, inputs), capsys, contains=_argv([expected], inputs)[0], unchanged=tmp_path)


SUBPROCESS = ["check-pattern", "decode-schema", "search-batch", "parity-ckpt-schema", "train-weights-garbage"]


@pytest.mark.parametrize("case", SUBPROCESS)
def test_console_command_prints_one_line_and_no_traceback(inputs, tmp_path, case):
    """The real process: warnings, logging and tracebacks would show on its stderr."""
    _, args, expected = next(c for c in CASES if c[0] == case)
    assert_exit_2(_argv(args, inputs), contains=expected, unchanged=tmp_path, process=True, cwd=tmp_path)


# -- hostile files: a pickle that would create a marker file -------------------------------------
class _Marker:
    """Unpickling this creates `path`, as a hostile checkpoint would run os.system."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


HOSTILE = [  # argv with EVIL (the file) or EVILDIR (a folder holding it as checkpoint.pth)
    ("decode", ["decode", "EVIL", "-o", "OUT/a.json"]),
    ("parity", ["parity", "ARCH", "--checkpoint", "EVIL", "--data", "SYNTH"]),
    ("train-resume", ["train", "ARCH", "--data", "SYNTH", "--resume", "--out", "EVILDIR", *SMALL_TRAIN]),
    ("search-resume", ["search", "--data", "SYNTH", "--resume", "--out", "EVILDIR", *SMALL_SEARCH]),
    ("train-weights", ["train", "ARCH", "--data", "SYNTH", "--weights", "EVIL", "--out", "OUT", *SMALL_TRAIN]),
    ("search-weights", ["search", "--data", "SYNTH", "--weights", "EVIL", "--out", "OUT", *SMALL_SEARCH]),
    ("export-weights", ["export", "ARCH", "--weights", "EVIL", "--out", "OUT"]),
    ("erf-weights", ["erf", "ARCH", "--input-size", "64", "--weights", "EVIL", "-o", "OUT/e.png"]),
]


@pytest.mark.parametrize("form", ["torch-zip", "raw-pickle"])
@pytest.mark.parametrize("args", [h[1] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_pickle_never_runs(inputs, tmp_path, monkeypatch, capsys, args, form):
    marker = tmp_path / "marker"
    evil = {"format": FORMATS[TRAIN], "model": _Marker(str(marker))}
    data = _bytes(evil) if form == "torch-zip" else pickle.dumps(evil, protocol=2)
    (tmp_path / "evil.pth").write_bytes(data)
    (tmp_path / "evildir").mkdir()
    (tmp_path / "evildir" / "checkpoint.pth").write_bytes(data)
    paths = {**inputs, "EVIL": str(tmp_path / "evil.pth"), "EVILDIR": str(tmp_path / "evildir")}
    monkeypatch.chdir(tmp_path)
    assert_exit_2(_argv(args, paths), capsys, absent=[marker, inputs["OUT"]])


def test_the_hostile_payload_is_real(tmp_path):
    """An unsafe load of the same bytes does create the marker (so the test above has teeth)."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps({"model": _Marker(str(marker))}, protocol=2))
    assert marker.exists()


# -- --help answers without importing torch --------------------------------------------------------
HELP = """
import contextlib, io, json, sys
from natsdeploy.cli import build_parser
for argv in json.loads(sys.argv[1]):  # each --help in turn; torch must still be absent after each
    with contextlib.redirect_stdout(io.StringIO()) as shown:
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
    assert "usage:" in shown.getvalue(), argv
    assert "torch" not in sys.modules, (argv, sorted(m for m in sys.modules if m.startswith("torch")))
print("ok")
"""


def test_help_does_not_import_torch():
    import natsdeploy.cli as cli

    commands = sorted(cli.build_parser()._subparsers._group_actions[0].choices)  # every subcommand, as registered
    argvs = [["--help"]] + [[c, "--help"] for c in commands] + [["data", "synth", "--help"]]
    r = subprocess.run([sys.executable, "-c", HELP, json.dumps(argvs)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)  # one process: each help ~0.3 s
    assert r.returncode == 0 and r.stdout.rstrip().endswith("ok"), r.stderr[-2000:]
