"""Reading a `--weights` file safely: what kind of file it is (from its bytes, never its name) and its contents.

Read only with `torch.load(weights_only=True)` or `safetensors`; nothing in a file can run code. Training
checkpoints of other tools carry a few plain, code-free objects beside the weights; those, and only those,
are admitted through a scoped allow-list (`torch.serialization.safe_globals` around that one load, never
a process-wide `add_safe_globals`), most of them mapped onto data-only stand-ins defined here:

- torchvision's reference scripts (references/classification/train.py, references/detection/train.py) and
  timm's `CheckpointSaver` (timm/utils/checkpoint_saver.py) save `args`, an `argparse.Namespace`;
- mmengine's `Runner.save_checkpoint` (open-mmlab/mmengine mmengine/runner/runner.py; written by
  mmengine/runner/checkpoint.py `save_checkpoint`, a `torch.save`) stores `message_hub`, the
  `MessageHub.state_dict()` of mmengine/logging/message_hub.py: `HistoryBuffer` objects
  (mmengine/logging/history_buffer.py, numpy arrays inside; its `__getstate__` adds the class's statistics
  methods, which pickle protocol 2 writes as `getattr(HistoryBuffer, 'min')`), numpy scalars, and
  `param_schedulers` whose milestones are a `collections.Counter`;
- natsdeploy "/1" train checkpoints (numpy RNG state, pathlib paths).

Plain pickles (detectron2's model-zoo `.pkl`, read there with `pickle.load` in
detectron2/checkpoint/detection_checkpoint.py `_load_file`) are never unpickled: their opcodes are scanned
(`pickletools`, which builds nothing) only to say what the file is and how to convert it.
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import pickle
import pickletools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from natsdeploy.errors import WeightsError

__all__ = ["ReadFile", "read_weights_file", "HistoryBufferData", "EXPECTED_FILE"]

EXPECTED_FILE = "a .pth written by torch.save or a .safetensors file"
_LEGACY_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save's pre-1.6 format opens with this pickled int
_SNIFF_BYTES = 1 << 20


@dataclass(frozen=True)
class ReadFile:
    """A weights file's contents and how they were read (`container`: e.g. 'torch.save zip', 'safetensors')."""

    obj: Any
    container: str
    admitted: tuple[str, ...] = ()
    """The allow-listed objects the file needed (e.g. argparse.Namespace), for the summary line."""


