"""docs/cli.md is what docs/gen_cli.py generates from the parser: the reference cannot drift from the CLI."""

from __future__ import annotations

import argparse
import importlib.util

from natsdeploy.cli import COMMANDS, build_parser
from tests.docs.conftest import DOCS


def _generator():
    spec = importlib.util.spec_from_file_location("docs_gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date():
    gen = _generator()
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == gen.render(), (
        f"docs/cli.md differs from the parser: regenerate it with `{gen.REGENERATE}` and commit it")


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _subparsers(sub)


def test_reference_lists_every_command_and_flag():
    """The generator itself leaves nothing out: every command, subcommand, flag and choice is on the page."""
    page = _generator().render()
    subs = list(_subparsers(build_parser()))
    assert {s.prog for s in subs} >= {f"natsdeploy {name}" for name in COMMANDS} | {"natsdeploy data synth"}
    for sub in subs:
        assert f"`{sub.prog}`" in page
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            for flag in action.option_strings:
                assert f"`{flag}" in page, (sub.prog, flag)
            for choice in action.choices or ():
                assert str(choice) in page, (sub.prog, choice)
