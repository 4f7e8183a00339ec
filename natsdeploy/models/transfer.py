"""Weight transfer between the baseline (torchvision) layout and the transformed layout.

Both directions are pure functions on state dicts, so weights round-trip exactly:
`restore_weights(transfer_weights(sd, arch), arch) == sd`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from natsdeploy.arch import Arch, ConvTransform
from natsdeploy.specs import ConvInfo

__all__ = ["transfer_weights", "restore_weights", "input_index"]

_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def input_index(ct: ConvTransform, info: ConvInfo) -> list[int] | None:
    """For grouped convs: the baseline input channel read at each transformed input position.

    The permutation moves whole conv groups; moving the groups' input channels along with them
    (by reordering the producing conv and BN) keeps each branch's input contiguous.
    Returns None when no reordering is needed.
    """
    if info.groups == 1 or ct.permutation is None:
        return None
    k, ipg = info.channels_per_group, info.in_channels // info.groups
    perm = ct.perm()
    gorder = [perm[j] // k for j in range(0, info.out_channels, k)]
    if gorder == list(range(info.groups)):
        return None
    return [g * ipg + i for g in gorder for i in range(ipg)]


def transfer_weights(baseline: Mapping[str, torch.Tensor], arch: Arch) -> dict[str, torch.Tensor]:
    """Map a torchvision-layout state dict onto the transformed network's layout (ARCH_FORMAT 1-5)."""
    sd = dict(baseline)
    for name, ct in arch.convs.items():
        info = arch.spec.convs[name]
        perm = torch.tensor(ct.perm())
        w = sd.pop(f"{name}.weight")
        parts = torch.split(w[perm] if ct.permutation is not None else w, [br.channels for br in ct.branches])
        for b, part in enumerate(parts):
            sd[f"{name}.branches.{b}.weight"] = part.clone()  # its own storage (a slice would pin all of w)
        if ct.permutation is not None:  # indexing copies: the caller's tensors are never shared
            for key in _BN_KEYS:
                sd[f"{info.bn}.{key}"] = sd[f"{info.bn}.{key}"][perm]
            if info.next_conv is not None:
                sd[f"{info.next_conv}.weight"] = sd[f"{info.next_conv}.weight"].index_select(1, perm)
        idx = input_index(ct, info)
        if idx is not None:
            it = torch.tensor(idx)
            sd[f"{info.prev_conv}.weight"] = sd[f"{info.prev_conv}.weight"][it]
            for key in _BN_KEYS:
                sd[f"{info.prev_bn}.{key}"] = sd[f"{info.prev_bn}.{key}"][it]
    return sd


def restore_weights(transformed: Mapping[str, torch.Tensor], arch: Arch) -> dict[str, torch.Tensor]:
    """The inverse of `transfer_weights`: a transformed state dict back to torchvision layout."""
    sd = dict(transformed)
    # reverse network order: a basic block's conv2 is re-assembled before conv1 un-permutes its inputs
    for name, ct in reversed(list(arch.convs.items())):
        info = arch.spec.convs[name]
        inv = torch.argsort(torch.tensor(ct.perm()))
        parts = [sd.pop(f"{name}.branches.{b}.weight") for b in range(len(ct.branches))]
        sd[f"{name}.weight"] = torch.cat(parts, 0)[inv].clone()
        for key in _BN_KEYS:
            sd[f"{info.bn}.{key}"] = sd[f"{info.bn}.{key}"][inv].clone()
        if info.next_conv is not None:
            sd[f"{info.next_conv}.weight"] = sd[f"{info.next_conv}.weight"][:, inv].clone()
        idx = input_index(ct, info)
        if idx is not None:
            iinv = torch.argsort(torch.tensor(idx))
            sd[f"{info.prev_conv}.weight"] = sd[f"{info.prev_conv}.weight"][iinv].clone()
            for key in _BN_KEYS:
                sd[f"{info.prev_bn}.{key}"] = sd[f"{info.prev_bn}.{key}"][iinv].clone()
    return sd