class HistoryBufferData:
    """Data-only stand-in for mmengine's `HistoryBuffer`: keeps the pickled state as a dict, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _attribute_name(obj: Any, name: Any) -> str:
    """Stand-in for `builtins.getattr` in a scoped load: names the attribute instead of fetching it."""
    if obj is not HistoryBufferData or not isinstance(name, str):
        raise pickle.UnpicklingError(f"getattr on {obj!r} is not admitted")
    return f"HistoryBuffer.{name}"


def _numpy_globals() -> list:
    core = np._core if hasattr(np, "_core") else np.core
    out: list = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(core.multiarray._reconstruct, f"{module}._reconstruct"), (core.multiarray.scalar, f"{module}.scalar")]
    out += sorted({type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                                 np.uint32, np.uint64, np.float16, np.float32, np.float64)},
                  key=lambda t: t.__name__)
    return out


# What the scoped load admits: plain data, or data-only stand-ins under the names the files use.
_DATA_ONLY = [
    argparse.Namespace,
    (HistoryBufferData, "mmengine.logging.history_buffer.HistoryBuffer"),
    (_attribute_name, "builtins.getattr"),
    (dict, "collections.Counter"),
    pathlib.PosixPath, pathlib.PurePosixPath, pathlib.PureWindowsPath,
    *_numpy_globals(),
]


def read_weights_file(path: Path, *, flag: str) -> ReadFile:
    """The contents of `path`, read safely; every failure is one `WeightsError` line naming `flag`."""
    shown = str(path)
    if not path.exists():
        raise WeightsError(f"{flag}: got {shown!r}, expected an existing .pth or .safetensors file, or 'imagenet'")
    if not path.is_file():
        raise WeightsError(f"{flag}: got {shown!r}, a folder, expected {EXPECTED_FILE}")
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[2:2 + len(_LEGACY_MAGIC)] == _LEGACY_MAGIC):
        return _torch_load(path, flag=flag)
    if _is_safetensors(head, path.stat().st_size):
        return _safetensors_load(path, flag=flag)
    if head[:1] == b"\x80":
        raise WeightsError(f"{flag}: got {shown!r}, {_plain_pickle_story(head)}")
    raise WeightsError(f"{flag}: got {shown!r} that torch.load cannot read ({_bytes_story(head)}), "
                       f"expected {EXPECTED_FILE}")


def _is_safetensors(head: bytes, size: int) -> bool:
    """safetensors: an 8-byte little-endian header length, then that many bytes of JSON."""
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _bytes_story(head: bytes) -> str:
    if not head:
        return "an empty file"
    try:
        text = head[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return f"not a torch.save zip archive, legacy torch file or safetensors file; it starts with {head[:8]!r}"
    first = (text.strip().splitlines() or [""])[0]
    return f"a text file starting {first[:40]!r}"


def _load(path: Path, allow: list | None) -> Any:
    with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; the error says enough
        warnings.simplefilter("ignore")
        if allow is None:
            return torch.load(path, map_location="cpu", weights_only=True)
        with torch.serialization.safe_globals(allow):  # scoped: removed again when this load ends
            return torch.load(path, map_location="cpu", weights_only=True)


def _refused_global(e: Exception) -> str | None:
    msg = str(e)
    m = re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"got <class '([\w.]+)'>", msg) \
        or re.search(r"unrecognized function <[^>]*?([\w.]+)>", msg)
    return m.group(1) if m else None


def _torch_load(path: Path, *, flag: str) -> ReadFile:
    try:
        return ReadFile(_load(path, None), "torch.save")
    except pickle.UnpicklingError as e:
        first = _refused_global(e)
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError ... on damaged archives
        detail = (str(e).strip().splitlines() or [""])[0][:100]
        raise WeightsError(f"{flag}: got {str(path)!r} that torch.load cannot read ({type(e).__name__}: {detail}), "
                           f"expected {EXPECTED_FILE}") from None
    try:
        obj = _load(path, _DATA_ONLY)
    except Exception as e:  # noqa: BLE001 (reported below, one line)
        what = _refused_global(e) or first or "an object other than tensors and plain containers"
        raise WeightsError(_unsafe_story(path, what, flag)) from None
    return ReadFile(obj, "torch.save", admitted=(first,) if first else ())


def _unsafe_story(path: Path, what: str, flag: str) -> str:
    p = str(path)
    how = (f"if you trust the file, save its weights alone where its library is installed: python -c \"import torch; "
           f"ck = torch.load({p!r}, weights_only=False); torch.save(ck.get('state_dict', ck.get('model', ck)), "
           f"'weights.pth')\" and pass weights.pth")
    if what.startswith(("mmengine.", "mmcv.", "mmdet.")):
        return (f"{flag}: got {p!r}, an mmengine/mmcv checkpoint holding {what} (not a tensor, number, string or "
                f"plain container), expected {EXPECTED_FILE}; not loaded, since such a file can run code; {how}")
    return (f"{flag}: got {p!r}, which would build {what} when loaded (not a tensor, number, string or plain "
            f"container), expected {EXPECTED_FILE}; not loaded, since such a file can run code; {how}")


def _safetensors_load(path: Path, *, flag: str) -> ReadFile:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(f"{flag}: got {str(path)!r}, a .safetensors file, expected the safetensors package to "
                           "read it (pip install safetensors)") from None
    try:
        return ReadFile(load_file(str(path), device="cpu"), "safetensors")
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        detail = (str(e).strip().splitlines() or [""])[0][:100]
        raise WeightsError(f"{flag}: got {str(path)!r} that safetensors cannot read ({detail}), "
                           f"expected {EXPECTED_FILE}") from None


def _pickle_strings(head: bytes, limit: int = 400) -> list[str] | None:
    """The first `limit` strings in a pickle's opcodes (None: not a readable pickle). Nothing is unpickled."""
    out: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(head)):
            if isinstance(arg, str) and op.name != "GLOBAL":
                out.append(arg)
            elif op.name == "GLOBAL":
                out.append(f"GLOBAL {arg}")
            if len(out) >= limit:
                break
    except Exception:  # noqa: BLE001 (truncated at the sniff limit, or not a pickle)
        if not out:
            return None
    return out


def _plain_pickle_story(head: bytes) -> str:
    strings = _pickle_strings(head)
    if strings is None:
        return (f"that torch.load cannot read (not a torch.save zip archive, legacy torch file or safetensors file; "
                f"it starts with {head[:8]!r}), expected {EXPECTED_FILE}")
    d2 = {"__author__", "matching_heuristics", "blobs"} & set(strings) or any(
        re.search(r"(stem\.conv1\.|res\d\.\d+\.conv|res\d_\d+_branch|^conv1_w$|^res_conv1_bn)", s) for s in strings)
    if d2:
        return ("a plain pickle in detectron2's model-zoo format (.pkl: numpy arrays, read there with pickle.load), "
                f"expected {EXPECTED_FILE}; not unpickled, since a pickle can run code; convert it where detectron2 "
                "is installed: DetectionCheckpointer(model).load('model.pkl'); torch.save({'model': model.state_dict()}, "
                "'model.pth'), then pass model.pth (MSRA-initialised models stride in the 1x1 conv, which is refused)")
    return (f"a plain pickle (not written by torch.save), expected {EXPECTED_FILE}; not unpickled, since a pickle can "
            "run code; if you trust it, load it with its library and torch.save its state dict")
