"""Search and train checkpoints: the one reader and writer of both kinds, against a declared schema.

Safe: a file is read only with `torch.load(weights_only=True)`, so it can hold tensors, numbers,
strings and plain containers and nothing that runs code when loaded; anything else is refused with
one line (`CheckpointError`) before any of it is built. Checked: every field of `SCHEMAS[kind]` is
present (an `optional` one may be absent) and of its type, else one line naming the key. Atomic:
written to a temp file in the same folder, then renamed over the old one, so a killed run leaves
the previous checkpoint or the new one.

Versions: "/2" (this one). "/1" (natsdeploy 0.1) stored numpy's RNG state as an ndarray; it is read
with exactly numpy's array reconstruction (and pathlib paths) allow-listed, then upgraded in memory.
A file that needs any other object is refused, with the way forward in the message.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from natsdeploy.arch import Arch
from natsdeploy.errors import ArchError, CheckpointError, InputError
from natsdeploy.files import atomic_write
from natsdeploy.runtime.rng import rng_state_from_legacy, rng_state_problem

__all__ = ["SEARCH", "TRAIN", "FORMATS", "LEGACY_FORMATS", "SCHEMAS", "Field", "save_checkpoint",
           "load_checkpoint", "check_checkpoint", "safe_torch_load", "fit_state_dict", "restore_state"]

SEARCH, TRAIN = "search", "train"
FORMATS = {SEARCH: "natsdeploy-search-checkpoint/2", TRAIN: "natsdeploy-train-checkpoint/2"}
LEGACY_FORMATS = {SEARCH: "natsdeploy-search-checkpoint/1", TRAIN: "natsdeploy-train-checkpoint/1"}
_REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One checkpoint key: `check(value)` is True when valid; False or a detail string when not."""

    key: str
    expected: str
    check: Callable[[Any], bool | str]
    legacy_default: Any = _REQUIRED  # the value a "/1" file that lacks the key meant
    optional: bool = False  # a file of any version may lack it (checked only when present)


def _int(v: Any, lo: int = 0, hi: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def _plain(v: Any, depth: int = 0) -> bool:
    """JSON-like: str/int/float/bool/None, lists/tuples and dicts with str or int keys, nested."""
    if depth > 32:
        return False
    if v is None or isinstance(v, (str, int, float, bool)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, (str, int)) and _plain(x, depth + 1) for k, x in v.items())
    return False


def _state_dict(v: Any) -> bool:
    return isinstance(v, Mapping) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())


def _optimizer(v: Any) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list)
            and all(isinstance(g, dict) for g in v["param_groups"]))


