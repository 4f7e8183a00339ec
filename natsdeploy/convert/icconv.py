"""Import searched dilation patterns published in other formats (ARCH_FORMAT.md, "Imported formats")."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from natsdeploy.arch import Arch, ArchError, Branch, ConvTransform
from natsdeploy.specs import BACKBONES

__all__ = ["from_ic_conv", "load_ic_conv"]

_KEY = re.compile(r"^\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


def from_ic_conv(patterns: Any, backbone: str, *, source: str | None = None) -> Arch:
    """An IC-Conv pattern list (one object per 3x3 conv, in block order) as an `Arch`.

    Key "(a, b)" is dilation [a + 1, b + 1]; zero counts are dropped; key order is branch order;
    the permutation is the identity.
    """
    if backbone not in BACKBONES:
        raise ArchError(f"--backbone: got {backbone!r}, expected one of {sorted(BACKBONES)}")
    names = list(BACKBONES[backbone].convs)
    if not isinstance(patterns, list):
        raise ArchError(f"ic-conv pattern: got {type(patterns).__name__}, expected a JSON list of objects")
    if len(patterns) != len(names):
        raise ArchError(f"ic-conv pattern: got {len(patterns)} entries, expected {len(names)} "
                        f"(one per 3x3 conv of {backbone})")
    convs: dict[str, ConvTransform] = {}
    for i, (name, entry) in enumerate(zip(names, patterns)):
        if not isinstance(entry, dict):
            raise ArchError(f"ic-conv pattern[{i}]: got {type(entry).__name__}, expected an object")
        branches = []
        for key, n in entry.items():
            m = _KEY.match(key)
            if not m:
                raise ArchError(f'ic-conv pattern[{i}] key: got {key!r}, expected "(a, b)" with ints a, b >= 0')
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ArchError(f"ic-conv pattern[{i}][{key!r}]: got {n!r}, expected a channel count >= 0")
            if n:
                branches.append(Branch((int(m.group(1)) + 1, int(m.group(2)) + 1), n))
        total = sum(b.channels for b in branches)
        expected = BACKBONES[backbone].convs[name].out_channels
        if total != expected:
            raise ArchError(f"ic-conv pattern[{i}] ({name}): got channels summing to {total}, expected {expected}")
        convs[name] = ConvTransform(tuple(branches))
    prov = {"imported_from": "ic-conv"}
    if source:
        prov["source"] = source
    return Arch(backbone=backbone, convs=convs, provenance=prov)


def load_ic_conv(path: str | os.PathLike[str], backbone: str) -> Arch:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchError(f"pattern file: got {str(p)!r}, expected an existing file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArchError(f"pattern file: got invalid JSON in {str(p)!r} ({e}), expected a JSON list") from None
    return from_ic_conv(data, backbone, source=p.name)
