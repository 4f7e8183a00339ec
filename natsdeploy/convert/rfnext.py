"""RF-Next dilation structures (mmcv's RFSearchHook) <-> arch files.

RF-Next (TPAMI 2022) searches one dilation per conv. mmcv's RFSearchHook writes `local_search_config_stepN.json`,
`{"search": {...the hook's config...}, "structure": {"module.backbone.layer3.1.conv2": [dh, dw], ...}}`, and
mmdetection's configs/rfnext/search_log/*.json are files of that shape. What mmcv's code says (open-mmlab/mmcv at
a8073c7, mmcv/cnn/rfsearch/; the hook appeared in mmcv 2.0.0):

- Order [dh, dw]: `RFSearchHook.step` (search.py l.121-123) stores `module.op_layer.dilation`, torch Conv2d's
  (height, width) tuple, set by `Conv2dRFSearchOp.estimate_rates` (operator.py l.128-141) from the two axes
  separately; `set_model` (search.py l.216-231) reads an int `d` as [d, d] and sets `dilation = (s[0], s[1])` and
  the padding of each axis from its own entry. So a value is the arch's `[dh, dw]`.
- Names: `set_model` names a child 'module.' + name at the top and prefix + '.' + name below (l.203-206), so a
  detector's backbone convs are `module.backbone.<torchvision name>`.
- Which convs: `set_model` visits every nn.Conv2d whose kernel is odd and > 1 on either axis (l.211-215): the 3x3
  block convs, a ResNet's 7x7 stem `conv1`, the neck's and heads' 3x3 convs, never a 1x1; it skips every module
  whose full name contains a `skip_layer` string (l.207-210) and looks every other one up as
  `config['structure'][fullname]` (l.216), so a conv with no entry is a KeyError.
- Modes: `fixed_single_branch` runs `set_model` only (l.89-90): a conv computes all its filters at its one
  dilation, an arch branch of all the conv's channels. `fixed_multi_branch` then wraps every conv in
  `Conv2dRFSearchOp` (l.91-93), a learned weighted sum of the full-width conv at 2-3 dilations sharing one weight
  (operator.py `forward`), which no arch expresses. The file does not record its mode.
- Padding: `get_single_padding(k, stride, d) = ((stride - 1) + d * (k - 1)) // 2` (utils.py l.64-67) is `d` for a
  3x3 conv at stride 1 or 2, the arch's padding (ARCH_FORMAT.md semantics 2), and 3 for the 7x7 stem at d = 1.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natsdeploy.arch import Arch, ArchError, Branch, ConvTransform
from natsdeploy.files import read_json
from natsdeploy.specs import BACKBONES, BackboneSpec

__all__ = ["from_rf_next", "load_rf_next", "to_rf_next", "RfNextImport", "RfNextExport", "MODE_ASSUMPTION",
           "SKIP_LAYER"]

MODE_ASSUMPTION = ("rf-next: read as mode='fixed_single_branch' (one dilation per conv, on all its filters); the file "
                   "does not record its mode, and a fixed_multi_branch model (each conv a learned weighted sum of "
                   "dilated copies sharing one weight) has no arch form")
SKIP_LAYER = ("neck", "head")
"""The `skip_layer` an exported file needs: mmcv matches substrings of full module names, and 'neck' and 'head'
cover mmdetection's `neck`, `rpn_head`, `roi_head`, `bbox_head`, `mask_head`, `semantic_head` and no ResNet module."""
STEM = "conv1"
_PREFIX = "module."
_BACKBONE = "backbone."
_BARE = re.compile(r"^(conv1|stem|layer\d+)(\.|$)")  # a backbone searched on its own (no `backbone.` level)
# The values of mmdetection's configs/rfnext/rfnext_fixed_single_branch_*.py; RFSearchHook reads only the file's
# "structure" (search.py l.66-68), so the user's own config supplies these (num_branches is read in every mode, l.70).
_SEARCH = {"step": 0, "max_step": 12, "search_interval": 1, "exp_rate": 0.5, "init_alphas": 0.01, "mmin": 1,
           "mmax": 24, "num_branches": 2, "skip_layer": list(SKIP_LAYER)}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _dilation(value: Any, field: str) -> tuple[int, int]:
    """An int `d` is [d, d] (set_model, l.216-220); a list is [dh, dw] ([d] as old mmcv kept it in memory)."""
    if _is_int(value) and value >= 1:
        return (value, value)
    if isinstance(value, list) and len(value) in (1, 2) and all(_is_int(v) and v >= 1 for v in value):
        return (value[0], value[-1])
    raise ArchError(f"{field}: got {value!r}, expected a dilation: a positive int or [dh, dw] of positive ints")


