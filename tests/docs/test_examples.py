"""The docs' examples work as printed: commands run (or, for the long jobs, parse), arch files validate, Python runs.

Fences decide what runs: every `natsdeploy ...` line of a ```bash block runs through `natsdeploy.cli.main` from
the repository root and must exit 0; ```shell blocks hold the long jobs (search, train, detector parity: minutes
each, run at the same sizes by tests/test_readme.py), whose lines must parse with the real parser; ```python
blocks run; ```json blocks that are complete arch files (no "...") validate. A page's blocks run in document
order in one test, so a command may use what an earlier block of its page wrote (under out/docs/).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil

import pytest

from natsdeploy.arch import Arch
from natsdeploy.cli import build_parser, main
from natsdeploy.specs import BACKBONES
from tests.conftest import ICCONV, REPO
from tests.docs.conftest import DOCS, PAGES, blocks, commands

OUT = REPO / "out" / "docs"
RUNNABLE = [p for p in PAGES if any(lang in ("bash", "python", "shell") for lang, _ in blocks(p))]


@pytest.fixture(scope="module", autouse=True)
def _fresh_docs_outputs():
    """The examples write under out/docs: start empty (data synth refuses a non-empty folder) and clean up."""
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    yield
    shutil.rmtree(OUT, ignore_errors=True)


def test_docs_have_examples():
    langs = [lang for p in PAGES for lang, _ in blocks(p)]
    runs = [c for p in PAGES for lang, text in blocks(p) if lang == "bash" for c in commands(text)]
    assert {"bash", "python", "json", "text"} <= set(langs)
    assert {c.split()[1] for c in runs} >= {"check", "export", "bench", "align", "data"}


@pytest.mark.parametrize("page", RUNNABLE, ids=[p.name for p in RUNNABLE])
def test_page_examples_run(page, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    ran = 0
    for lang, text in blocks(page):
        if lang == "python":
            exec(compile(text, str(page), "exec"), {"__name__": "docs"})
            ran += 1
        elif lang == "bash":
            for command in commands(text):
                if "../shared" in command and not ICCONV.is_dir():
                    continue  # the published IC-Conv patterns are not beside this clone
                rc = main(shlex.split(command)[1:])
                out, err = capsys.readouterr()
                assert rc == 0, f"{page.name}: `{command}` exited {rc}: {err.strip()}"
                assert out, f"{page.name}: `{command}` printed nothing"
                ran += 1
        elif lang == "shell":
            for command in commands(text):
                argv = shlex.split(command)[1:]
                args = build_parser(argv[0]).parse_args(argv)  # a bad flag or value raises UsageError
                assert args.command == argv[0]
                ran += 1
    assert ran, f"{page.name}: no example ran"


def _arch_blocks() -> list[tuple[str, str]]:
    return [(p.name, text) for p in PAGES for lang, text in blocks(p) if lang == "json" and '"..."' not in text]


def test_json_arch_examples_validate():
    found = _arch_blocks()
    assert found, "no complete json example in docs/"
    for page, text in found:
        data = json.loads(text)
        if data.get("format") == "natsdeploy-arch":
            arch = Arch.from_dict(data)
            assert arch.backbone == data["backbone"] and set(arch.convs) == set(data["convs"]), page


def test_export_page_channel_table_matches_the_backbone_specs():
    """docs/export.md's output table: the channels of c2..c5 per block type are what specs.py describes."""
    rows = {line[3:5]: line for line in (DOCS / "export.md").read_text().splitlines()
            if re.match(r"\| `c[0-9]` \|", line)}
    assert set(rows) == {"c2", "c3", "c4", "c5"}
    for stage, name in enumerate(("c2", "c3", "c4", "c5"), start=1):
        cells = [c.strip() for c in rows[name].split("|")[1:-1]]
        assert cells[1] == f"`layer{stage}`" and cells[2] == str(2 ** (stage + 1)), rows[name]
        for spec in BACKBONES.values():
            width = next(b.out_channels for b in spec.blocks if b.prefix.startswith(f"layer{stage}."))
            assert cells[3 if spec.block == "basic" else 4] == str(width), (spec.name, rows[name])
