"""The example arch files shipped in the package (`natsdeploy.examples`) are the repository's examples/."""

from __future__ import annotations

import pytest

from natsdeploy.arch import load_arch
from natsdeploy.errors import UsageError
from natsdeploy.examples import example_path, list_examples
from tests.conftest import EXAMPLES


def test_shipped_copies_equal_the_repository_examples():
    """examples/generate.py writes both; a hand edit of one copy fails here."""
    repo = {p.stem.replace("_", "-"): p for p in EXAMPLES.glob("*.json")}
    assert list_examples() == sorted(repo) and len(repo) >= 2
    for name, path in repo.items():
        assert example_path(name).read_bytes() == path.read_bytes(), name


def test_every_shipped_example_loads():
    for name in list_examples():
        assert load_arch(example_path(name)).convs


@pytest.mark.parametrize("name", ["resnet50-nats-c", "resnet50_nats_c", "RESNET50-NATS-C", "resnet50_nats_c.json"])
def test_either_spelling(name):
    assert example_path(name).name == "resnet50_nats_c.json"


def test_unknown_name_is_one_line():
    with pytest.raises(UsageError, match=r"^--example: got 'resnet50', expected one of \['resnet18-nats-c', "):
        example_path("resnet50")
