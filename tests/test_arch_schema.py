"""The shipped JSON Schema and the validator agree on a corpus of valid and invalid arch files,
wherever the schema can express the rule (natsdeploy.arch_schema.NOT_IN_SCHEMA lists where it cannot)."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from natsdeploy.arch import Arch
from natsdeploy.arch_schema import NOT_IN_SCHEMA, dumps, json_schema, shipped_schema
from natsdeploy.errors import ArchError
from natsdeploy.specs import BACKBONES
from tests.conftest import REPO
from tests.helpers import random_arch

VALIDATOR = jsonschema.Draft202012Validator(json_schema())


def _validator_accepts(data) -> bool:
    try:
        Arch.from_dict(data)
        return True
    except ArchError:
        return False


def _schema_accepts(data) -> bool:
    return VALIDATOR.is_valid(data)


def test_shipped_schema_is_the_generated_one_and_a_valid_schema():
    assert shipped_schema() == dumps()  # regenerate: python -m natsdeploy.arch_schema > natsdeploy/arch.schema.json
    jsonschema.Draft202012Validator.check_schema(json.loads(shipped_schema()))


def _valid_corpus() -> list[dict]:
    out = [json.loads(p.read_text()) for p in sorted((REPO / "examples").glob("*.json"))]
    rng = random.Random(0)
    for name in sorted(BACKBONES):
        out.append({"format": "natsdeploy-arch", "version": 1, "backbone": name})
        for _ in range(3):
            out.append(random_arch(name, rng).to_dict())
    out.append({**out[0], "provenance": {"anything": [1, "x", None]}})
    return out


VALID = _valid_corpus()


@pytest.mark.parametrize("i", range(len(VALID)))
def test_valid_files_pass_both(i):
    assert _validator_accepts(VALID[i]) and _schema_accepts(VALID[i])


def _base() -> dict:
    return json.loads((REPO / "examples" / "resnet50_nats_c.json").read_text())


def _first(d: dict) -> tuple[str, dict]:
    name = next(n for n, c in d["convs"].items() if "permutation" in c)
    return name, d["convs"][name]


def _mutations() -> dict[str, dict]:
    """Each an invalid file whose rule the schema can express."""
    m: dict[str, dict] = {}

    def put(key, fn):
        d = _base()
        fn(d)
        m[key] = d

    put("format", lambda d: d.update(format="natsdeploy"))
    put("format missing", lambda d: d.pop("format"))
    put("version 2", lambda d: d.update(version=2))
    put("version true", lambda d: d.update(version=True))
    put("version string", lambda d: d.update(version="1"))
    put("backbone unknown", lambda d: d.update(backbone="resnet51"))
    put("backbone missing", lambda d: d.pop("backbone"))
    put("unknown top key", lambda d: d.update(extra=1))
    put("convs a list", lambda d: d.update(convs=[]))
    put("unknown conv", lambda d: d["convs"].update({"layer3.0.conv1": _first(d)[1]}))  # a 1x1 conv
    put("conv of another backbone", lambda d: d["convs"].update({"layer2.0.conv1": _first(d)[1]}))
    put("unknown conv key", lambda d: _first(d)[1].update(groups=1))
    put("branches missing", lambda d: _first(d)[1].pop("branches"))
    put("branches empty", lambda d: _first(d)[1].update(branches=[]))
    put("branch not an object", lambda d: _first(d)[1]["branches"].__setitem__(0, [1, 64]))
    put("unknown branch key", lambda d: _first(d)[1]["branches"][0].update(groups=1))
    put("dilation missing", lambda d: _first(d)[1]["branches"][0].pop("dilation"))
    put("channels missing", lambda d: _first(d)[1]["branches"][0].pop("channels"))
    put("dilation 0", lambda d: _first(d)[1]["branches"][0].update(dilation=0))
    put("dilation [1, 0]", lambda d: _first(d)[1]["branches"][0].update(dilation=[1, 0]))
    put("dilation of 3", lambda d: _first(d)[1]["branches"][0].update(dilation=[1, 2, 3]))
    put("dilation string", lambda d: _first(d)[1]["branches"][0].update(dilation="2"))
    put("dilation true", lambda d: _first(d)[1]["branches"][0].update(dilation=True))
    put("channels 0", lambda d: _first(d)[1]["branches"][0].update(channels=0))
    put("channels bool", lambda d: _first(d)[1]["branches"][0].update(channels=True))
    put("channels 1.5", lambda d: _first(d)[1]["branches"][0].update(channels=1.5))
    put("permutation short", lambda d: _first(d)[1]["permutation"].pop())
    put("permutation repeated", lambda d: _first(d)[1]["permutation"].__setitem__(0, _first(d)[1]["permutation"][1]))
    put("permutation out of range", lambda d: _first(d)[1]["permutation"].__setitem__(
        _first(d)[1]["permutation"].index(0), len(_first(d)[1]["permutation"])))
    put("permutation negative", lambda d: _first(d)[1]["permutation"].__setitem__(
        _first(d)[1]["permutation"].index(0), -1))
    put("permutation not ints", lambda d: _first(d)[1].update(permutation="identity"))
    return m


MUTATIONS = _mutations()


@pytest.mark.parametrize("key", sorted(MUTATIONS))
def test_invalid_files_fail_both(key):
    data = MUTATIONS[key]
    assert not _validator_accepts(data), key
    assert not _schema_accepts(data), key


def test_permutation_on_a_residual_conv_fails_both():
    d = {"format": "natsdeploy-arch", "version": 1, "backbone": "resnet18",
         "convs": {"layer3.0.conv2": {"branches": [{"dilation": 2, "channels": 256}], "permutation": list(range(256))}}}
    assert not _validator_accepts(d) and not _schema_accepts(d)
    d["convs"]["layer3.0.conv2"].pop("permutation")
    assert _validator_accepts(d) and _schema_accepts(d)


def test_grouped_channels_multiple_fails_both():
    d = {"format": "natsdeploy-arch", "version": 1, "backbone": "resnext101_32x4d",
         "convs": {"layer3.0.conv2": {"branches": [{"dilation": 2, "channels": 16}, {"dilation": 1, "channels": 496}]}}}
    assert _validator_accepts(d) and _schema_accepts(d)
    d["convs"]["layer3.0.conv2"]["branches"] = [{"dilation": 2, "channels": 8}, {"dilation": 1, "channels": 504}]
    assert not _validator_accepts(d) and not _schema_accepts(d)


def test_what_the_schema_cannot_express_is_listed_and_left_to_the_validator():
    """The two cross-field rules: the schema accepts, the validator refuses (and NOT_IN_SCHEMA says so)."""
    d = _base()
    _first(d)[1]["branches"][0]["channels"] += 1  # the sum no longer equals out_channels
    assert _schema_accepts(d) and not _validator_accepts(d)
    assert len(NOT_IN_SCHEMA) == 2
    perm = list(range(512))
    perm[0], perm[1] = perm[1], perm[0]  # reorders inside a conv group: not a whole-group move
    g = {"format": "natsdeploy-arch", "version": 1, "backbone": "resnext101_32x4d",
         "convs": {"layer3.0.conv2": {"branches": [{"dilation": 2, "channels": 512}], "permutation": perm}}}
    assert _schema_accepts(g) and not _validator_accepts(g)
