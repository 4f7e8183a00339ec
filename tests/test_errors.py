"""natsdeploy.errors: one module of typed errors, old import locations, the CLI's one error path, and
load_arch under random mutations of valid arch JSON (validates, or raises ArchError, nothing else)."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natsdeploy import errors
from natsdeploy.arch import ArchError, load_arch
from natsdeploy.cli import main
from tests.conftest import EXAMPLES

CLASSES = [errors.ArchError, errors.UsageError, errors.WeightsError, errors.DatasetError, errors.CheckpointError]


def test_every_error_is_a_value_error_and_an_input_error():
    for cls in CLASSES:
        assert issubclass(cls, errors.InputError) and issubclass(cls, ValueError), cls
    assert issubclass(errors.CheckpointError, errors.UsageError)  # callers that caught UsageError still do


def test_old_import_locations_are_the_same_classes():
    import natsdeploy
    from natsdeploy.data.errors import DatasetError
    from natsdeploy.models.build import WeightsError
    from natsdeploy.errors import UsageError
    from natsdeploy.train.loop import CheckpointError

    assert ArchError is errors.ArchError and natsdeploy.ArchError is errors.ArchError
    assert UsageError is errors.UsageError and WeightsError is errors.WeightsError
    assert natsdeploy.WeightsError is errors.WeightsError
    assert DatasetError is errors.DatasetError and CheckpointError is errors.CheckpointError


@pytest.mark.parametrize("cls", CLASSES + [FileNotFoundError], ids=lambda c: c.__name__)
def test_cli_maps_each_to_exit_2_and_one_line(monkeypatch, capsys, cls):
    import natsdeploy.verify.cli as cli  # check's module in natsdeploy.cli.COMMANDS, its check_cli called at run time

    def boom(args):
        if cls is FileNotFoundError:
            raise FileNotFoundError(2, "No such file or directory", "/no/such/dir/out.json")
        raise cls("field: got 'x\nsecond line', expected y")

    monkeypatch.setattr(cli, "check_cli", boom)
    assert main(["check", str(EXAMPLES / "resnet18_nats_c.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("natsdeploy: error: ")
    if cls is FileNotFoundError:
        assert err == "natsdeploy: error: /no/such/dir/out.json: No such file or directory\n"


def test_a_bug_is_not_mapped_to_exit_2(monkeypatch):
    import natsdeploy.verify.cli as cli

    def bug(args):
        raise KeyError("internal")

    monkeypatch.setattr(cli, "check_cli", bug)
    with pytest.raises(KeyError):
        main(["check", str(EXAMPLES / "resnet18_nats_c.json")])


# -- load_arch under random mutations ------------------------------------------------------------
VALID = [json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.json"))]
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)


def _paths(node, prefix=()):
    """Every (container path) in a JSON tree, so a mutation can hit any depth."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _mutate(doc, rng: random.Random, value, key: str):
    """One structural mutation at a random place: replace, delete, insert, duplicate-into-list or retype."""
    paths = list(_paths(doc))
    path = rng.choice(paths)
    if not path:
        return value if rng.random() < 0.3 else doc
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    op = rng.choice(["replace", "delete", "insert", "grow", "retype"])
    if op == "replace":
        parent[last] = value
    elif op == "delete":
        del parent[last]
    elif op == "insert":
        target = parent[last]
        if isinstance(target, dict):
            target[key] = value
        elif isinstance(target, list):
            target.insert(rng.randint(0, len(target)), value)
        else:
            parent[last] = value
    elif op == "grow" and isinstance(parent[last], int) and not isinstance(parent[last], bool):
        parent[last] = parent[last] + rng.choice([-1, 1, 2**31, -(2**31)])
    else:
        v = parent[last]
        parent[last] = [v] if not isinstance(v, list) else (str(v) if rng.random() < 0.5 else {"0": v})
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, len(VALID) - 1), n=st.integers(1, 4),
       value=_json_values, key=st.text(max_size=10), text_edit=st.booleans())
def test_mutated_arch_json_validates_or_raises_arch_error(seed, which, n, value, key, text_edit):
    rng = random.Random(seed)
    doc = json.loads(json.dumps(VALID[which]))
    for _ in range(n):
        doc = _mutate(doc, rng, json.loads(json.dumps(value, allow_nan=True)), key)
    text = json.dumps(doc, allow_nan=True)
    if text_edit:  # byte-level damage as well: cut, or splice a character in
        i = rng.randrange(len(text) + 1)
        text = text[:i] if rng.random() < 0.5 else text[:i] + rng.choice('{}[],:"\\0-e9 \x00\udcff') + text[i:]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "arch.json"
        p.write_bytes(text.encode("utf-8", "surrogateescape"))
        try:
            arch = load_arch(p)
        except ArchError as e:
            assert "\n" not in str(e)
        else:
            assert type(arch).from_dict(json.loads(arch.dumps())) == arch  # what validates round-trips
