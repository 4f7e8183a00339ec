"""Trained detectors: what `natsdeploy train` writes, read back as models. The checkpoint (schema-checked,
weights_only), the detector rebuilt from it, and its backbone as a torchvision-layout `--weights` state
dict. Also the detector constructor train uses, so a checkpoint rebuilds exactly the model that was
trained. Here, in the models layer, so train and verify (detection parity) both read it from below."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from natsdeploy.arch import Arch
from natsdeploy.checkpoint import TRAIN, fit_state_dict, load_checkpoint
from natsdeploy.errors import CheckpointError, DatasetError, UsageError

if TYPE_CHECKING:
    from natsdeploy.data.coco import CocoDetection

__all__ = ["backbone_weights", "build_train_detector", "detector_from_checkpoint", "load_detector_checkpoint",
           "read_checkpoint", "check_same_arch", "EvaluationSetup", "open_for_evaluation"]


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


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return f'{path}["{k}"]' if path else str(k)
            d = _first_difference(a[k], b[k], f'{path}["{k}"]' if path else str(k))
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d is not None:
                return d
        return None
    return None if a == b else path


def _lookup(d: Any, path: str) -> Any:
    cur = d
    for m in re.finditer(r'^([^\[]+)|\["([^"]*)"\]|\[(\d+)\]', path):
        key = m.group(1) or m.group(2)
        try:
            cur = cur[int(m.group(3))] if m.group(3) is not None else cur[key]
        except (KeyError, IndexError, TypeError):
            return "absent"
    return cur


def check_same_arch(ck_arch: Mapping, arch: Arch, checkpoint: str) -> None:
    """A one-line `UsageError` naming the first field where the checkpoint's arch differs from `arch`."""
    want = {k: v for k, v in arch.to_dict().items() if k != "provenance"}
    got = {k: v for k, v in ck_arch.items() if k != "provenance"}
    diff = _first_difference(got, want)
    if diff is None:
        return
    shown_got, shown_want = json.dumps(_lookup(got, diff)), json.dumps(_lookup(want, diff))
    if len(shown_got) > 60:
        shown_got = shown_got[:57] + "..."
    if len(shown_want) > 60:
        shown_want = shown_want[:57] + "..."
    raise UsageError(f"--checkpoint: got {checkpoint!r} trained on another arch: {diff} is {shown_got} in the "
                     f"checkpoint, expected {shown_want} as in ARCH.json")


@dataclass(frozen=True)
class EvaluationSetup:
    """A trained detector and the split it is scored on, checked against each other (`open_for_evaluation`)."""

    detector: nn.Module
    meta: dict[str, Any]
    dataset: CocoDetection
    seed: int
    """The train run's seed: `--data synthetic` means the synthetic set that run trained on."""


def open_for_evaluation(checkpoint: str | os.PathLike, arch: Arch, data: str, *, split: str = "val",
                        device: str = "cpu") -> EvaluationSetup:
    """A train checkpoint's detector (eval mode, on `device`) and the `split` of `data` to score it on.

    One-line errors before any work: a checkpoint that is unreadable or trained on another arch
    (`CheckpointError`/`UsageError`), a dataset whose category ids are not those it was trained on
    (`DatasetError`). `data="synthetic"` is the synthetic set of the run's own seed.
    """
    from natsdeploy.data.coco import load_dataset

    path = str(checkpoint)
    ck = read_checkpoint(path)
    check_same_arch(ck["arch"], arch, path)
    seed = int((ck.get("config") or {}).get("seed", 0) or 0)
    dataset = load_dataset(data, split, seed=seed)
    want = {int(k): int(v) for k, v in ck["label_to_cat_id"].items()}
    if dataset.label_to_cat_id != want:
        raise DatasetError(f"{dataset.ann_file}: got category ids {sorted(dataset.label_to_cat_id.values())}, "
                           f"expected {sorted(want.values())}, those the checkpoint was trained on")
    detector, _, meta = detector_from_checkpoint(ck, device=device, path=path)
    return EvaluationSetup(detector=detector.eval(), meta=meta, dataset=dataset, seed=seed)