def _str_dict(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


def _plain_dict(v: Any) -> bool:
    return _str_dict(v) and _plain(v)


def _records(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(r, dict) and _plain(r) for r in v)


def _rng(v: Any) -> bool | str:
    return rng_state_problem(v) or True


def _arch(v: Any) -> bool | str:
    try:
        Arch.from_dict(v)
    except ArchError as e:
        return str(e)
    return True


def _labels(v: Any) -> bool:
    return isinstance(v, dict) and all(_int(k, 1) and _int(c) for k, c in v.items())


def _search_config(v: Any) -> bool | str:
    if not _plain_dict(v):
        return False
    for key in ("backbone", "preset", "detector", "data"):
        if not isinstance(v.get(key), str):
            return f"its {key!r} is {v.get(key)!r}, not a string"
    if not (isinstance(v.get("stages"), (list, tuple)) and all(isinstance(s, str) for s in v["stages"])):
        return "its 'stages' is not a list of stage names"
    for key in ("groups", "channels_per_group", "align"):
        if v.get(key) is not None and not _int(v[key], 1):
            return f"its {key!r} is {v[key]!r}, not an int >= 1 or None"
    if not _str_dict(v.get("detector_kwargs", {})):
        return "its 'detector_kwargs' is not a dict"
    return True


_COMMON = (
    Field("model", "a state dict (str -> tensor)", _state_dict),
    Field("scaler", "a GradScaler state dict", _str_dict),
    Field("rng", "an RNG state (natsdeploy.runtime.rng.rng_state)", _rng),
    Field("epoch", "an int >= 0 (epochs done)", _int),
    Field("pretrained", "a bool", lambda v: isinstance(v, bool), legacy_default=True),
)
SCHEMAS: dict[str, tuple[Field, ...]] = {
    SEARCH: _COMMON + (
        Field("opt_w", "an optimizer state dict (weights, SGD)", _optimizer),
        Field("opt_a", "an optimizer state dict (alphas, Adam)", _optimizer),
        Field("sched", "a scheduler state dict", _str_dict),
        Field("history", "a list of per-epoch dicts of plain values", _records),
        Field("config", "a dict of plain values (the SearchConfig)", _search_config),
        Field("credit", "a dict of conv name -> tensor (gumbel 'local' estimator baselines)", _state_dict,
              optional=True),
    ),
    TRAIN: _COMMON + (
        Field("arch", "an arch dict", _arch),
        Field("detector", "a detector name", lambda v: isinstance(v, str)),
        Field("num_classes", "an int >= 2 (background included)", lambda v: _int(v, 2)),
        Field("label_to_cat_id", "a dict of int labels >= 1 -> int COCO category ids", _labels),
        Field("min_size", "an int >= 1", lambda v: _int(v, 1)),
        Field("max_size", "an int >= 1", lambda v: _int(v, 1)),
        Field("detector_kwargs", "a dict of detector options", _plain_dict, legacy_default={}),
        Field("trainable_layers", "None or an int in 0..5", lambda v: v is None or _int(v, 0, 5),
              legacy_default=None),
        Field("optimizer", "an optimizer state dict", _optimizer),
        Field("scheduler", "a scheduler state dict", _str_dict),
        Field("metrics", "a list of per-epoch dicts of plain values", _records),
        Field("config", "a dict of plain values (the TrainConfig)", _plain_dict),
    ),
}


def _writer(kind: str) -> str:
    return f"OUT/checkpoint.pth written by natsdeploy {kind}"


def _shown(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"a {str(v.dtype).replace('torch.', '')} tensor of shape {list(v.shape)}"
    if isinstance(v, Mapping):
        keys = list(v)[:4]
        return f"a {type(v).__name__} with keys {keys}{' ...' if len(v) > 4 else ''}"
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def check_checkpoint(ck: Any, kind: str, *, where: str) -> None:
    """Raise CheckpointError (one line: `where`, key, got, expected) at the first field off `SCHEMAS[kind]`."""
    if not isinstance(ck, dict):
        raise CheckpointError(f"{where}: got {_shown(ck)}, expected a dict ({_writer(kind)})")
    for f in SCHEMAS[kind]:
        if f.key not in ck and f.optional:
            continue
        if f.key not in ck:
            raise CheckpointError(f"{where}: key {f.key!r}: missing, expected {f.expected} "
                                  f"({_writer(kind)}, format {FORMATS[kind]})")
        verdict = f.check(ck[f.key])
        if verdict is not True:
            detail = f" ({verdict})" if isinstance(verdict, str) else ""
            raise CheckpointError(f"{where}: key {f.key!r}: got {_shown(ck[f.key])}, expected {f.expected}{detail}")


def save_checkpoint(path: str | os.PathLike, kind: str, payload: Mapping[str, Any]) -> Path:
    """Write `payload` (every required key of `SCHEMAS[kind]`, optional ones if any) atomically.

    A payload off the schema is a bug of the caller: ValueError, and nothing is written.
    """
    ck = {"format": FORMATS[kind], **payload}
    try:
        check_checkpoint(ck, kind, where=f"writing {path}")
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    return atomic_write(path, lambda f: torch.save(ck, f))  # streamed: a large checkpoint is never held twice


# numpy's ndarray reconstruction (the RNG state of "/1" files) and pathlib paths: rebuilt from bytes and
# strings only, nothing they construct runs code. Allowed for reading legacy files, never anything else.
_RECONSTRUCT = (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct
_LEGACY_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32)),
                   (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
                   (_RECONSTRUCT, "numpy._core.multiarray._reconstruct"),
                   pathlib.PosixPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]


def _torch_load(p: Path, allow: list | None) -> Any:
    with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; the error says enough
        warnings.simplefilter("ignore")
        if allow is None:
            return torch.load(p, map_location="cpu", weights_only=True)
        with torch.serialization.safe_globals(allow):
            return torch.load(p, map_location="cpu", weights_only=True)


def _refusal(e: Exception) -> str | None:
    """What made weights_only refuse the file (None: the file is not a torch.save file at all)."""
    msg = str(e)
    m = re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"got <class '([\w.]+)'>", msg)
    if m:
        return m.group(1)
    return "an object other than tensors and plain containers" if "Weights only load failed" in msg and \
        "Unsupported operand" not in msg else None


