"""torchvision's ResNet for a backbone spec, and its meta-device skeleton: names, shapes and dtypes without init work.

Shared by the builder (which deep-copies the skeleton and assigns weights into it) and the weights loader
(which checks a file's tensors against the skeleton's state dict).
"""

from __future__ import annotations

import functools

import torch
from torchvision.models import resnet as tv_resnet

from natsdeploy.specs import BackboneSpec

__all__ = ["plain_resnet", "meta_resnet", "reference_state_dict"]


def plain_resnet(spec: BackboneSpec) -> tv_resnet.ResNet:
    """torchvision's ResNet for `spec`, initialised from the global RNG (on the meta device: shapes only)."""
    block = tv_resnet.BasicBlock if spec.block == "basic" else tv_resnet.Bottleneck
    return tv_resnet.ResNet(block, list(spec.layers), **spec.torchvision_kwargs())


@functools.lru_cache(maxsize=None)
def meta_resnet(spec: BackboneSpec) -> tv_resnet.ResNet:
    """A meta-device `plain_resnet(spec)`, built once per spec: callers deepcopy it (shapes only; a
    meta construction runs every init through torch's device mode, several times slower than a copy)."""
    with torch.device("meta"):
        return plain_resnet(spec)


def reference_state_dict(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """The torchvision state dict of `spec` as meta tensors (names, shapes and dtypes)."""
    return meta_resnet(spec).state_dict()
