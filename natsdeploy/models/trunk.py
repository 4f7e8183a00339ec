"""The trunk inside a torchvision detector as a plain transformed ResNet (export and parity start from it)."""

from __future__ import annotations

from typing import Any

__all__ = ["trunk_from_detector"]


def trunk_from_detector(detector: Any, arch: Any) -> Any:
    """A plain (BatchNorm2d) transformed ResNet computing what `detector.backbone.body` computes.

    `build_backbone(arch)` with the `backbone.body.*` weights loaded (FrozenBatchNorm2d buffers ->
    BatchNorm2d, eps kept), so the exporter's fold and rewrites apply to it unchanged.
    """
    import torch
    from torchvision.ops import FrozenBatchNorm2d

    from natsdeploy.models.build import build_backbone

    with torch.random.fork_rng(devices=[]):
        trunk = build_backbone(arch)
    body = detector.backbone.body
    body_sd = body.state_dict()
    sd = trunk.state_dict()
    needed = [k for k in sd if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    missing = [k for k in needed if k not in body_sd]
    extra = sorted(set(body_sd) - set(sd))
    if missing or extra:
        raise ValueError(f"detector backbone does not match arch {arch.backbone}: "
                         f"missing {missing[:3]}, unexpected {extra[:3]}")
    for k in needed:
        if tuple(body_sd[k].shape) != tuple(sd[k].shape):
            raise ValueError(f"detector backbone[{k!r}]: shape {tuple(body_sd[k].shape)}, expected {tuple(sd[k].shape)}")
        sd[k] = body_sd[k].detach().to(device="cpu", dtype=sd[k].dtype)
    trunk.load_state_dict(sd, strict=True)
    for name, m in body.named_modules():
        if isinstance(m, FrozenBatchNorm2d):
            trunk.get_submodule(name).eps = m.eps
    return trunk.eval()
