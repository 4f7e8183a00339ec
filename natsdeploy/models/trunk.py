"""The trunk inside a torchvision detector as a plain transformed ResNet (export and parity start from it)."""

from __future__ import annotations

from typing import Any

from natsdeploy.errors import WeightsError

__all__ = ["trunk_from_detector"]


def trunk_from_detector(detector: Any, arch: Any) -> Any:
    """A plain (BatchNorm2d) transformed ResNet computing what `detector.backbone.body` computes.

    `build_backbone(arch)` with the `backbone.body.*` weights loaded (FrozenBatchNorm2d buffers ->
    BatchNorm2d, eps kept), so the exporter's fold and rewrites apply to it unchanged. A body whose keys
    or shapes are not the arch's is a one-line `WeightsError`.
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
        raise WeightsError(f"detector.backbone.body: got keys missing {missing[:3]} and unexpected {extra[:3]}, "
                           f"expected those of the {arch.backbone} arch")
    for k in needed:
        if tuple(body_sd[k].shape) != tuple(sd[k].shape):
            raise WeightsError(f"detector.backbone.body[{k!r}]: got shape {tuple(body_sd[k].shape)}, "
                               f"expected {tuple(sd[k].shape)} as the arch builds it")
        sd[k] = body_sd[k].detach().to(device="cpu", dtype=sd[k].dtype)
    trunk.load_state_dict(sd, strict=True)
    for name, m in body.named_modules():
        if isinstance(m, FrozenBatchNorm2d):
            trunk.get_submodule(name).eps = m.eps
    return trunk.eval()
