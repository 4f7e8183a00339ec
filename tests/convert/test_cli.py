"""`natsdeploy convert`'s flags (natsdeploy/convert/cli.py): each bad combination is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from natsdeploy.arch import Arch, Branch, ConvTransform
from tests.conftest import REPO
from tests.helpers import assert_exit_2


@pytest.fixture
def files(tmp_path):
    arch = Arch(backbone="resnet18", convs={"layer3.0.conv1": ConvTransform((Branch((2, 2), 256),))})
    rf = tmp_path / "rf.json"
    rf.write_text(json.dumps({"search": {}, "structure": {"module.backbone.layer3.0.conv1": [2, 2]}}))
    return {"ARCH": str(arch.save(tmp_path / "arch.json")), "RF": str(rf), "OUT": str(tmp_path / "out.json"),
            "DIR": str(tmp_path)}


CASES = [
    (["--from", "rf-next", "RF", "--to", "ic-conv", "-o", "OUT"], "not allowed with argument"),
    (["RF", "--backbone", "resnet18", "-o", "OUT"], "one of the arguments --from --to is required"),
    (["--from", "rf-next", "RF", "-o", "OUT"], "--backbone: got nothing"),
    (["--from", "rf-next", "RF", "--backbone", "resnet18", "-o", "OUT", "--drop-permutation"],
     "--drop-permutation: got it without --to ic-conv"),
    (["--to", "rf-next", "ARCH", "-o", "OUT", "--drop-permutation"], "--drop-permutation"),
    (["--to", "ic-conv", "ARCH", "--backbone", "resnet50", "-o", "OUT"], "expected 'resnet18' (the arch's)"),
    (["--to", "ic-conv", "ARCH", "-o", "DIR"], "--output: got"),
    (["--to", "ic-conv", "RF", "-o", "OUT"], "search: got 'an unknown key'"),  # an RF-Next file is no arch file
    (["--from", "dilated", "RF", "--backbone", "resnet18", "-o", "OUT"], "invalid choice"),
]


@pytest.mark.parametrize("argv, text", CASES, ids=[" ".join(a[:2]) + f" {i}" for i, (a, _) in enumerate(CASES)])
def test_bad_flag_combinations_exit_2(files, capsys, argv, text):
    assert_exit_2(["convert", *[files.get(a, a) for a in argv]], capsys, contains=text, absent=[files["OUT"]])


def test_convert_runs_without_torch(files):
    """Both directions are pure Python: the console command never loads torch for them."""
    code = ("import sys; from natsdeploy.cli import main; a = sys.argv[1:]; "
            "assert main(['convert', '--from', 'rf-next', a[0], '--backbone', 'resnet18', '-o', a[1]]) == 0; "
            "assert main(['convert', '--to', 'ic-conv', a[1], '-o', a[2]]) == 0; "
            "assert main(['convert', '--to', 'rf-next', a[1], '-o', a[3]]) == 0; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    outs = [files["OUT"], files["DIR"] + "/ic.json", files["DIR"] + "/rf2.json"]
    r = subprocess.run([sys.executable, "-c", code, files["RF"], *outs], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(open(outs[2]).read())["structure"]["module.backbone.layer3.0.conv1"] == [2, 2]