def safe_torch_load(path: str | os.PathLike, *, flag: str, expected: str, error: type[InputError] = CheckpointError,
                    legacy: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on CPU; every failure is one line of `error` naming `flag`.

    `legacy=True` also allows what "/1" checkpoints hold (numpy arrays, paths), on a second try only.
    A file whose pickle would build anything else is refused: it is never unpickled unsafely.
    """
    p = Path(path)
    if not p.exists():
        raise error(f"{flag}: got {str(p)!r}, expected an existing file ({expected})")
    if not p.is_file():
        raise error(f"{flag}: got {str(p)!r}, a folder, expected a file ({expected})")
    try:
        return _torch_load(p, None)
    except pickle.UnpicklingError as e:
        first = e
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError ... on non-checkpoint bytes
        raise error(f"{flag}: got {str(p)!r} that torch.load cannot read ({type(e).__name__}), "
                    f"expected {expected}") from None
    if legacy and _refusal(first) is not None:
        try:
            return _torch_load(p, _LEGACY_GLOBALS)
        except Exception as e:  # noqa: BLE001 (reported below, one line)
            first = e
    what = _refusal(first)
    if what is None:
        raise error(f"{flag}: got {str(p)!r} that torch.load cannot read (UnpicklingError), expected {expected}")
    raise error(f"{flag}: got {str(p)!r}, which would build {what} when loaded (not a tensor, number, string or "
                f"plain container), expected {expected}; not loaded, since such a file can run code"
                + ("; if it is a checkpoint of an older natsdeploy, re-run the search or train that wrote it with "
                   "this version" if legacy else ""))


def load_checkpoint(path: str | os.PathLike, kind: str, *, flag: str = "checkpoint") -> dict[str, Any]:
    """A `kind` checkpoint ("search" or "train"), loaded safely on CPU and checked against `SCHEMAS[kind]`.

    Every problem (missing file, other bytes, unsafe pickle, other kind or version, missing or wrong
    key) is a CheckpointError of one line starting with `flag`.
    """
    where = f"{flag}: {path}"
    ck = safe_torch_load(path, flag=flag, expected=_writer(kind), legacy=True)
    fmt = ck.get("format") if isinstance(ck, dict) else None
    if fmt == LEGACY_FORMATS[kind]:
        ck = _upgrade_v1(ck, kind)
    elif fmt != FORMATS[kind]:
        raise CheckpointError(f"{flag}: got {str(path)!r}, {_format_story(fmt, ck, kind)}")
    elif _needs_legacy_globals(ck):
        raise CheckpointError(f"{where}: got numpy arrays or paths in a {fmt} checkpoint, expected only tensors "
                              "and plain values (re-create it with this version)")
    check_checkpoint(ck, kind, where=where)
    return ck


def _format_story(fmt: Any, ck: Any, kind: str) -> str:
    other = TRAIN if kind == SEARCH else SEARCH
    if fmt in (FORMATS[other], LEGACY_FORMATS[other]):
        return f"a {other} checkpoint, expected a {kind} checkpoint ({_writer(kind)})"
    m = re.fullmatch(rf"natsdeploy-{kind}-checkpoint/(\d+)", fmt) if isinstance(fmt, str) else None
    if m and int(m.group(1)) > int(FORMATS[kind].rsplit("/", 1)[1]):
        return f"of format {fmt!r}, newer than this natsdeploy reads ({FORMATS[kind]!r}); upgrade natsdeploy"
    got = f"of format {fmt!r}" if isinstance(ck, dict) else f"holding {_shown(ck)}"
    return f"{got}, expected format {FORMATS[kind]!r} ({_writer(kind)})"


def _needs_legacy_globals(v: Any, depth: int = 0) -> bool:
    if isinstance(v, (np.ndarray, pathlib.PurePath)):
        return True
    if depth < 8 and isinstance(v, dict):
        return any(_needs_legacy_globals(x, depth + 1) for x in v.values())
    if depth < 8 and isinstance(v, (list, tuple)):
        return any(_needs_legacy_globals(x, depth + 1) for x in v)
    return False


def _upgrade_v1(ck: dict[str, Any], kind: str) -> dict[str, Any]:
    """A "/1" checkpoint in the "/2" layout: RNG states as lists, paths as strings, absent keys at their meaning."""
    out = dict(ck, format=FORMATS[kind])
    if isinstance(out.get("rng"), dict):
        out["rng"] = rng_state_from_legacy(out["rng"])
    if isinstance(out.get("config"), dict):
        out["config"] = {k: (os.fspath(v) if isinstance(v, pathlib.PurePath) else v) for k, v in out["config"].items()}
    for f in SCHEMAS[kind]:
        if f.key not in out and f.legacy_default is not _REQUIRED:
            out[f.key] = f.legacy_default
    return out


def fit_state_dict(saved: Mapping[str, torch.Tensor], module: torch.nn.Module, *, where: str,
                   key: str = "model") -> None:
    """Raise CheckpointError (one line) unless `saved` has exactly `module`'s keys and shapes."""
    want = module.state_dict()
    missing = [k for k in want if k not in saved]
    extra = [k for k in saved if k not in want]
    if missing or extra:
        first = f"{missing[0]!r} missing" if missing else f"{extra[0]!r} unexpected"
        raise CheckpointError(f"{where}: key {key!r}: got {first} ({len(missing)} missing, {len(extra)} unexpected), "
                              "expected the state dict of the model this run builds (same settings)")
    for k, v in want.items():
        if tuple(saved[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{where}: key {key!r}: got {k!r} of shape {list(saved[k].shape)}, "
                                  f"expected {list(v.shape)} as this run builds it")


def restore_state(key: str, load: Callable[[Any], Any], value: Any, *, where: str) -> None:
    """`load(value)` (an optimizer's or scheduler's load_state_dict); a mismatch is one CheckpointError line."""
    try:
        load(value)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
        detail = (str(e).strip().splitlines() or [""])[0][:120]
        raise CheckpointError(f"{where}: key {key!r}: does not fit this run ({type(e).__name__}: {detail}), "
                              "expected the state written by the same settings") from None