def _backbone_name(key: str) -> str | None:
    """The torchvision-style name of a backbone entry (`module.` and `backbone.` stripped), None outside it."""
    name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
    if name.startswith(_BACKBONE):
        return name[len(_BACKBONE):]
    return name if _BARE.match(name) else None


def _span(spec: BackboneSpec) -> str:
    names = list(spec.convs)
    return f"{names[0]} ... {names[-1]}, {len(names)} in all"


def _outside_space(spec: BackboneSpec, key: str, name: str, value: Any) -> ArchError:
    """The error for a backbone entry natsdeploy cannot represent, with a guess at what it is."""
    if name == STEM:
        what = "the 7x7 stem conv1 at a dilation other than 1 (natsdeploy transforms only 3x3 block convs)"
    elif re.search(r"\.convs\.\d+$", name):
        what = "a Res2Net split conv (convs.N; Res2Net is not a natsdeploy backbone)"
    elif name.startswith("stem"):
        what = "a deep-stem conv (ResNetV1c/V1d; torchvision's ResNet has one 7x7 conv1)"
    elif re.match(r"^layer\d+\.\d+\.", name) and name.rsplit(".", 1)[0] in {b.prefix for b in spec.blocks}:
        what = f"a conv of a {spec.name} block that is no 3x3 conv (RF-Next never writes a 1x1: is --backbone right?)"
    else:
        what = f"no 3x3 conv of {spec.name} (is --backbone right?)"
    return ArchError(f'structure["{key}"]: got {value!r} on {what}, expected entries only for {spec.name}\'s 3x3 '
                     f"block convs ({_span(spec)}) and its stem conv1 at dilation 1")


@dataclass(frozen=True)
class RfNextImport:
    """An RF-Next structure read as an arch, and what of the file the arch leaves out."""

    arch: Arch
    outside: Mapping[str, int]
    """Entries outside the backbone per top-level module (`neck`, `rpn_head`, ...): natsdeploy transforms none."""
    stem: tuple[str, ...]
    """Stem entries at dilation 1: the baseline's stem, nothing to write."""
    missing: tuple[str, ...]
    """3x3 convs with no entry (mmcv's skip_layer leaves them out): kept at dilation 1 by the arch rules."""

    def notes(self) -> list[str]:
        """One line each: the mode assumption, what was left out, which convs defaulted to dilation 1."""
        spec = self.arch.spec
        lines = [MODE_ASSUMPTION]
        n_out = sum(self.outside.values())
        if n_out or self.stem:
            parts = []
            if n_out:
                groups = ", ".join(f"{k}: {v}" for k, v in self.outside.items())
                parts.append(f"{n_out} entries outside the backbone ({groups})")
            if self.stem:
                parts.append(f"{len(self.stem)} stem entry at dilation 1 ({', '.join(self.stem)})")
            lines.append(f"rf-next: left out {' and '.join(parts)}: natsdeploy transforms the backbone's 3x3 block "
                         "convs only")
        if self.missing:
            shown = ", ".join(self.missing[:3]) + (", ..." if len(self.missing) > 3 else "")
            lines.append(f"rf-next: {len(self.missing)} of {spec.name}'s {len(spec.convs)} 3x3 convs have no entry "
                         f"({shown}): kept at dilation 1, as ARCH_FORMAT.md keeps every unlisted conv (and as "
                         "mmcv's skip_layer leaves them)")
        return lines


