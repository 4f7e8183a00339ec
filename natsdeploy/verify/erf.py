"""Effective receptive field (ERF) of the last stage, baseline beside transformed.

The method is the NATS paper's (section 4.4, after Luo et al. 2016): the input is all ones, every
ReLU is removed (MaxPool stays), the network is in eval mode, and only the centre unit of the
last stage's output map (layer4; the sum over its channels) propagates backward. The ERF map is
|d unit / d input| summed over the input channels and normalised to sum 1.

Maps are returned with the centre unit's input position at array index (N // 2, N // 2), which
`erf_radius` takes as the centre. For ResNets the unit at output index i sits at input pixel 32 i,
so for an input size that is a multiple of 64 the map is the input-sized S x S array; otherwise it
is zero-padded on one side until the unit is at the array's centre index.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from natsdeploy.arch import Arch
from natsdeploy.files import atomic_write, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["erf_of", "erf_maps", "erf_radius", "erf_report", "plot_erf", "strip_relu", "erf_cli",
           "SCHEMA", "DEFAULT_SHARES", "MIN_INPUT_SIZE"]

SCHEMA = "natsdeploy-erf/1"
DEFAULT_SHARES = (0.5, 0.9)
MIN_INPUT_SIZE = 64
_RESNET_STRIDE = 32


# -- computing maps ------------------------------------------------------------------------------
def strip_relu(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with every `nn.ReLU` replaced by `nn.Identity` (MaxPool stays)."""
    from torch import nn

    model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.ReLU):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, nn.Identity())
    return model


def _recentre(grad: np.ndarray, centre: tuple[int, int]) -> np.ndarray:
    """Zero-pad `grad` so that pixel `centre` lands at index (N // 2) on each axis."""
    pads = []
    for axis, c in enumerate(centre):
        n = grad.shape[axis]
        before = after = 0
        while (n + before + after) // 2 != c + before:
            if (n + before + after) // 2 < c + before:
                after += 1
            else:
                before += 1
        pads.append((before, after))
    return np.pad(grad, pads) if any(b or a for b, a in pads) else grad


