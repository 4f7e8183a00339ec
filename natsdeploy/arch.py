"""The arch file: a validated, immutable description of a NATS transformation.

`Arch` is the one value that crosses stage boundaries (search -> build -> export -> verify).
Every rule of ARCH_FORMAT.md is checked here against the named backbone, so a module that
receives an `Arch` never has to re-validate it.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from natsdeploy.errors import ArchError
from natsdeploy.files import atomic_write_text
from natsdeploy.specs import BACKBONES, BackboneSpec, ConvInfo

__all__ = ["ArchError", "Branch", "ConvTransform", "Arch", "load_arch", "format_dilation", "FORMAT", "VERSION"]

FORMAT = "natsdeploy-arch"
VERSION = 1
_TOP_KEYS = ("format", "version", "backbone", "convs", "provenance")
_CONV_KEYS = ("branches", "permutation")
_BRANCH_KEYS = ("dilation", "channels")


def _fail(path: str, value: Any, expected: str) -> ArchError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ArchError(f"{path}: got {shown}, expected {expected}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def format_dilation(d: tuple[int, int]) -> str:
    """A dilation as reports write it: `d2` when both axes agree, `d(1,2)` when they differ."""
    return f"d{d[0]}" if d[0] == d[1] else f"d({d[0]},{d[1]})"


@dataclass(frozen=True)
class Branch:
    """A parallel conv owning `channels` consecutive output channels, run with `dilation`."""

    dilation: tuple[int, int]
    channels: int


@dataclass(frozen=True)
class ConvTransform:
    """How one 3x3 conv is split. `permutation` None means identity."""

    branches: tuple[Branch, ...]
    permutation: tuple[int, ...] | None = None

    @property
    def out_channels(self) -> int:
        return sum(b.channels for b in self.branches)

    def perm(self) -> list[int]:
        """The permutation as a list (identity when absent)."""
        return list(self.permutation) if self.permutation is not None else list(range(self.out_channels))

    def offsets(self) -> list[int]:
        out, o = [], 0
        for b in self.branches:
            out.append(o)
            o += b.channels
        return out

    @property
    def is_identity(self) -> bool:
        """True when the transformation computes exactly the plain conv (one d1 branch, no reorder)."""
        perm_id = self.permutation is None or list(self.permutation) == list(range(self.out_channels))
        return perm_id and all(b.dilation == (1, 1) for b in self.branches)


@dataclass(frozen=True)
class Arch:
    """A transformed backbone: which 3x3 convs are split, into what, and in what channel order."""

    backbone: str
    convs: Mapping[str, ConvTransform] = field(default_factory=dict)
    provenance: Any = None

    def __post_init__(self) -> None:
        # Validate values built in code exactly like parsed files, and freeze the mapping.
        spec = _check_backbone(self.backbone)
        ordered = {}
        for name in spec.convs:
            if name in self.convs:
                ordered[name] = self.convs[name]
        for name, ct in self.convs.items():
            if name not in spec.convs:
                raise _unknown_conv(spec, name)
            _check_transform(ct, spec.convs[name], f'convs["{name}"]')
        object.__setattr__(self, "convs", MappingProxyType(ordered))

    @property
    def spec(self) -> BackboneSpec:
        return BACKBONES[self.backbone]

    # -- (de)serialisation -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any) -> Arch:
        """Parse and validate the JSON object of an arch file."""
        if not isinstance(data, Mapping):
            raise _fail("arch", type(data).__name__, "a JSON object")
        _check_keys(data, _TOP_KEYS, "arch")
        if data.get("format") != FORMAT:
            raise _fail("format", data.get("format"), f'"{FORMAT}"')
        if data.get("version") != VERSION or isinstance(data.get("version"), bool):
            raise _fail("version", data.get("version"), f"{VERSION} (format {FORMAT} version {VERSION})")
        spec = _check_backbone(data.get("backbone"))
        convs_raw = data.get("convs", {})
        if not isinstance(convs_raw, Mapping):
            raise _fail("convs", convs_raw, "an object mapping conv names to transformations")
        convs: dict[str, ConvTransform] = {}
        for name, raw in convs_raw.items():
            if name not in spec.convs:
                raise _unknown_conv(spec, name)
            convs[name] = _parse_transform(raw, spec.convs[name], f'convs["{name}"]')
        return cls(backbone=spec.name, convs=convs, provenance=data.get("provenance"))

    def to_dict(self) -> dict[str, Any]:
        convs: dict[str, Any] = {}
        for name, ct in self.convs.items():
            entry: dict[str, Any] = {
                "branches": [{"dilation": list(b.dilation), "channels": b.channels} for b in ct.branches]
            }
            if ct.permutation is not None:
                entry["permutation"] = list(ct.permutation)
            convs[name] = entry
        out: dict[str, Any] = {"format": FORMAT, "version": VERSION, "backbone": self.backbone, "convs": convs}
        if self.provenance is not None:
            out["provenance"] = self.provenance
        return out

    def dumps(self) -> str:
        """Canonical text: stable key order, one branch per line, lists of numbers inline."""
        return _dump(self.to_dict(), 0) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file + rename), so an interrupted save leaves no partial file."""
        return atomic_write_text(Path(path), self.dumps())

    # -- convenience ---------------------------------------------------------------------
    def transform(self, name: str) -> ConvTransform | None:
        return self.convs.get(name)

    def branch_mix(self) -> dict[str, dict[tuple[int, int], int]]:
        """Channels per dilation, per stage (unlisted convs count as dilation 1)."""
        mix: dict[str, dict[tuple[int, int], int]] = {}
        for name, info in self.spec.convs.items():
            stage = mix.setdefault(info.stage, {})
            ct = self.convs.get(name)
            branches = ct.branches if ct else (Branch((1, 1), info.out_channels),)
            for b in branches:
                stage[b.dilation] = stage.get(b.dilation, 0) + b.channels
        return mix

    def identity_like(self) -> Arch:
        """The same backbone with no transformation (the baseline)."""
        return Arch(backbone=self.backbone)