def from_rf_next(data: Any, backbone: str, *, source: str | None = None) -> RfNextImport:
    """An RF-Next structure file's JSON as an `Arch` on `backbone` (read as fixed_single_branch).

    Each backbone 3x3 conv's entry becomes one branch of all its channels at `[dh, dw]` (dilation 1: not listed).
    Entries outside the backbone are counted and left out; a stem `conv1` entry is accepted at dilation 1; any
    other backbone entry (a dilated stem, a 1x1, Res2Net's `convs.N`, a conv of another depth) is an `ArchError`
    naming it. 3x3 convs with no entry keep dilation 1 (ARCH_FORMAT.md: an unlisted conv is not transformed).
    """
    if backbone not in BACKBONES:
        raise ArchError(f"--backbone: got {backbone!r}, expected one of {sorted(BACKBONES)}")
    spec = BACKBONES[backbone]
    if isinstance(data, list):
        raise ArchError("rf-next file: got a JSON list (an IC-Conv pattern? use --from ic-conv), expected "
                        '{"search": {...}, "structure": {...}} (mmcv RFSearchHook\'s local_search_config_stepN.json)')
    if not isinstance(data, Mapping) or not isinstance(data.get("structure"), Mapping):
        shown = sorted(data)[:6] if isinstance(data, Mapping) else type(data).__name__
        raise ArchError(f"rf-next file: got {shown!r}, expected an object with a \"structure\" object mapping conv "
                        "names to dilations (mmcv RFSearchHook's local_search_config_stepN.json)")
    convs: dict[str, ConvTransform] = {}
    seen: dict[str, str] = {}
    outside: dict[str, int] = {}
    stem: list[str] = []
    for key, value in data["structure"].items():
        d = _dilation(value, f'structure["{key}"]')
        name = _backbone_name(key)
        if name is None:
            top = (key[len(_PREFIX):] if key.startswith(_PREFIX) else key).split(".")[0]
            outside[top] = outside.get(top, 0) + 1
            continue
        if name in seen:
            raise ArchError(f'structure["{key}"]: got a second entry for {name} (first "{seen[name]}"), expected one '
                            "entry per conv")
        seen[name] = key
        if name == STEM and d == (1, 1):
            stem.append(key)
        elif name not in spec.convs:
            raise _outside_space(spec, key, name, value)
        elif d != (1, 1):
            convs[name] = ConvTransform((Branch(d, spec.convs[name].out_channels),))
    if not seen:
        raise ArchError(f"structure: got no backbone entries ({sum(outside.values())} outside it), expected entries "
                        f"named module.backbone.<conv> for {spec.name}'s 3x3 convs ({_span(spec)})")
    prov: dict[str, Any] = {"imported_from": "rf-next", "mode": "fixed_single_branch"}
    if source:
        prov["source"] = source
    missing = tuple(n for n in spec.convs if n not in seen)
    return RfNextImport(Arch(backbone=backbone, convs=convs, provenance=prov), outside, tuple(stem), missing)


def load_rf_next(path: str | os.PathLike[str], backbone: str) -> RfNextImport:
    """Read an RF-Next `local_search_config_stepN.json` (see `from_rf_next`); problems are `ArchError`s."""
    p = Path(path)
    data = read_json(p, field="rf-next file", expected="a JSON object")
    return from_rf_next(data, backbone, source=p.name)


@dataclass(frozen=True)
class RfNextExport:
    """An RF-Next structure file for mmcv's RFSearchHook: `{"search": ..., "structure": ...}`."""

    data: dict[str, Any]
    backbone: str

    def dumps(self) -> str:
        """The JSON text, laid out like mmdetection's search logs (4-space indent)."""
        return json.dumps(self.data, indent=4) + "\n"

    def usage(self, path: str) -> str:
        """One line: what the file holds and the hook config that reads it."""
        n = len(self.data["structure"])
        return (f"rf-next: {n} entries (module.backbone.conv1 and {self.backbone}'s {n - 1} 3x3 convs); train with "
                f"RFSearchHook(mode='fixed_single_branch', rfstructure_file={path!r}, config=dict(search=dict("
                f"num_branches=2, skip_layer={list(SKIP_LAYER)!r}, ...))): mmcv looks up every conv with an odd kernel "
                "> 1 that skip_layer does not name, and this file has no neck or head entries")


def to_rf_next(arch: Arch) -> RfNextExport:
    """The arch as an RF-Next structure: every conv mmcv's set_model looks up in a torchvision-layout ResNet.

    `module.backbone.conv1` (the stem, [1, 1]) and each 3x3 conv at its one dilation ([1, 1] if unlisted), in
    network order. A conv with branches of more than one dilation is an `ArchError` naming it (RF-Next has one
    dilation per conv); a single-dilation conv's permutation is dropped, which changes nothing (all its filters
    share the dilation). The neck and heads are not written: the config's skip_layer must name them (`SKIP_LAYER`).
    """
    structure: dict[str, list[int]] = {f"{_PREFIX}{_BACKBONE}{STEM}": [1, 1]}
    multi: list[str] = []
    for name in arch.spec.convs:
        ct = arch.convs.get(name)
        dilations = list(dict.fromkeys(b.dilation for b in ct.branches)) if ct else [(1, 1)]
        if len(dilations) > 1:
            multi.append(name)
        structure[f"{_PREFIX}{_BACKBONE}{name}"] = list(dilations[0])
    if multi:
        first = list(dict.fromkeys(b.dilation for b in arch.convs[multi[0]].branches))
        more = f" (and {len(multi) - 1} more convs)" if len(multi) > 1 else ""
        raise ArchError(f'convs["{multi[0]}"]: got {len(first)} dilations {[list(d) for d in first]}{more}, expected '
                        "one dilation per conv for --to rf-next (RF-Next's fixed_single_branch gives a whole conv one "
                        "dilation); --to ic-conv keeps a channel split")
    return RfNextExport({"search": dict(_SEARCH), "structure": structure}, arch.backbone)
