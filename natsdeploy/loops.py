"""Plumbing shared by the search and train loops: process group, RNG state, batches, progress, BN sync.

Kept in one place so a search and a retrain seed, checkpoint, move batches and synchronise under
DDP identically.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["dist_info", "seed_all", "rng_state", "set_rng_state", "rng_state_problem", "rng_state_from_legacy",
           "to_device", "progress", "wrap_ddp", "average_bn_buffers",
           "check_resume", "train_step", "run_distributed"]


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


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
        return f"got {type(state).__name__}, expected a dict with 'torch', 'numpy' and 'python'"
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


def to_device(images, targets, device):
    """A detection batch (list of images, list of target dicts) on `device`."""
    return ([i.to(device) for i in images],
            [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets])


def progress(total: int, desc: str, *, enabled: bool):
    """A tqdm bar, or None when disabled (tests, non-zero ranks)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


@torch.no_grad()
def average_bn_buffers(model: nn.Module, world: int) -> None:
    """Average trainable BatchNorm running statistics over the ranks (timm's `distribute_bn`).

    DDP synchronises gradients, not buffers: it broadcasts rank 0's buffers before each forward, so
    after the last step of an epoch the ranks' running statistics differ by that step's update.
    Averaging before evaluation and checkpointing makes every rank's model identical. No-op for one
    process, under SyncBatchNorm (already equal), or without BatchNorm (FrozenBatchNorm2d).
    """
    if world <= 1:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                torch.distributed.all_reduce(buf)
                buf.div_(world)


def wrap_ddp(model: nn.Module, device: torch.device, world: int, *,
             find_unused: bool = False) -> tuple[nn.Module, nn.Module]:
    """(model, net to call): DDP over `model` when world > 1, else the model itself.

    `find_unused`: some parameters get no gradient in a step (a gumbel search's undrawn replicas).

    On CUDA trainable BatchNorm becomes SyncBatchNorm (statistics over the global batch); on CPU
    SyncBatchNorm does not run, so BN statistics are per rank and `average_bn_buffers` reconciles them.
    """
    if world <= 1:
        return model, model
    cuda = device.type == "cuda"
    if cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None,
                                                      find_unused_parameters=find_unused)


def check_resume(saved: dict[str, Any], current: dict[str, Any], *, path: Any) -> None:
    """Refuse to resume a checkpoint written under other settings that shape the model or optimiser.

    `saved` / `current`: setting name -> value (as the checkpoint recorded it / as this run has it).
    Raises UsageError (one line, exit 2) naming the first setting that differs.
    """
    from natsdeploy.shapes import UsageError

    for key, want in current.items():
        got = saved.get(key)
        if got != want:
            raise UsageError(f"--resume: {path} was written with {key}={got!r}, expected {want!r} as this run has it "
                             "(resume with the same settings, or use a new --out)")


def train_step(net: nn.Module, opt: torch.optim.Optimizer, scaler, images, targets, *, cuda: bool,
               hint: str = "lower the learning rate") -> tuple[float, dict[str, float]]:
    """One detector step: zero every gradient of `net`, forward (AMP on CUDA), backward, step `opt`.

    Returns (total loss, each loss). A non-finite loss raises FloatingPointError (one line, with `hint`)
    before anything is updated. Zeroing all of `net`'s gradients matters for the search, whose two
    optimisers each step only their own parameters.
    """
    net.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        losses = net(images, targets)
        loss = sum(losses.values())
    parts = {k: float(v.detach()) for k, v in losses.items()}
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {float(loss.detach())} ({parts}); {hint}")
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return float(loss.detach()), parts


def run_distributed(fn, device: str) -> tuple[Any, int]:
    """Call `fn(device)` inside a process group when launched by torchrun (WORLD_SIZE > 1), else plainly.

    NCCL on CUDA (each rank on cuda:LOCAL_RANK), gloo on CPU; the group is torn down afterwards.
    Returns (fn's result, exit code): a diverged run (FloatingPointError) prints one line and gives 1.
    """
    import os
    import sys

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        torch.distributed.init_process_group(backend="nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
    try:
        return fn(device), 0
    except FloatingPointError as e:  # diverged: a failed run, not a bad input (exit 1, one line, no traceback)
        print(f"natsdeploy: error: {e}", file=sys.stderr)
        return None, 1
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
