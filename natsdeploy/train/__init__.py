"""Detector training on a NATS-transformed (or baseline) backbone under one recipe.

- `train(cfg: TrainConfig, log=print) -> TrainResult`: the paper's 1x schedule by default (13 epochs,
  lr / 10 after epochs 8 and 11, linear warm-up), COCO AP on the val split after every epoch,
  a checkpoint every epoch (`--resume` continues bit-identically), DDP under torchrun.
- `load_detector_checkpoint(path) -> (detector in eval mode, arch, meta)`: what `natsdeploy parity` reads.
- `backbone_weights(path) -> torchvision-layout state dict` of the trained backbone (a `--weights` file).

`import natsdeploy.train` is cheap: torch loads on first use of what needs it.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "TrainConfig": "natsdeploy.train.loop",
    "TrainResult": "natsdeploy.train.loop",
    "CheckpointError": "natsdeploy.errors",
    "train": "natsdeploy.train.loop",
    "load_detector_checkpoint": "natsdeploy.models.trained",
    "lr_factor": "natsdeploy.train.loop",
    "backbone_weights": "natsdeploy.models.trained",
    "CHECKPOINT_FORMAT": "natsdeploy.train.loop",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'natsdeploy.train' has no attribute {name!r}")
