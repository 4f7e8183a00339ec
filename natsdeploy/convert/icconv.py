"""IC-Conv dilation patterns <-> arch files (ARCH_FORMAT.md, "Imported formats").

IC-Conv's own module (yifan123/IC-Conv at 0a92284, model/ic_conv2d.py l.11-21, `ICConv2d.__init__`) walks a
pattern object in key order, turns key "(a, b)" into `dilation=[a + 1, b + 1]` (torch order: height, width) with
padding equal to the dilation for a 3x3 kernel, skips zero counts, and concatenates the branch outputs (l.23-27):
branch `b` owns the next `count` output channels. model/ic_resnet.py takes one object per 3x3 conv in block order
(a basic block's conv1 then conv2, l.15-23; a bottleneck's conv2, l.55-57), checks it used them all (l.125), and
has no channel permutation and no conv groups.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natsdeploy.arch import Arch, ArchError, Branch, ConvTransform
from natsdeploy.files import read_json
from natsdeploy.specs import BACKBONES

__all__ = ["from_ic_conv", "load_ic_conv", "to_ic_conv", "IcConvExport", "baseline_dilations"]

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
    """Read an IC-Conv pattern file (a JSON list) as an `Arch`; every problem is an `ArchError` naming the field."""
    p = Path(path)
    data = read_json(p, field="pattern file", expected="a JSON list")
    return from_ic_conv(data, backbone, source=p.name)


def baseline_dilations(ct: ConvTransform) -> list[tuple[int, int]]:
    """The dilation each baseline filter runs with, indexed by baseline output channel.

    Transformed channel `j` is baseline filter `permutation[j]` run with the dilation of the branch owning `j`
    (ARCH_FORMAT.md, semantics 1-4), so two arches computing the same function give the same list.
    """
    out: list[tuple[int, int]] = [(1, 1)] * ct.out_channels
    perm = ct.perm()
    j = 0
    for b in ct.branches:
        for _ in range(b.channels):
            out[perm[j]] = b.dilation
            j += 1
    return out


def _runs(dilations: list[tuple[int, int]]) -> list[tuple[tuple[int, int], int]]:
    runs: list[tuple[tuple[int, int], int]] = []
    for d in dilations:
        if runs and runs[-1][0] == d:
            runs[-1] = (d, runs[-1][1] + 1)
        else:
            runs.append((d, 1))
    return runs


def _merged_by_dilation(ct: ConvTransform) -> list[tuple[tuple[int, int], int]]:
    """Channels per dilation in branch order (the first branch of a dilation places it): the channel order dropped."""
    counts: dict[tuple[int, int], int] = {}
    for b in ct.branches:
        counts[b.dilation] = counts.get(b.dilation, 0) + b.channels
    return list(counts.items())


@dataclass(frozen=True)
class IcConvExport:
    """An IC-Conv pattern list and the convs whose channel order `drop_permutation` dropped (empty: exact)."""

    patterns: list[dict[str, int]]
    dropped: tuple[str, ...]

    def dumps(self) -> str:
        """The JSON text, laid out like the published pattern_zoo files (2-space indent, one key a line)."""
        return json.dumps(self.patterns, indent=2) + "\n"


def to_ic_conv(arch: Arch, *, drop_permutation: bool = False) -> IcConvExport:
    """The arch as IC-Conv's pattern list: one object per 3x3 conv in block order, keys "(dh - 1, dw - 1)".

    Exact when every dilation of a conv sits on one contiguous block of baseline filters (always for an
    unpermuted arch whose equal-dilation branches are neighbours, which merge); a permuted conv whose blocks
    are contiguous is written in baseline channel order and computes the same function. Otherwise an
    `ArchError` names the first such conv, unless `drop_permutation`: then each dilation's channel count is
    written in branch order and `dropped` names the conv (each pretrained filter then gets the dilation of its
    position, not the one the search chose). A grouped backbone is refused: ICConv2d runs each branch over all
    input channels with the same `groups`, not over its own conv groups (ARCH_FORMAT.md semantics 5).
    """
    spec = arch.spec
    if spec.groups > 1:
        raise ArchError(f"backbone: got {arch.backbone!r} (conv groups={spec.groups}), expected a backbone without "
                        "conv groups for --to ic-conv: IC-Conv's ICConv2d runs every branch over all input channels "
                        "with groups=G (model/ic_conv2d.py), not over its own conv groups as this arch does")
    patterns: list[dict[str, int]] = []
    scattered: list[str] = []
    for name, info in spec.convs.items():
        ct = arch.convs.get(name)
        if ct is None:
            runs = [((1, 1), info.out_channels)]
        else:
            runs = _runs(baseline_dilations(ct))
            if len({d for d, _ in runs}) != len(runs):
                scattered.append(name)
                runs = _merged_by_dilation(ct)
        patterns.append({f"({dh - 1}, {dw - 1})": n for (dh, dw), n in runs})
    if scattered and not drop_permutation:
        first = arch.convs[scattered[0]]
        permuted = first.perm() != list(range(first.out_channels))
        what = "a permutation that gives" if permuted else "branches of one dilation apart, which give"
        more = f" (and {len(scattered) - 1} more convs)" if len(scattered) > 1 else ""
        raise ArchError(f'convs["{scattered[0]}"]: got {what} one dilation to non-contiguous baseline filters{more}, '
                        "expected each dilation on one contiguous block of filters for --to ic-conv (IC-Conv assigns "
                        "dilations to contiguous channel groups and has no channel order); --drop-permutation writes "
                        "each dilation's channel count in branch order instead, at a cost: the pretrained-weight "
                        "mapping no longer holds (each pretrained filter gets the dilation of its position, not the "
                        "one the search chose for it)")
    return IcConvExport(patterns, tuple(scattered))
