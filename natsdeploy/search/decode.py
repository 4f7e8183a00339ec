"""Search-space presets and the decode rule (paper section 3.3, ARCH_FORMAT.md "Decode"), and the decode of a
search checkpoint (`natsdeploy decode`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from natsdeploy.align import check_multiple, round_shares
from natsdeploy.arch import Arch, Branch, ConvTransform
from natsdeploy.errors import ArchError
from natsdeploy.specs import BACKBONES, ConvInfo

__all__ = ["PRESETS", "genotypes", "decode", "groups_per_unit", "sample_arch", "decode_checkpoint"]

_C34 = ((1, 1), (2, 2), (3, 3), (1, 3), (3, 1))
_C5 = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (1, 3), (3, 1), (1, 5), (5, 1))
PRESETS: dict[str, dict[str, tuple[tuple[int, int], ...]]] = {
    "NATS-A": {"layer2": ((1, 1), (3, 3)), "layer3": ((1, 1), (3, 3)), "layer4": ((1, 1), (3, 3), (5, 5))},
    "NATS-B": {"layer2": ((1, 1), (2, 2), (3, 3)), "layer3": ((1, 1), (2, 2), (3, 3)),
               "layer4": ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5))},
    "NATS-C": {"layer2": _C34, "layer3": _C34, "layer4": _C5},
}


def genotypes(preset: str, stage: str) -> tuple[tuple[int, int], ...]:
    """The candidate dilations of a preset for a torchvision stage name (layer2/3/4)."""
    if preset not in PRESETS:
        raise ArchError(f"preset: got {preset!r}, expected one of {sorted(PRESETS)}")
    if stage not in PRESETS[preset]:
        raise ArchError(f"stage: got {stage!r}, expected one of {sorted(PRESETS[preset])} (paper stages 3-5)")
    return PRESETS[preset][stage]


def groups_per_unit(info: ConvInfo, width: int, align: Any, *, field: str = "align") -> int | None:
    """Search groups per aligned unit, q = align / width; None when `width` (channels per search
    group) is already a multiple of `align`. ArchError when `align` is invalid for the conv."""
    check_multiple(info, align, field=field)
    if width % align == 0:
        return None
    if align % width == 0:
        return align // width
    raise ArchError(f"{field}: got {align}, expected a divisor or a multiple of {width} "
                    f"(channels per search group of {info.name})")


def _aligned_choice(a: Any, ind: Any, q: int) -> Any:
    """Genotype per group for the aligned decode: q * u_g groups on genotype g (u_g rounded from
    n_g / q, ties to the larger softmax mass), placed to maximise the summed softmax probability."""
    import numpy as np

    from natsdeploy.search.assign import max_weight_assignment

    e = np.exp(a - a.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    counts = np.bincount(ind, minlength=a.shape[1])
    units = round_shares([Fraction(int(c), q) for c in counts], p.sum(axis=0).tolist())
    return max_weight_assignment(p, [q * u for u in units])


def decode(alphas: Mapping[str, Any], backbone: str, preset: str = "NATS-C", *, align: int | None = None) -> Arch:
    """Decode architecture weights into an `Arch`.

    `alphas[name]` is [N_groups, n_genotypes] for the conv `name`. Each group takes its argmax
    genotype (ties to the lowest index); surviving genotypes become branches in preset order, each
    owning its groups' channels in increasing order; the permutation lists them branch by branch.
    With `align=N` every branch is a multiple of N channels (ARCH_FORMAT "Aligned decode").
    """
    import numpy as np

    if backbone not in BACKBONES:
        raise ArchError(f"backbone: got {backbone!r}, expected one of {sorted(BACKBONES)}")
    spec = BACKBONES[backbone]
    convs: dict[str, ConvTransform] = {}
    softmax: dict[str, list[list[float]]] = {}
    groups_seen: set[int] = set()
    for name, alpha in alphas.items():
        if name not in spec.convs:
            raise ArchError(f"alphas[{name!r}]: unknown conv, expected a 3x3 conv of {backbone}")
        info = spec.convs[name]
        genos = genotypes(preset, info.stage)
        a = np.asarray(alpha.detach().cpu() if hasattr(alpha, "detach") else alpha, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != len(genos):
            raise ArchError(f"alphas[{name!r}]: got shape {list(a.shape)}, expected [N_groups, {len(genos)}]")
        n = a.shape[0]
        if n < 1 or info.out_channels % n:
            raise ArchError(f"alphas[{name!r}]: got {n} groups, expected a divisor of {info.out_channels}")
        width = info.out_channels // n
        if info.groups > 1 and width % info.channels_per_group:
            raise ArchError(f"alphas[{name!r}]: got {n} groups of {width} channels, expected a multiple of "
                            f"{info.channels_per_group} channels per group (conv groups)")
        ind = np.argmax(a, axis=1)  # first maximum: ties go to the lowest genotype index
        q = groups_per_unit(info, width, align) if align is not None else None
        if q is not None:
            ind = _aligned_choice(a, ind, q)
        branches: list[Branch] = []
        perm: list[int] = []
        for g, dil in enumerate(genos):
            chosen = [i for i in range(n) if ind[i] == g]
            if not chosen:
                continue
            branches.append(Branch(dil, width * len(chosen)))
            for i in chosen:
                perm.extend(range(i * width, (i + 1) * width))
        ident = perm == list(range(info.out_channels))
        convs[name] = ConvTransform(tuple(branches), None if ident or not info.permutable else tuple(perm))
        if not info.permutable and not ident:
            raise ArchError(f"alphas[{name!r}]: decoding needs a permutation, but {name} feeds the residual add")
        e = np.exp(a - a.max(axis=1, keepdims=True))
        softmax[name] = np.round(e / e.sum(axis=1, keepdims=True), 4).tolist()
        groups_seen.add(n)
    prov: dict[str, Any] = {"search_space": preset,
                            "groups": groups_seen.pop() if len(groups_seen) == 1 else sorted(groups_seen),
                            "alpha_softmax": softmax}
    if align is not None:
        prov["align"] = align
    return Arch(backbone=backbone, convs=convs, provenance=prov)


def searchable_convs(backbone: str, stages: Sequence[str] = ("layer2", "layer3", "layer4")) -> list[str]:
    """3x3 convs a search transforms: those whose output can be reordered, in the given stages."""
    spec = BACKBONES[backbone]
    return [n for n, info in spec.convs.items() if info.stage in stages and info.permutable]


def sample_arch(backbone: str, *, preset: str = "NATS-C", groups: int = 16, seed: int,
                stages: Sequence[str] = ("layer2", "layer3", "layer4")) -> Arch:
    """A uniform draw from the search space: every group of every searchable conv takes one of its
    stage's genotypes with equal probability, decoded by the same rule as a search (the random
    control of a search; `provenance.random_seed` records the draw)."""
    import random

    import numpy as np

    if backbone not in BACKBONES:
        raise ArchError(f"backbone: got {backbone!r}, expected one of {sorted(BACKBONES)}")
    spec = BACKBONES[backbone]
    rng = random.Random(seed)
    alphas = {}
    for name in searchable_convs(backbone, stages):
        genos = genotypes(preset, spec.convs[name].stage)
        if groups < 1 or spec.convs[name].out_channels % groups:
            raise ArchError(f"groups: got {groups}, expected a divisor of {spec.convs[name].out_channels} ({name})")
        one_hot = np.zeros((groups, len(genos)))
        one_hot[np.arange(groups), [rng.randrange(len(genos)) for _ in range(groups)]] = 1.0
        alphas[name] = one_hot
    arch = decode(alphas, backbone, preset)
    prov = {k: v for k, v in arch.provenance.items() if k != "alpha_softmax"}
    prov["random_seed"] = seed
    return Arch(backbone=arch.backbone, convs=arch.convs, provenance=prov)


def decode_checkpoint(path: str | os.PathLike[str], *, align: int | None = None) -> Arch:
    """The arch a search checkpoint decodes to (its alphas, backbone and preset; `align` as the
    search recorded it unless given). The file is loaded safely and checked against the schema of
    `natsdeploy.checkpoint`: every problem is a one-line CheckpointError."""
    from natsdeploy.checkpoint import SEARCH, load_checkpoint
    from natsdeploy.errors import CheckpointError
    from natsdeploy.search.supernet import decode_supernet

    ck = load_checkpoint(path, SEARCH, flag="checkpoint")
    cfg = ck["config"]
    alphas = {k[k.find("layer"):-len(".alpha")]: v for k, v in ck["model"].items() if k.endswith(".alpha")}
    if not alphas:
        raise CheckpointError(f"checkpoint: {path}: key 'model': got no '*.alpha' entries, expected the "
                              "super-net's architecture weights")
    extra = {"detector": cfg["detector"], "epochs_done": ck["epoch"], "data": cfg["data"]}
    try:
        arch = decode_supernet(alphas, cfg["backbone"], cfg["preset"], extra=extra)
    except ArchError as e:
        raise CheckpointError(f"checkpoint: {path}: does not decode ({e})") from None
    align = align if align is not None else cfg.get("align")
    if align is None:
        return arch
    return decode_supernet(alphas, cfg["backbone"], cfg["preset"], extra=extra, align=align)  # ArchError: bad align
