"""Atomic file writes: a temp file in the target's folder, flushed to disk, then renamed into place.

Files natsdeploy writes one at a time (checkpoints, arch files, reports, figures) go through here, so an
interrupted run (Ctrl-C, SIGKILL, a full disk) leaves each either as it was or complete, never half-written.
`natsdeploy export` writes its set of files into a staging folder and renames each into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "read_json"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(f)` on a temp file beside `path`, fsync it and rename it onto `path`.

    Writers stream straight to the file (`torch.save(obj, f)`, `fig.savefig(f)`), so a large
    checkpoint is never held twice in memory. `write` must leave `f` open. If it raises, the temp
    file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike[str], *, field: str, expected: str):
    """The JSON value in `path`; a missing, unreadable or invalid file is one `ArchError` line naming `field`
    (e.g. "rf-next file") and what was `expected` (e.g. "a JSON object")."""
    import json

    from natsdeploy.errors import ArchError

    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchError(f"{field}: got {str(p)!r}, expected an existing file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ArchError(f"{field}: got invalid JSON in {str(p)!r} ({e}), expected {expected}") from None
    except OSError as e:  # a folder, no permission
        raise ArchError(f"{field}: got {str(p)!r} ({e.strerror or type(e).__name__}), expected a JSON file") from None
