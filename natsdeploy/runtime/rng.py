"""Every RNG a loop draws from, seeded, saved and restored, so a resumed run is bit-identical."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["seed_all", "rng_state", "set_rng_state", "rng_state_problem", "rng_state_from_legacy"]


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG a loop draws from (torch CPU/CUDA, numpy, python), for bit-identical resume.

    Only tensors, lists, numbers and strings, so a checkpoint holding it loads with
    `torch.load(weights_only=True)`: torch states are uint8 tensors; numpy's legacy MT19937 state is
    {"keys": 624 ints, "pos", "has_gauss", "cached_gaussian"}; python's is {"version", "internal": 625
    ints, "gauss_next"}.
    """
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (check it first with `rng_state_problem` when it comes from a file)."""
    n = state["numpy"]
    p = state["python"]
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state_problem(state: Any) -> str | None:
    """None when `state` has the layout of `rng_state()`, else what is wrong ('numpy.keys: ...')."""
    if not isinstance(state, dict):
        return f"got {type(state).__name__}, expected a dict with 'torch", "numpy' and 'python'"
    for key in ("torch", "numpy", "python"):
        if key not in state:
            return f"{key}: missing, expected the {key} RNG state"
    if not _byte_tensor(state["torch"]):
        return "torch: expected a 1-D uint8 tensor (torch.get_rng_state())"
    if "cuda" in state and not (isinstance(state["cuda"], list) and all(_byte_tensor(t) for t in state["cuda"])):
        return "cuda: expected a list of 1-D uint8 tensors (torch.cuda.get_rng_state_all())"
    n, p = state["numpy"], state["python"]
    if not (isinstance(n, dict) and _int_list(n.get("keys"), 624, 2**32) and _is_int(n.get("pos"))
            and 0 <= n["pos"] <= 624 and n.get("has_gauss") in (0, 1) and isinstance(n.get("cached_gaussian"), float)):
        return ("numpy: expected {'keys': 624 ints < 2**32, 'pos': 0..624, 'has_gauss': 0 or 1, "
                "'cached_gaussian': float}")
    if not (isinstance(p, dict) and _is_int(p.get("version")) and _int_list(p.get("internal"), 625, 2**32 + 1)
            and (p.get("gauss_next") is None or isinstance(p.get("gauss_next"), float))):
        return "python: expected {'version': int, 'internal': 625 ints, 'gauss_next': float or None}"
    return None


def rng_state_from_legacy(state: dict[str, Any]) -> dict[str, Any]:
    """A state saved by natsdeploy 0.1 (numpy's tuple with an ndarray, python's tuple) in `rng_state`'s layout."""
    out = dict(state)
    n, p = state.get("numpy"), state.get("python")
    if isinstance(n, tuple) and len(n) == 5:
        out["numpy"] = {"keys": np.asarray(n[1]).astype(np.int64).tolist(), "pos": n[2], "has_gauss": n[3],
                        "cached_gaussian": float(n[4])}
    if isinstance(p, tuple) and len(p) == 3 and isinstance(p[1], tuple):
        out["python"] = {"version": p[0], "internal": list(p[1]), "gauss_next": p[2]}
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_list(v: Any, n: int, hi: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(_is_int(x) and 0 <= x < hi for x in v)


def _byte_tensor(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 and t.device.type == "cpu"
