"""The example arch files shipped inside the package, so a pip-installed user can run
`natsdeploy check --example resnet50-nats-c` without the repository.

The files are copies of the repository's `examples/*.json` (written by `examples/generate.py`;
tests/test_packaging.py keeps the two identical). A name is the file's stem with `-` for `_`
(`resnet50-nats-c`); the stem itself is accepted too.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from natsdeploy.errors import UsageError

__all__ = ["list_examples", "example_path"]


def _files() -> dict[str, Path]:
    folder = resources.files(__name__)
    return {Path(e.name).stem.replace("_", "-"): Path(str(e)) for e in folder.iterdir() if e.name.endswith(".json")}


def list_examples() -> list[str]:
    """The names of the shipped example archs, sorted (e.g. ``resnet50-nats-c``)."""
    return sorted(_files())


def example_path(name: str, *, field: str = "--example") -> Path:
    """The path of the shipped example `name` (``resnet50-nats-c`` or ``resnet50_nats_c``); a one-line
    `UsageError` naming the shipped ones otherwise."""
    files = _files()
    key = str(name).strip().lower().replace("_", "-").removesuffix(".json")
    if key not in files:
        raise UsageError(f"{field}: got {name!r}, expected one of {sorted(files)}")
    return files[key]