def load_arch(path: str | os.PathLike[str]) -> Arch:
    """Read and validate an arch file; every problem is an `ArchError` naming the field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArchError(f"arch file: got {str(p)!r}, expected an existing file") from None
    except UnicodeDecodeError:
        raise ArchError(f"arch file: got undecodable bytes in {str(p)!r}, expected UTF-8 JSON") from None
    except OSError as e:  # a directory, no permission ...
        raise ArchError(f"arch file: got {str(p)!r} ({e.strerror or type(e).__name__}), expected a JSON file") from None
    if not text.strip():
        raise ArchError(f"arch file: got an empty file {str(p)!r}, expected a JSON object")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArchError(f"arch file: got invalid JSON in {str(p)!r} (line {e.lineno} column {e.colno}: {e.msg}), "
                        "expected a JSON object") from None
    except (ValueError, RecursionError) as e:  # an int of > 4300 digits, nesting deeper than the parser goes
        raise ArchError(f"arch file: got unparsable JSON in {str(p)!r} ({e}), expected a JSON object") from None
    if isinstance(data, list):  # the shape of a published IC-Conv pattern: point to the importer
        raise ArchError(f"arch file: got a JSON list in {str(p)!r} (an IC-Conv dilation pattern?), expected a JSON "
                        f"object; {_ic_conv_hint(p, data)}")
    return Arch.from_dict(data)


def _ic_conv_hint(p: Path, pattern: list) -> str:
    """The `natsdeploy convert` command that imports `pattern`, with the backbone whose 3x3 convs it fits
    (one entry per conv, counts summing to its width), so the printed command runs as printed."""
    def fits(spec: BackboneSpec) -> bool:
        return len(pattern) == len(spec.convs) and all(
            isinstance(e, dict) and sum(v for v in e.values() if isinstance(v, int)) == info.out_channels
            for e, info in zip(pattern, spec.convs.values()))

    names = [name for name, spec in BACKBONES.items() if fits(spec)]
    backbone = names[0] if names else "resnet50"
    out = shlex.quote(f"{p.stem}_{backbone}.json")  # into the working folder (the pattern's may be read-only)
    command = f"natsdeploy convert --from ic-conv {shlex.quote(str(p))} --backbone {backbone} -o {out}"
    if names:
        return f"import it with: {command}" + (f" (it also fits {', '.join(names[1:])})" if names[1:] else "")
    sizes = ", ".join(f"{name} {len(spec.convs)}" for name, spec in BACKBONES.items())
    return (f"its {len(pattern)} entries fit no backbone's 3x3 convs ({sizes}), so `{command}` would refuse it")


# -- validation helpers ------------------------------------------------------------------
def _check_keys(obj: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
    for k in obj:
        if k not in allowed:
            raise _fail(f"{path}.{k}" if path != "arch" else str(k), "an unknown key", f"only keys {list(allowed)}")


def _check_backbone(name: Any) -> BackboneSpec:
    if not isinstance(name, str) or name not in BACKBONES:
        raise _fail("backbone", name, f"one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def _unknown_conv(spec: BackboneSpec, name: Any) -> ArchError:
    hint = "a 3x3 conv of " + spec.name + " such as " + ", ".join(list(spec.convs)[:2]) + f" ({len(spec.convs)} in all)"
    return _fail(f"convs[{json.dumps(name)}]", name, hint)


def _parse_dilation(v: Any, path: str) -> tuple[int, int]:
    if _is_int(v):
        if v < 1:
            raise _fail(path, v, "a positive int or a pair [dh, dw] of positive ints")
        return (v, v)
    if isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2 and all(_is_int(x) and x >= 1 for x in v):
        return (int(v[0]), int(v[1]))
    raise _fail(path, v, "a positive int or a pair [dh, dw] of positive ints")


def _parse_transform(raw: Any, info: ConvInfo, path: str) -> ConvTransform:
    if not isinstance(raw, Mapping):
        raise _fail(path, raw, 'an object with "branches" and optional "permutation"')
    _check_keys(raw, _CONV_KEYS, path)
    if "branches" not in raw:
        raise _fail(f"{path}.branches", None, "a non-empty list of branches")
    braw = raw["branches"]
    if not isinstance(braw, list) or not braw:
        raise _fail(f"{path}.branches", braw, "a non-empty list of branches")
    branches = []
    for i, b in enumerate(braw):
        bp = f"{path}.branches[{i}]"
        if not isinstance(b, Mapping):
            raise _fail(bp, b, 'an object {"dilation": ..., "channels": ...}')
        _check_keys(b, _BRANCH_KEYS, bp)
        for k in _BRANCH_KEYS:
            if k not in b:
                raise _fail(f"{bp}.{k}", None, f"a value for required key {k!r}")
        ch = b["channels"]
        if not _is_int(ch) or ch < 1:
            raise _fail(f"{bp}.channels", ch, "a positive int")
        branches.append(Branch(_parse_dilation(b["dilation"], f"{bp}.dilation"), ch))
    perm = raw.get("permutation")
    if perm is not None:
        if not isinstance(perm, list) or not all(_is_int(x) for x in perm):
            raise _fail(f"{path}.permutation", perm, f"a list of {info.out_channels} distinct ints")
        perm = tuple(perm)
    ct = ConvTransform(tuple(branches), perm)
    _check_transform(ct, info, path)
    return ct


def _check_transform(ct: ConvTransform, info: ConvInfo, path: str) -> None:
    """Rules that hold for parsed and code-built transformations alike."""
    if not ct.branches:
        raise _fail(f"{path}.branches", [], "a non-empty list of branches")
    for i, b in enumerate(ct.branches):
        d = b.dilation
        if not (isinstance(d, tuple) and len(d) == 2 and all(_is_int(x) and x >= 1 for x in d)):
            raise _fail(f"{path}.branches[{i}].dilation", d, "a pair of positive ints")
        if not _is_int(b.channels) or b.channels < 1:
            raise _fail(f"{path}.branches[{i}].channels", b.channels, "a positive int")
    total = ct.out_channels
    if total != info.out_channels:
        raise _fail(f"{path}.branches[*].channels", f"sum {total}",
                    f"channels summing to {info.out_channels} (out_channels of {info.name})")
    k = info.channels_per_group
    if info.groups > 1:
        for i, b in enumerate(ct.branches):
            if b.channels % k:
                raise _fail(f"{path}.branches[{i}].channels", b.channels,
                            f"a multiple of {k} (channels per conv group; {info.name} has groups={info.groups})")
    if ct.permutation is None:
        return
    perm = ct.permutation
    n = info.out_channels
    pp = f"{path}.permutation"
    if not info.permutable:
        raise _fail(pp, f"a permutation of {len(perm)} ints",
                    f"no permutation: {info.name} feeds the residual add, so its channel order is fixed")
    if len(perm) != n:
        raise _fail(pp, f"a list of length {len(perm)}", f"a permutation of range({n})")
    if sorted(perm) != list(range(n)):
        bad = next((x for x in perm if not 0 <= x < n), None)
        if bad is not None:
            raise _fail(pp, f"entry {bad}", f"distinct ints in range({n})")
        dup = next(x for x in perm if perm.count(x) > 1)
        raise _fail(pp, f"entry {dup} repeated", f"distinct ints in range({n})")
    if info.groups > 1:
        for blk in range(0, n, k):
            start = perm[blk]
            if start % k or list(perm[blk:blk + k]) != list(range(start, start + k)):
                raise _fail(f"{pp}[{blk}:{blk + k}]", list(perm[blk:blk + k]),
                            f"one whole conv group in order (k={k} consecutive ints starting at a multiple of {k})")


# -- canonical writer --------------------------------------------------------------------
def _dump(obj: Any, level: int) -> str:
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(obj, Mapping):
        if not obj:
            return "{}"
        if level >= 3 and all(not isinstance(v, (Mapping, list)) or _flat_list(v) for v in obj.values()):
            return "{" + ", ".join(f"{json.dumps(k)}: {_dump(v, level + 1)}" for k, v in obj.items()) + "}"
        items = [f"{inner}{json.dumps(k)}: {_dump(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if _flat_list(obj):
            return "[" + ", ".join(json.dumps(v) for v in obj) + "]"
        return "[\n" + ",\n".join(inner + _dump(v, level + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj)


def _flat_list(v: Any) -> bool:
    return isinstance(v, list) and all(not isinstance(x, (Mapping, list)) for x in v)


def stable_hash(arch: Arch) -> str:
    import hashlib

    return hashlib.sha256(arch.dumps().encode()).hexdigest()[:16]

