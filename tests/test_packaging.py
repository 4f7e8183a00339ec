"""Packaging: the wheel built from a clean copy of the tree builds without a deprecation warning, ships the
example archs and the schema, and, installed on its own (no source tree importable), runs the core commands,
also with every optional package blocked (the core install: no openvino, pycocotools, matplotlib, TensorRT)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
OPTIONAL = ("openvino", "pycocotools", "matplotlib", "tensorrt", "tensorrt_rtx", "fvcore", "timm")
CPU_EXTRAS = ("openvino", "coco", "plot", "trt-rtx")  # what `all` unites (not trt: a GPU machine's; not gpu)


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


def test_core_dependencies_leave_the_optional_packages_to_extras():
    project = PYPROJECT["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert {"torch", "torchvision", "numpy", "onnx", "onnxruntime", "safetensors", "tqdm", "pillow"} <= core
    assert core.isdisjoint({"openvino", "pycocotools", "matplotlib", "fvcore", "timm", "tensorrt",
                            "tensorrt-rtx-cu12", "onnxruntime-gpu"})
    extras = project["optional-dependencies"]
    assert {_name(r) for r in extras["openvino"]} == {"openvino"}
    assert {_name(r) for r in extras["coco"]} == {"pycocotools"}
    assert {_name(r) for r in extras["plot"]} == {"matplotlib"}
    assert extras["trt-rtx"] == ["tensorrt-rtx-cu12==1.7.1.116"] and {_name(r) for r in extras["trt"]} == {"tensorrt"}
    assert sorted(extras["all"]) == sorted(r for e in CPU_EXTRAS for r in extras[e])
    assert {"pytest", "hypothesis", "jsonschema", "mkdocs", "mkdocs-material", "build", "fvcore", "timm"} <= {
        _name(r) for r in extras["dev"]}


def test_license_is_an_spdx_string_and_setuptools_new_enough_for_it():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]


def _clean_copy(dest: Path) -> Path:
    """The files git would commit (tracked, and untracked but not ignored): no build/, egg-info or caches."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                                capture_output=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: what the wheel is built from
        listed = ["pyproject.toml", "README.md"] + [str(p.relative_to(REPO)) for p in (REPO / "natsdeploy").rglob("*")
                                                    if p.is_file() and "__pycache__" not in p.parts]
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


@pytest.fixture(scope="module")
def installed(module_tmp):
    """The wheel built from a clean copy (setuptools from this environment, no network), its build log, and
    the folder it is installed in with `pip install --no-deps --target`."""
    pytest.importorskip("build", reason="the `build` package (dev extra) builds the wheel")
    root = module_tmp("packaging")
    src = _clean_copy(root / "src")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # it makes distutils warn
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(root / "dist"),
                            str(src)], cwd=src, env=env, capture_output=True, text=True, timeout=300)
    log = built.stdout + built.stderr
    assert built.returncode == 0, log[-3000:]
    wheel = next((root / "dist").glob("natsdeploy-*.whl"))
    site = root / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile",
                          "--disable-pip-version-check", "-q", "--target", str(site), str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    elsewhere = root / "elsewhere"  # the working directory: not the source tree, so only the install imports
    elsewhere.mkdir()
    return {"log": log, "wheel": wheel, "site": site, "cwd": elsewhere}


def _run(installed, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed["site"])}
    return subprocess.run(list(argv), cwd=installed["cwd"], env=env, capture_output=True, text=True, timeout=timeout)


def test_build_prints_no_deprecation_or_other_warning(installed):
    lines = [ln for ln in installed["log"].splitlines() if not ln.startswith(("copying ", "adding '"))]
    assert [ln for ln in lines if re.search(r"warn|deprecat", ln, re.I)] == []


def test_wheel_ships_the_schema_and_examples_and_nothing_else(installed):
    with zipfile.ZipFile(installed["wheel"]) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {"natsdeploy/arch.schema.json", "natsdeploy/examples/resnet18_nats_c.json",
            "natsdeploy/examples/resnet50_nats_c.json", "natsdeploy/extras.py"} <= names
    assert {n.split("/")[0] for n in names if not n.startswith("natsdeploy-")} == {"natsdeploy"}  # no tests/
    assert "License-Expression: Apache-2.0" in meta
    unconditional = {_name(ln.split(":", 1)[1].strip()) for ln in meta.splitlines()
                     if ln.startswith("Requires-Dist:") and "extra ==" not in ln}
    assert unconditional == {_name(r) for r in PYPROJECT["project"]["dependencies"]}


