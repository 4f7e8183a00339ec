"""The documentation site builds under `mkdocs build --strict` (broken links, anchors or pages out of nav fail)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
                    reason="mkdocs and mkdocs-material are not installed (pip install mkdocs mkdocs-material)")
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                          "-d", str(site)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    for page in ("index.html", "getting-started/index.html", "arch-format/index.html", "cli/index.html",
                 "troubleshooting/index.html"):
        assert (site / page).is_file(), page
    assert not (site / "gen_cli.py").exists()  # the generator is excluded from the site
