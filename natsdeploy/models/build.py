"""Build baseline and transformed torchvision ResNets."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Union

import torch
from torchvision.models import resnet as tv_resnet

from natsdeploy.arch import Arch
from natsdeploy.errors import WeightsError
from natsdeploy.models.mixed_conv import MixedDilationConv
from natsdeploy.models.transfer import restore_weights, transfer_weights
from natsdeploy.specs import BackboneSpec

__all__ = ["WeightsError", "Weights", "build_backbone", "build_baseline", "build_trunks", "resolve_weights",
           "transformed_state_dict_to_baseline"]

Weights = Union[None, str, os.PathLike, Mapping[str, torch.Tensor]]

_IMAGENET = {
    "resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights", "resnext101_32x8d": "ResNeXt101_32X8D_Weights",
}


def _plain_resnet(spec: BackboneSpec) -> tv_resnet.ResNet:
    """torchvision's ResNet for `spec`, initialised from the global RNG (on the meta device: shapes only)."""
    block = tv_resnet.BasicBlock if spec.block == "basic" else tv_resnet.Bottleneck
    return tv_resnet.ResNet(block, list(spec.layers), **spec.torchvision_kwargs())


@functools.lru_cache(maxsize=None)
def _skeleton(spec: BackboneSpec) -> tv_resnet.ResNet:
    """A meta-device `_plain_resnet(spec)`, built once per spec: callers deepcopy it (shapes only; a
    meta construction runs every init through torch's device mode, several times slower than a copy)."""
    with torch.device("meta"):
        return _plain_resnet(spec)


def _reference(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """The torchvision state dict of `spec` as meta tensors (names, shapes and dtypes)."""
    return _skeleton(spec).state_dict()


def _missing_init(ref: Mapping[str, torch.Tensor], missing: set[str]) -> dict[str, torch.Tensor]:
    """Values for keys weights may omit: the classifier gets nn.Linear's init, a BN counter 0."""
    out = {k: torch.zeros((), dtype=ref[k].dtype) for k in missing if k.endswith(".num_batches_tracked")}
    if missing & {"fc.weight", "fc.bias"}:
        out_features, in_features = ref["fc.weight"].shape
        with torch.random.fork_rng(devices=[]):  # passing weights must not shift the caller's RNG
            fc = torch.nn.Linear(in_features, out_features, device="cpu")  # the CPU RNG, which fork_rng restores
        out.update({k: v.detach() for k, v in (("fc.weight", fc.weight), ("fc.bias", fc.bias)) if k in missing})
    return out


def _imagenet_state_dict(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    enum_name = _IMAGENET.get(spec.name)
    if enum_name is None:
        raise WeightsError(f"--weights: got 'imagenet' for {spec.name}, expected a local .pth file "
                           "(torchvision publishes no ImageNet weights for this backbone)")
    weights = getattr(tv_resnet, enum_name).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # offline, proxy, partial download ...
        local = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name  # where torchvision caches it
        raise WeightsError(f"--weights: could not download torchvision's {enum_name}.IMAGENET1K_V1 "
                           f"({type(e).__name__}); fetch {weights.url} elsewhere and pass the file instead: "
                           f"--weights {local}") from None


def _load_file(path: Path) -> Mapping[str, torch.Tensor]:
    from natsdeploy.checkpoint import safe_torch_load  # noqa: PLC0415 (weights_only=True, one-line errors)

    if not path.is_file():
        raise WeightsError(f"--weights: got {str(path)!r}, expected an existing .pth file or 'imagenet'")
    obj = safe_torch_load(path, flag="--weights", expected="a state dict saved with torch.save", error=WeightsError)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"--weights: got {str(path)!r} holding {type(obj).__name__}, "
                           "expected a state dict (or a checkpoint dict with 'state_dict' or 'model')")
    return obj


def resolve_weights(weights: Weights, spec: BackboneSpec) -> dict[str, torch.Tensor] | None:
    """Turn the `weights` argument into a torchvision-layout state dict checked against `spec`."""
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "imagenet":
        sd = _imagenet_state_dict(spec)
    elif isinstance(weights, (str, os.PathLike)):
        sd = _load_file(Path(weights))
    elif isinstance(weights, Mapping):
        sd = weights
    else:
        raise WeightsError(f"weights: got {type(weights).__name__}, expected None, 'imagenet', a path or a state dict")
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    ref = _reference(spec)  # shapes only: no init work, no RNG draws
    if any(".branches." in k for k in sd):
        raise WeightsError("weights: got a transformed-layout state dict, expected torchvision layout "
                           "(convert with natsdeploy.transformed_state_dict_to_baseline)")
    for k, v in ref.items():
        if k not in sd:
            if k.startswith("fc.") or k.endswith(".num_batches_tracked"):
                continue  # detector backbones carry no classifier, frozen BN no counter: see _missing_init
            raise WeightsError(f"weights[{k!r}]: missing, expected a {spec.name} state dict")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise WeightsError(f"weights[{k!r}]: got shape {tuple(sd[k].shape)}, expected {tuple(v.shape)} "
                               f"for {spec.name}")
    extra = sorted(set(sd) - set(ref))
    if extra:
        raise WeightsError(f"weights[{extra[0]!r}]: unexpected key ({len(extra)} in all), expected a "
                           f"{spec.name} state dict")
    out = _missing_init(ref, set(ref) - set(sd))
    out.update({k: v.detach().to(ref[k].dtype) for k, v in sd.items()})
    return {k: out[k] for k in ref}


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
        model, owned = copy.deepcopy(_skeleton(spec)), True
    elif base_sd is None:
        model = _plain_resnet(spec)  # torchvision's init; its tensors are ours, so the model keeps them
        owned = True
    else:
        model = copy.deepcopy(_skeleton(spec))  # every value comes from base_sd: initialising would be wasted work
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
    sd = resolve_weights(weights, arch.spec)
    if sd is None:
        torch.manual_seed(seed)
        sd = build_baseline(arch.backbone).state_dict()
        source = f"torchvision init with torch.manual_seed({seed}) (random weights, not trained)"
    else:
        source = "imagenet (torchvision)" if weights == "imagenet" else (
            str(weights) if isinstance(weights, (str, os.PathLike)) else "state dict passed in")
    return build_backbone(arch, sd), build_baseline(arch.backbone, sd), source