def test_installed_wheel_runs_help_check_example_and_schema(installed):
    site = installed["site"]
    where = _run(installed, sys.executable, "-c", "import natsdeploy; print(natsdeploy.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout  # the install, not the source tree
    help_ = _run(installed, sys.executable, "-m", "natsdeploy.cli", "--help")
    assert help_.returncode == 0 and "check" in help_.stdout and not help_.stderr, help_.stderr
    if "--version" in help_.stdout:
        version = _run(installed, sys.executable, "-m", "natsdeploy.cli", "--version")
        assert version.returncode == 0 and PYPROJECT["project"]["version"] in version.stdout + version.stderr
    check = _run(installed, str(site / "bin" / "natsdeploy"), "check", "--example", "resnet50-nats-c")  # the script
    assert check.returncode == 0 and "verdict: equal" in check.stdout, check.stdout + check.stderr
    assert str(site / "natsdeploy" / "examples" / "resnet50_nats_c.json") in check.stdout
    schema = _run(installed, sys.executable, "-m", "natsdeploy.cli", "check", "--schema")
    assert schema.returncode == 0 and json.loads(schema.stdout) == json.loads(
        (REPO / "natsdeploy" / "arch.schema.json").read_text())


# Runs `natsdeploy` commands in one interpreter with every optional package blocked, as a core-only install
# would lack them; prints each one's exit status and output as JSON (a traceback fails the process).
CORE_ONLY = """
import contextlib, io, json, sys
for name in {blocked!r}:
    sys.modules[name] = None
import natsdeploy
from natsdeploy.cli import main
from natsdeploy.examples import example_path
ex = str(example_path("resnet18-nats-c"))
runs = []
for argv in json.loads(sys.argv[1]):
    argv = [ex if a == "EX" else a for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    runs.append({{"argv": argv, "rc": rc, "out": out.getvalue(), "err": err.getvalue()}})
print(json.dumps({{"file": natsdeploy.__file__, "runs": runs}}))
"""


def test_core_only_install_runs_the_core_and_names_the_missing_extras(installed, tmp_path):
    out = tmp_path / "out"
    argvs = [
        ["check", "--example", "resnet18-nats-c", "--input-shape", "1x3x64x64"],
        ["align", "EX", "--multiple", "16", "-o", str(out / "aligned.json")],
        ["convert", "--to", "ic-conv", "EX", "--drop-permutation", "-o", str(out / "icconv.json")],
        ["export", "EX", "--input-shape", "1x3x64x96", "--latency-pairs", "0", "--out", str(out / "export")],
        ["bench", "EX", "--backend", "torch", "ort", "--input-shape", "1x3x64x64", "--runs", "1", "--warmup-s", "0"],
        ["parity", "EX", "--checkpoint", str(out / "checkpoint.pth"), "--data", "synthetic"],
        ["data", "synth", "--out", str(out / "synth")],
    ]
    r = _run(installed, sys.executable, "-c", CORE_ONLY.format(blocked=OPTIONAL), json.dumps(argvs))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.splitlines()[-1])
    assert Path(result["file"]).is_relative_to(installed["site"])
    check, align, convert, export, bench, parity, synth = result["runs"]
    for ok in (check, align, convert, export, bench):
        assert ok["rc"] == 0, ok
    assert "verdict: equal" in check["out"]
    assert (out / "aligned.json").is_file() and (out / "icconv.json").is_file()
    line = 'OpenVINO: skipped (the openvino extra is not installed: pip install "natsdeploy[openvino]")'
    assert [ln.strip() for ln in export["out"].splitlines() if "OpenVINO" in ln] == [line]
    assert "parity vs PyTorch (onnxruntime" in export["out"] and "verdict: PASS" in export["out"]
    report = json.loads((out / "export" / "report.json").read_text())
    assert report["parity"]["model"]["passed"] and report["parity"]["openvino"] == {"skipped": line}
    assert [ln.split()[0] for ln in bench["out"].splitlines() if " (ratio " in ln] == ["torch", "ort"]  # verdicts
    for refused, extra in ((parity, "coco"), (synth, "coco")):
        assert refused["rc"] == 2 and refused["err"].count("\n") == 1, refused
        assert f'pip install "natsdeploy[{extra}]"' in refused["err"] and "Traceback" not in refused["err"]
    assert not (out / "synth").exists() and not (out / "checkpoint.pth").exists()
