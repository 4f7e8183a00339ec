"""Build baseline and transformed torchvision ResNets."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping

import torch
from torchvision.models import resnet as tv_resnet

from natsdeploy.arch import Arch
from natsdeploy.errors import WeightsError
from natsdeploy.models.mixed_conv import MixedDilationConv
from natsdeploy.models.skeleton import meta_resnet, plain_resnet
from natsdeploy.models.transfer import restore_weights, transfer_weights
from natsdeploy.models.weights import LoadedWeights, Weights, load_weights
from natsdeploy.specs import BackboneSpec

__all__ = ["WeightsError", "Weights", "LoadedWeights", "build_backbone", "build_baseline", "build_trunks",
           "resolve_weights", "transformed_state_dict_to_baseline"]


def resolve_weights(weights: Weights, spec: BackboneSpec) -> dict[str, torch.Tensor] | None:
    """Turn the `weights` argument into a torchvision-layout state dict checked against `spec`
    (`natsdeploy.models.weights.load_weights`: every layout it reads, one WeightsError line otherwise)."""
    loaded = load_weights(weights, spec)
    return None if loaded is None else loaded.state_dict


def build_baseline(backbone: str | Arch, weights: Weights = None) -> tv_resnet.ResNet:
    """The untransformed torchvision network, with `weights` loaded (or torchvision's init)."""
    arch = backbone if isinstance(backbone, Arch) else Arch(backbone=backbone)
    return build_backbone(arch.identity_like(), weights)


def build_backbone(arch: Arch, weights: Weights = None) -> tv_resnet.ResNet:
    """A torchvision ResNet in which every conv listed in `arch` is a `MixedDilationConv`.

    The baseline weights (torchvision's init when `weights` is None, drawn from torch's global
    RNG exactly as torchvision would) are transferred per ARCH_FORMAT.md, so an all-dilation-1
    arch computes the baseline function for any permutation.
    """
    spec = arch.spec
    base_sd = resolve_weights(weights, spec)
    device = torch.empty(()).device  # the default device (torch.get_default_device needs torch >= 2.3)
    if base_sd is None and device.type == "meta":  # shapes only (counting): nothing to initialise
        model, owned = copy.deepcopy(meta_resnet(spec)), True
    elif base_sd is None:
        model = plain_resnet(spec)  # torchvision's init; its tensors are ours, so the model keeps them
        owned = True
    else:
        model = copy.deepcopy(meta_resnet(spec))  # every value comes from base_sd: initialising would be wasted work
        owned = False
    base_sd = model.state_dict() if base_sd is None else base_sd
    with torch.device("meta"):
        for name, ct in arch.convs.items():
            info = spec.convs[name]
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child,
                    MixedDilationConv(info.in_channels, ct.branches, stride=info.stride, groups=info.groups))
    sd = transfer_weights(base_sd, arch)
    # assign: no second copy of the weights; a caller's tensors are copied (never aliased) onto the device
    sd = {k: v.to(device) if owned else v.to(device=device, copy=True) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def transformed_state_dict_to_baseline(state_dict: Mapping[str, torch.Tensor], arch: Arch) -> dict[str, torch.Tensor]:
    """A transformed model's state dict back to torchvision layout (weights round-trip)."""
    return restore_weights(state_dict, arch)


def build_trunks(arch: Arch, weights: Weights, seed: int) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """Transformed and baseline trunks with the same baseline weights, and a line saying where those came
    from (export and bench compare the two, so they must share every weight)."""
    loaded = load_weights(weights, arch.spec)
    if loaded is None:
        torch.manual_seed(seed)
        sd = build_baseline(arch.backbone).state_dict()
        source = f"torchvision init with torch.manual_seed({seed}) (random weights, not trained)"
    else:
        sd = loaded  # checked once: build_backbone takes it as it is
        source = loaded.summary.removeprefix("weights: ")
        if isinstance(weights, (str, os.PathLike)):
            source = f"{source}; file {os.fspath(weights)}"  # the report's "weights" ends with the path
    return build_backbone(arch, sd), build_baseline(arch.backbone, sd), source
