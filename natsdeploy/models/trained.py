"""Trained detectors: what `natsdeploy train` writes, read back as models. The checkpoint (schema-checked,
weights_only), the detector rebuilt from it, and its backbone as a torchvision-layout `--weights` state
dict. Also the detector constructor train uses, so a checkpoint rebuilds exactly the model that was
trained. Here, in the models layer, so train and verify (detection parity) both read it from below."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from natsdeploy.arch import Arch
from natsdeploy.checkpoint import TRAIN, fit_state_dict, load_checkpoint
from natsdeploy.errors import CheckpointError
from natsdeploy.errors import UsageError

__all__ = ["backbone_weights", "build_train_detector", "detector_from_checkpoint", "load_detector_checkpoint",
           "read_checkpoint"]


def build_train_detector(kind: str, arch: Arch, weights: Any, num_classes: int, min_size: int, max_size: int,
                         detector_kwargs: dict, *, pretrained: bool, trainable_layers: int | None) -> nn.Module:
    """The detector `natsdeploy train` trains (and its checkpoints rebuild): `kind` on the arch's backbone."""
    from natsdeploy.models.build import build_backbone
    from natsdeploy.models.detectors import build_detector

    backbone = build_backbone(arch, weights)
    return build_detector(kind, backbone, num_classes=num_classes, pretrained=pretrained, min_size=min_size,
                          max_size=max_size, trainable_layers=trainable_layers, **detector_kwargs)


def read_checkpoint(path: str | os.PathLike, *, flag: str = "--checkpoint") -> dict[str, Any]:
    """A train checkpoint, loaded safely and checked field by field (`natsdeploy.checkpoint.load_checkpoint`)."""
    return load_checkpoint(path, TRAIN, flag=flag)


def load_detector_checkpoint(path: str | os.PathLike, *, device: str = "cpu") -> tuple[nn.Module, Arch, dict]:
    """The trained detector (eval mode, on `device`), its arch, and the checkpoint's metadata.

    `meta`: detector, num_classes (background included), label_to_cat_id, min_size, max_size,
    detector_kwargs, epoch, metrics, config. Raises CheckpointError (one line) for a missing or
    unreadable file or one that is not a natsdeploy train checkpoint.
    """
    return detector_from_checkpoint(read_checkpoint(path), device=device, path=path)


def detector_from_checkpoint(ck: dict[str, Any], *, device: str = "cpu", path: Any = "checkpoint"
                             ) -> tuple[nn.Module, Arch, dict]:
    """`load_detector_checkpoint` for a checkpoint dict already read with `read_checkpoint` (schema-checked)."""
    from natsdeploy.models.detectors import DETECTORS, parse_detector_options

    where = f"--checkpoint: {path}"
    if ck["detector"] not in DETECTORS:
        raise CheckpointError(f"{where}: key 'detector': got {ck['detector']!r}, expected one of {list(DETECTORS)}")
    try:  # the same check as --detector-option, so a tampered option cannot reach the constructor
        kwargs = parse_detector_options(ck["detector"], [f"{k}={v}" for k, v in ck["detector_kwargs"].items()])
    except UsageError as e:
        raise CheckpointError(f"{where}: key 'detector_kwargs': {str(e).split(': ', 1)[-1]}") from None
    arch = Arch.from_dict(ck["arch"])
    with torch.random.fork_rng(devices=[]):  # the init is overwritten; leave the caller's RNG alone
        model = build_train_detector(ck["detector"], arch, None, ck["num_classes"], ck["min_size"], ck["max_size"],
                                kwargs, pretrained=ck["pretrained"], trainable_layers=ck["trainable_layers"])
    fit_state_dict(ck["model"], model, where=where)
    model.load_state_dict(ck["model"], strict=True)
    model = model.to(device).eval()
    meta = {k: ck[k] for k in ("detector", "num_classes", "label_to_cat_id", "min_size", "max_size",
                               "detector_kwargs", "pretrained", "epoch", "metrics", "config")}
    meta["label_to_cat_id"] = dict(meta["label_to_cat_id"])
    meta["path"] = str(path)
    return model, arch, meta


def backbone_weights(checkpoint: str | os.PathLike | dict[str, Any]) -> dict[str, torch.Tensor]:
    """The trained backbone of a train checkpoint as a torchvision-layout state dict.

    Transformed backbones are mapped back with `restore_weights` (exact inverse of the transfer), so
    the result loads through `--weights PATH` into the baseline or any arch of the same backbone:
    this is how a detector trained here becomes the "pretrained" starting point of a search/retrain.
    """
    from natsdeploy.models.transfer import restore_weights

    ck = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    prefix = "backbone.body."
    sd = {k[len(prefix):]: v.detach().clone() for k, v in ck["model"].items() if k.startswith(prefix)}
    if not sd:
        raise CheckpointError("--checkpoint: no 'backbone.body.*' weights in the checkpoint, expected a detector "
                              "written by natsdeploy train")
    return restore_weights(sd, Arch.from_dict(ck["arch"]))
