"""`natsdeploy data synth`: writes a dataset, one-line errors with exit 2 for bad flags and bad folders."""

from __future__ import annotations

import json

import pytest

from natsdeploy.cli import main
from natsdeploy.data.coco import CocoDetection
from tests.helpers import assert_exit_2

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools


def test_synth_writes_a_readable_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["data", "synth", "--out", str(out), "--images", "5", "--val-images", "2", "--size", "64x96",
            "--classes", "5", "--seed", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1
    assert printed.startswith(f"wrote {out}: train 5 images / ") and "5 classes, 64x96, seed 4" in printed
    ds = CocoDetection(out, "train")
    assert len(ds) == 5 and ds.num_classes == 5 and ds[0][0].shape == (3, 64, 96)
    info = json.loads((out / "annotations" / "instances_val.json").read_text())["info"]
    assert info["seed"] == 4 and len(CocoDetection(out, "val")) == 2


@pytest.mark.parametrize("flags, expected", [
    (["--images", "0"], "--images: got '0', expected an integer >= 1"),
    (["--images", "many"], "--images: got 'many', expected an integer >= 1"),
    (["--val-images", "-1"], "--val-images: got '-1', expected an integer >= 1"),
    (["--size", "64"], "--size: got '64', expected HxW with H and W in 32..4096"),
    (["--size", "16x64"], "--size: got '16x64', expected HxW"),
    (["--classes", "7"], "--classes: got '7', expected an integer in 1..6"),
    (["--seed", "-3"], "--seed: got '-3', expected an integer >= 0"),
    (["--max-objects", "0"], "--max-objects: got '0'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_exit_2_one_line_and_write_nothing(tmp_path, capsys, flags, expected):
    assert_exit_2(["data", "synth", "--out", tmp_path / "ds", *flags], capsys, contains=expected)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, expected", [
    (["data"], "required"),
    (["data", "synth"], "--out"),
    (["data", "bogus"], "invalid choice"),
])
def test_missing_subcommand_or_out_exits_2(capsys, args, expected):
    assert_exit_2(args, capsys, contains=expected)


def test_non_empty_out_dir_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "x.txt").write_text("keep")
    assert main(["data", "synth", "--out", str(out), "--images", "2", "--val-images", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (f"natsdeploy: error: {out}: folder is not empty; "
                   "expected a new or empty folder for the synthetic dataset\n")
    assert [p.name for p in tmp_path.iterdir()] == ["ds"] and [p.name for p in out.iterdir()] == ["x.txt"]
