"""One detector training step, a batch moved to its device, and the progress bar the loops show."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["to_device", "progress", "train_step"]


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
