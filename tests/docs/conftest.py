"""The docs pages and their fenced blocks, shared by the docs tests."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO

DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, text) of every fenced block of `page`, in document order."""
    return FENCE.findall(page.read_text(encoding="utf-8"))


def commands(text: str) -> list[str]:
    """The `natsdeploy ...` lines of a shell block (other lines, such as `pip install` or `make`, are not run)."""
    return [line.strip() for line in text.splitlines() if line.startswith("natsdeploy ")]
