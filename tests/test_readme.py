"""The README's examples run as written (from the repository root)."""

from __future__ import annotations

import re
import shlex

import pytest

from natsdeploy.cli import main
from tests.conftest import ICCONV, REPO

README = (REPO / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.fixture(scope="module", autouse=True)
def _fresh_readme_outputs():
    """The examples write under out/readme (~1 GB): start empty so reruns behave like a fresh clone, and clean up."""
    import shutil

    shutil.rmtree(REPO / "out" / "readme", ignore_errors=True)
    yield
    shutil.rmtree(REPO / "out" / "readme", ignore_errors=True)


COMMANDS = [line for block in _blocks("bash") for line in block.splitlines() if line.startswith("natsdeploy ")]


def test_readme_has_examples():
    assert len(COMMANDS) >= 4 and _blocks("python")


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_example(command, monkeypatch, capsys):
    if "../shared" in command and not ICCONV.is_dir():
        pytest.skip(f"IC-Conv patterns not found at {ICCONV}")
    monkeypatch.chdir(REPO)
    assert main(shlex.split(command)[1:]) == 0
    assert capsys.readouterr().out


@pytest.mark.parametrize("code", _blocks("python"))
def test_python_example(code, monkeypatch):
    monkeypatch.chdir(REPO)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
