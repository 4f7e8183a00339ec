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
    """The front door: the quickstart's three commands (check, export, export --engine), each followed by its
    output, a Python example, at most ~150 lines; the longer walks live in docs/ (tests/docs runs them)."""
    assert [c.split()[1] for c in COMMANDS] == ["check", "export", "export"] and "--engine" in COMMANDS[2]
    assert _blocks("python") and len(README.splitlines()) <= 150
    assert len(_blocks("text")) == len(COMMANDS)


# lines of a shown output that hold on any CPU (counts, verdicts, audits; not timings or float errors)
_STABLE = re.compile(r"^(arch: |natsdeploy export: |  params |  MACs |  concat audit: |  engines: |verdict: |  suggestion: )")


@pytest.mark.parametrize("i", range(len(COMMANDS)))
def test_cli_example(i, monkeypatch, capsys):
    """Each quickstart command runs as printed, and the output README shows is its real output (trimmed):
    every CPU-independent line shown appears verbatim."""
    command = COMMANDS[i]
    if "../shared" in command and not ICCONV.is_dir():
        pytest.skip(f"IC-Conv patterns not found at {ICCONV}")
    monkeypatch.chdir(REPO)
    assert main(shlex.split(command)[1:]) == 0
    out = capsys.readouterr().out
    shown = [line for line in _blocks("text")[i].splitlines() if _STABLE.match(line)]
    assert shown, "the README's output block shows no stable line"
    for line in shown:
        assert line in out.splitlines(), (line, out)


@pytest.mark.parametrize("code", _blocks("python"))
def test_python_example(code, monkeypatch):
    monkeypatch.chdir(REPO)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
