"""The arch file's JSON Schema (draft 2020-12), generated from the backbone specs.

The schema states every rule of the arch format that JSON Schema can express: the fixed `format`
and `version`, the backbone names, which convs each backbone has, dilation and channel types,
channel multiples of a grouped conv's group width, and a permutation's length, range and
distinctness (which together make it a permutation). Two rules need arithmetic across fields and
stay with the validator (`natsdeploy.arch`): branch channels summing to the conv's out_channels,
and a grouped conv's permutation moving whole groups. `natsdeploy check --schema` prints it; the
package ships it as `arch.schema.json` (a test keeps the two identical).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from natsdeploy.specs import BACKBONES, ConvInfo

__all__ = ["json_schema", "shipped_schema", "dumps", "SCHEMA_ID", "NOT_IN_SCHEMA"]

SCHEMA_ID = "https://natsdeploy.invalid/schemas/arch-v1.json"
NOT_IN_SCHEMA = (
    "branch channels sum to the conv's out_channels",
    "a grouped conv's permutation moves whole conv groups, in order",
)
"""The arch rules JSON Schema cannot express; the validator checks them."""

_DILATION = {
    "description": "an int d (meaning [d, d]) or [dh, dw], positive ints",
    "oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2},
    ],
}


def _conv(info: ConvInfo) -> dict[str, Any]:
    channels: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": info.out_channels}
    if info.groups > 1:
        channels["multipleOf"] = info.channels_per_group
    conv: dict[str, Any] = {
        "type": "object",
        "required": ["branches"],
        "additionalProperties": False,
        "properties": {
            "branches": {
                "type": "array", "minItems": 1,
                "items": {"type": "object", "required": ["dilation", "channels"], "additionalProperties": False,
                          "properties": {"dilation": {"$ref": "#/$defs/dilation"}, "channels": channels}},
            },
        },
    }
    n = info.out_channels
    if info.permutable:
        conv["properties"]["permutation"] = {
            "description": f"transformed channel j is computed by baseline filter permutation[j] ({n} distinct ints)",
            "type": "array", "minItems": n, "maxItems": n, "uniqueItems": True,
            "items": {"type": "integer", "minimum": 0, "maximum": n - 1},
        }
    else:
        conv["properties"]["permutation"] = {"not": {},
                                             "description": f"{info.name} feeds the residual add: no permutation"}
    return conv


def _conv_def(info: ConvInfo) -> str:
    """A $defs name for the conv rules, shared by every conv of the same shape."""
    return (f"conv_{info.out_channels}" + (f"_g{info.groups}" if info.groups > 1 else "")
            + ("" if info.permutable else "_fixed"))


def json_schema() -> dict[str, Any]:
    """The arch file's JSON Schema, from `natsdeploy.specs.BACKBONES`."""
    defs: dict[str, Any] = {"dilation": _DILATION}
    per_backbone = []
    for name, spec in BACKBONES.items():
        for info in spec.convs.values():
            defs.setdefault(_conv_def(info), _conv(info))
        per_backbone.append({
            "if": {"properties": {"backbone": {"const": name}}, "required": ["backbone"]},
            "then": {"properties": {"convs": {
                "type": "object", "additionalProperties": False,
                "properties": {conv: {"$ref": f"#/$defs/{_conv_def(info)}"} for conv, info in spec.convs.items()},
            }}},
        })
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "natsdeploy arch file, format natsdeploy-arch version 1",
        "description": "How a NATS transformation splits a ResNet backbone's 3x3 convs into parallel dilated "
                       "branches. Rules the schema cannot state: " + "; ".join(NOT_IN_SCHEMA) + ".",
        "type": "object",
        "required": ["format", "version", "backbone"],
        "additionalProperties": False,
        "properties": {
            "format": {"const": "natsdeploy-arch"},
            "version": {"const": 1},
            "backbone": {"enum": sorted(BACKBONES)},
            "convs": {"type": "object"},
            "provenance": {"description": "anything; copied through, never read for meaning"},
        },
        "allOf": per_backbone,
        "$defs": dict(sorted(defs.items())),
    }


def shipped_schema() -> str:
    """The schema file shipped in the package (`natsdeploy/arch.schema.json`)."""
    return resources.files("natsdeploy").joinpath("arch.schema.json").read_text(encoding="utf-8")


def dumps() -> str:
    return json.dumps(json_schema(), indent=1) + "\n"


if __name__ == "__main__":  # regenerate: python -m natsdeploy.arch_schema > natsdeploy/arch.schema.json
    print(dumps(), end="")