def erf_of(module: nn.Module, input_size: int, *, in_channels: int | None = None,
           stride: int | tuple[int, int] | None = None) -> np.ndarray:
    """ERF map of the centre output unit of `module` (input of ones, 1 x C x S x S).

    `module` maps the input to a 1 x K x h x w tensor; it is used as given (strip ReLUs and set
    eval mode beforehand). The unit at output (h // 2, w // 2) is taken to sit at input pixel
    `stride * index` per axis; `stride` defaults to round(S / h) (right for a single conv with
    padding = dilation * (k // 2); pass it for deep nets: `erf_maps` passes 32). `in_channels` defaults
    to the first parameter's dim 1 (3 when the module has none). Returns |grad| summed over the
    input channels, normalised to sum 1, as a float64 array re-centred per the module docstring.
    """
    import torch

    if in_channels is None:
        first = next((p for p in module.parameters() if p.dim() == 4), None)
        in_channels = int(first.shape[1]) if first is not None else 3
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.ones(1, in_channels, input_size, input_size, dtype=dtype, requires_grad=True)
    with torch.enable_grad():
        y = module(x)
        if y.dim() != 4 or y.shape[0] != 1:
            raise ValueError(f"erf_of: module output has shape {tuple(y.shape)}, expected 1 x K x h x w")
        h, w = int(y.shape[2]), int(y.shape[3])
        unit = y[0, :, h // 2, w // 2].sum()
        (grad,) = torch.autograd.grad(unit, x)
    g = grad.detach().abs().sum(dim=(0, 1)).double().numpy()
    total = float(g.sum())
    if not math.isfinite(total) or total <= 0:
        raise ValueError(f"erf_of: gradient mass is {total}, expected a positive finite number")
    g = g / total
    if stride is None:
        sh, sw = max(1, round(input_size / h)), max(1, round(input_size / w))
    elif isinstance(stride, int):
        sh = sw = stride
    else:
        sh, sw = stride
    return _recentre(g, (sh * (h // 2), sw * (w // 2)))


def _last_stage(model: nn.Module) -> nn.Module:
    from torch import nn

    m = model
    return nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4).eval()


def erf_maps(arch: Arch, *, weights: Any = None, input_size: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(baseline_map, transformed_map): ERF of the centre unit of layer4, same weights in both.

    `weights` is anything `build_backbone` accepts (None, 'imagenet', a .pth path, a state dict);
    with None both networks get torchvision's init drawn under `torch.manual_seed(seed)` (the
    caller's global RNG state is left as it was).
    """
    import torch

    from natsdeploy.models.build import build_backbone, build_baseline, resolve_weights

    if input_size < MIN_INPUT_SIZE:
        raise ValueError(f"input_size: got {input_size}, expected >= {MIN_INPUT_SIZE}")
    out = []
    with torch.random.fork_rng(devices=[]):  # building draws inits; leave the caller's RNG alone
        torch.manual_seed(seed)
        sd = build_baseline(arch.backbone).state_dict() if weights is None else resolve_weights(weights, arch.spec)
        for model in (build_baseline(arch.backbone, sd), build_backbone(arch, sd)):
            net = _last_stage(strip_relu(model))
            out.append(erf_of(net, input_size, in_channels=3, stride=_RESNET_STRIDE))
    return out[0], out[1]


# -- numbers -------------------------------------------------------------------------------------
def erf_radius(erf_map: np.ndarray, share: float) -> float:
    """Radius (pixels, from index (H // 2, W // 2)) of the smallest centred disc holding `share`
    of the map's mass. Discrete: the distance of the farthest pixel that must be included."""
    m = np.asarray(erf_map, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"erf_radius: got a map of shape {m.shape}, expected 2-D")
    if not (0.0 < share <= 1.0):
        raise ValueError(f"erf_radius: got share {share}, expected 0 < share <= 1")
    m = np.abs(m)
    total = float(m.sum())
    if not math.isfinite(total) or total <= 0:
        raise ValueError(f"erf_radius: map mass is {total}, expected a positive finite number")
    h, w = m.shape
    yy, xx = np.indices(m.shape)
    d = np.hypot(yy - h // 2, xx - w // 2).ravel()
    order = np.argsort(d, kind="stable")
    cum = np.cumsum(m.ravel()[order])
    k = int(np.searchsorted(cum, share * total * (1 - 1e-12), side="left"))
    return float(d[order[min(k, len(order) - 1)]])


def erf_report(baseline_map: np.ndarray, transformed_map: np.ndarray, *,
               shares: Sequence[float] = DEFAULT_SHARES, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Radii per share for both maps and the ratio transformed / baseline (JSON-ready)."""
    radii = []
    for s in shares:
        b, t = erf_radius(baseline_map, s), erf_radius(transformed_map, s)
        radii.append({"share": float(s), "baseline_px": b, "transformed_px": t,
                      "ratio_transformed_over_baseline": (t / b) if b > 0 else None})
    out: dict[str, Any] = {"schema": SCHEMA}
    out.update(meta or {})
    out["map_shape"] = list(np.asarray(baseline_map).shape)
    out["edge_share"] = {"baseline": _edge_share(baseline_map), "transformed": _edge_share(transformed_map)}
    out["radii"] = radii
    return out


def _edge_share(erf_map: np.ndarray, width: int = 8) -> float:
    """Mass within `width` px of the array border: large values mean the input clips the ERF."""
    m = np.abs(np.asarray(erf_map, dtype=np.float64))
    inner = m[width:-width, width:-width].sum() if min(m.shape) > 2 * width else 0.0
    return float((m.sum() - inner) / m.sum())


# -- picture -------------------------------------------------------------------------------------
def plot_erf(baseline_map: np.ndarray, transformed_map: np.ndarray, path: str | os.PathLike[str], *,
             shares: Sequence[float] = DEFAULT_SHARES, title: str | None = None, dynamic_range: float = 1e-5) -> Path:
    """Two panels on one log colour scale (max down to max * dynamic_range), circles at the share
    radii; written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    maps = [np.asarray(baseline_map, dtype=np.float64), np.asarray(transformed_map, dtype=np.float64)]
    vmax = max(float(m.max()) for m in maps)
    vmin = vmax * dynamic_range
    norm = LogNorm(vmin=vmin, vmax=vmax, clip=True)
    colours = ["limegreen", "deepskyblue", "magenta", "gold", "red"]
    fig = Figure(figsize=(11, 5.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    im = None
    for ax, m, name in zip(axes, maps, ("baseline", "transformed")):
        im = ax.imshow(np.clip(m, vmin, None), norm=norm, cmap="inferno", interpolation="nearest")
        cy, cx = m.shape[0] // 2, m.shape[1] // 2
        parts = []
        for i, s in enumerate(shares):
            r = erf_radius(m, s)
            c = colours[i % len(colours)]
            ax.add_patch(_circle((cx, cy), r, c))
            parts.append(f"r{int(round(s * 100))}={r:.1f}px")
        ax.plot([cx], [cy], marker="+", color="white", markersize=6)
        ax.set_title(f"{name}: " + ", ".join(parts), fontsize=10)
        ax.set_xlabel("x (input px)")
        ax.set_ylabel("y (input px)")
    handles = [_circle((0, 0), 1, colours[i % len(colours)]) for i in range(len(shares))]
    fig.legend(handles, [f"{int(round(s * 100))}% of ERF mass" for s in shares], loc="outside lower center",
               ncol=len(shares), fontsize=9, frameon=False)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="|d unit / d input| (share, log scale)")
    if title:
        fig.suptitle(title, fontsize=11)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def _circle(centre: tuple[float, float], r: float, colour: str):
    from matplotlib.patches import Circle

    return Circle(centre, r, fill=False, edgecolor=colour, linewidth=1.3, linestyle="--")


# -- command line --------------------------------------------------------------------------------
def _check_out_path(flag: str, value: str | None) -> None:
    from natsdeploy.errors import UsageError

    if value is None:
        return
    p = Path(value)
    if p.is_dir() or value.endswith(("/", os.sep)):
        raise UsageError(f"{flag}: got {value!r}, a folder; expected a file path")
    if p.parent.exists() and not p.parent.is_dir():
        raise UsageError(f"{flag}: got {value!r}, whose parent is not a folder; expected a file path")


def erf_cli(args: argparse.Namespace) -> int:
    """`natsdeploy erf`: validate, compute both maps, write the PNG (and JSON), print the radii."""
    from natsdeploy.arch import load_arch
    from natsdeploy.errors import UsageError

    if args.input_size < MIN_INPUT_SIZE:
        raise UsageError(f"--input-size: got {args.input_size}, expected an int >= {MIN_INPUT_SIZE}")
    shares = list(args.share)
    for s in shares:
        if not (0.0 < s < 1.0):  # also rejects NaN
            raise UsageError(f"--share: got {s}, expected a number strictly between 0 and 1")
    _check_out_path("-o/--output", args.output)
    _check_out_path("--json", args.json)
    arch = load_arch(args.arch)
    from natsdeploy.cli_values import weights_value

    weights = weights_value(args)
    base, trans = erf_maps(arch, weights=weights, input_size=args.input_size, seed=args.seed)
    weights_desc = str(weights) if weights is not None else f"torchvision init, torch.manual_seed({args.seed})"
    meta = {"arch": str(args.arch), "backbone": arch.backbone, "input_size": args.input_size,
            "weights": str(weights_desc), "seed": args.seed,
            "method": "NATS 4.4 / Luo et al.: input ones, ReLUs removed, eval, d(sum_c layer4[c, h//2, w//2])/d input, "
                      "|grad| summed over input channels, normalised to sum 1"}
    report = erf_report(base, trans, shares=shares, meta=meta)
    title_radii = "; ".join(
        f"r{int(round(r['share'] * 100))}: {r['baseline_px']:.1f} -> {r['transformed_px']:.1f} px"
        + (f" ({r['ratio_transformed_over_baseline']:.2f}x)" if r["ratio_transformed_over_baseline"] else "")
        for r in report["radii"])
    title = f"ERF of layer4 centre unit, {arch.backbone}, input {args.input_size}px, {weights_desc}\n{title_radii}"
    png = plot_erf(base, trans, args.output, shares=shares, title=title)
    lines = [f"ERF {arch.backbone} input {args.input_size}x{args.input_size} ({weights_desc})"]
    for r in report["radii"]:
        ratio = r["ratio_transformed_over_baseline"]
        lines.append(f"  {int(round(r['share'] * 100))}% radius: baseline {r['baseline_px']:.1f} px, "
                     f"transformed {r['transformed_px']:.1f} px, ratio "
                     + (f"{ratio:.3f}" if ratio is not None else "n/a"))
    lines.append(f"wrote {png}")
    if args.json:
        lines.append(f"wrote {atomic_write_text(Path(args.json), json.dumps(report, indent=2) + chr(10))}")
    print("\n".join(lines))
    return 0
