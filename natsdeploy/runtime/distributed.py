"""The process group: rank and world, DDP wrapping, BatchNorm buffer averaging, torchrun launch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["dist_info", "average_bn_buffers", "wrap_ddp", "run_distributed"]


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


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
