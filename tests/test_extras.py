"""Optional dependencies: a command the user asked for whose extra is missing exits 2 with one line naming
`pip install "natsdeploy[EXTRA]"`, before any work or output (each package blocked in this process with
`sys.modules[name] = None`, as an install without it would fail to import it)."""

from __future__ import annotations

import sys

import pytest

from natsdeploy.errors import UsageError
from natsdeploy.extras import available, install_command, require, skipped_line
from tests.conftest import EXAMPLES
from tests.helpers import assert_exit_2

ARCH = str(EXAMPLES / "resnet18_nats_c.json")


def test_available_tells_an_importable_module_from_a_missing_or_blocked_one(monkeypatch):
    assert available("json") and available("numpy")
    assert not available("natsdeploy_no_such_module")
    monkeypatch.setitem(sys.modules, "numpy", None)
    assert not available("numpy")


def test_require_is_one_line_naming_the_extra(monkeypatch):
    require("json", "nothing", "anything")  # importable: returns
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(UsageError) as e:
        require("pycocotools", "coco", "parity")
    msg = str(e.value)
    assert msg == 'parity: got no pycocotools module, expected the coco extra: pip install "natsdeploy[coco]"'
    assert "\n" not in msg and install_command("coco") in msg


def test_skipped_line():
    assert skipped_line("OpenVINO", "openvino") == ('OpenVINO: skipped (the openvino extra is not installed: '
                                                    'pip install "natsdeploy[openvino]")')


# (blocked module, extra, argv with OUT for a path that must not be written, text the line names)
ASKED = [
    ("pycocotools", "coco", ["data", "synth", "--out", "OUT"], "data synth"),
    ("pycocotools", "coco", ["train", ARCH, "--data", "synthetic", "--out", "OUT"], "train"),
    ("pycocotools", "coco", ["search", "--data", "synthetic", "--backbone", "resnet18", "--out", "OUT"], "search"),
    ("matplotlib", "plot", ["search", "--data", "synthetic", "--backbone", "resnet18", "--out", "OUT"], "search (its alpha.png)"),
    ("pycocotools", "coco", ["parity", ARCH, "--checkpoint", "OUT/ckpt.pth", "--data", "synthetic", "--json", "OUT"],
     "parity"),
    ("pycocotools", "coco", ["export", ARCH, "--precision", "int8", "--calibration", "synthetic", "--out", "OUT"],
     "--calibration synthetic (a COCO-format set)"),
    ("openvino", "openvino", ["bench", ARCH, "--backend", "ort", "openvino", "--json", "OUT"], "--backend openvino"),
    ("matplotlib", "plot", ["bench", ARCH, "--backend", "ort", "--plot", "OUT"], "--plot"),
    ("matplotlib", "plot", ["erf", ARCH, "-o", "OUT"], "erf (its PNG)"),
    ("openvino", "openvino", ["export", ARCH, "--openvino", "bf16", "--out", "OUT"], "--openvino bf16"),
]


@pytest.mark.parametrize("module, extra, argv, feature", ASKED, ids=[f"{a[2][0]}-{a[0]}" for a in ASKED])
def test_asked_for_without_its_extra_exits_2_and_writes_nothing(module, extra, argv, feature, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "out"
    err = assert_exit_2([str(out) if a == "OUT" else a.replace("OUT/", f"{out}/") for a in argv], capsys,
                        contains=[f"{feature}: got no {module} module", f'pip install "natsdeploy[{extra}]"'],
                        absent=[out], unchanged=tmp_path)
    assert err.count("pip install") == 1


def test_parity_backend_openvino_without_the_extra_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert_exit_2(["parity", ARCH, "--checkpoint", str(tmp_path / "c.pth"), "--data", "synthetic", "--backend",
                   "openvino"], capsys, contains=['--backend openvino: got no openvino module',
                                                  'pip install "natsdeploy[openvino]"'], unchanged=tmp_path)
