"""The channel-level NATS super-net (paper section 3.2, eq. 3).

Each searched 3x3 conv becomes a `ChannelMixedConv`: one replica per genotype of its stage, each
initialised from the pretrained weight, run with its dilation (padding = dilation, same stride
and groups). The output channels are split into N groups; group i of the output is
sum_g softmax(alpha_i)_g * y_i^g (`sampling="softmax"`, the paper's relaxation).

`sampling="gumbel"` (GDAS, "Searching for A Robust Neural Architecture in Four GPU Hours"): in
training mode each group draws one genotype per forward (Gumbel-max); each drawn genotype's conv
runs only on the output filters of the groups that drew it (weights gathered, outputs scattered
back), so a step costs one baseline conv. alpha learns through `estimator` (`search.estimators`:
"local", a per-group score-function estimator, by default; "st", GDAS's straight-through one).
In eval mode each group takes its argmax genotype the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from natsdeploy.arch import Arch, ArchError
from natsdeploy.errors import CheckpointError
from natsdeploy.search.decode import decode, genotypes, searchable_convs
from natsdeploy.search.estimators import ESTIMATORS, gumbel_hard, gumbel_index, local_credit
from natsdeploy.specs import BACKBONES, ConvInfo

__all__ = ["ChannelMixedConv", "build_supernet_backbone", "supernet_alphas", "arch_parameters",
           "weight_parameters", "decode_supernet", "group_width", "SAMPLINGS", "gumbel_hard", "set_tau",
           "annealed_tau", "sampled_alphas", "credit_state", "load_credit_state", "set_loss_scale"]

SAMPLINGS = ("softmax", "gumbel")


def _check_sampling(sampling: str, tau: float, estimator: str = "local") -> None:
    if sampling not in SAMPLINGS:
        raise ArchError(f"sampling: got {sampling!r}, expected one of {list(SAMPLINGS)}")
    if not tau > 0:
        raise ArchError(f"tau: got {tau!r}, expected a positive number")
    if estimator not in ESTIMATORS:
        raise ArchError(f"estimator: got {estimator!r}, expected one of {list(ESTIMATORS)}")


def group_width(info: ConvInfo, *, groups: int | None, channels_per_group: int | None) -> int:
    """Channels per search group for `info`, validated (ResNeXt: a multiple of the conv-group width)."""
    c = info.out_channels
    if (groups is None) == (channels_per_group is None):
        raise ArchError("search groups: got both or neither of --groups/--channels-per-group, expected exactly one")
    if groups is not None:
        if groups < 1 or c % groups:
            raise ArchError(f"--groups: got {groups}, expected a divisor of {c} ({info.name} out_channels)")
        width = c // groups
    else:
        width = int(channels_per_group)  # type: ignore[arg-type]
        if width < 1 or c % width:
            raise ArchError(f"--channels-per-group: got {width}, expected a divisor of {c} ({info.name} out_channels)")
    if info.groups > 1 and width % info.channels_per_group:
        raise ArchError(f"search group width: got {width} channels for {info.name}, expected a multiple of "
                        f"{info.channels_per_group} (its conv-group width; groups=32 works for ResNeXt)")
    return width


class ChannelMixedConv(nn.Module):
    """Mixed conv over genotypes with per-channel-group architecture weights `alpha` [N, G]."""

    def __init__(self, conv: nn.Conv2d, dilations: Sequence[tuple[int, int]], group_width: int, *,
                 recompute: bool = False, sampling: str = "softmax", tau: float = 1.0,
                 estimator: str = "local") -> None:
        super().__init__()
        _check_sampling(sampling, tau, estimator)
        self.sampling, self.tau, self.estimator = sampling, float(tau), estimator
        self.in_channels = conv.in_channels
        # the genotype index per group of the last gumbel forward (training) and its soft probabilities
        self.last_index: torch.Tensor | None = None
        self.last_probs: torch.Tensor | None = None
        self.dilations = [tuple(d) for d in dilations]
        self.stride, self.groups = conv.stride, conv.groups
        self.out_channels = conv.out_channels
        self.group_width = group_width
        self.n_groups = conv.out_channels // group_width
        w = conv.weight.detach()
        if sampling == "softmax":  # one replica per genotype, each a copy of the pretrained weight
            self.weight = nn.Parameter(w.unsqueeze(0).repeat(len(self.dilations), 1, 1, 1, 1).clone())
        else:  # the same replicas, one parameter per (genotype, group) [k = g * N + i]: a step's weight
            # gradient and optimiser update touch only the drawn filters, as much as the baseline's
            self.replicas = nn.ParameterList(nn.Parameter(w[i * group_width:(i + 1) * group_width].clone())
                                             for _ in self.dilations for i in range(self.n_groups))
            self.register_state_dict_post_hook(_replicas_to_weight)  # checkpoints keep the softmax layout
            self.register_load_state_dict_pre_hook(_weight_to_replicas)
        self.alpha = nn.Parameter(torch.zeros(self.n_groups, len(self.dilations), dtype=w.dtype, device=w.device))
        # "local" estimator: each group's moving-average cost (NaN: no step yet). Not in state_dict, so
        # both samplings keep one layout; the search checkpoint stores it apart (`credit_state`).
        self.register_buffer("credit_baseline", torch.full((self.n_groups,), float("nan"), device=w.device),
                             persistent=False)
        self.loss_scale = 1.0  # AMP's current loss scale (`set_loss_scale`): the "local" gradient is scale-free
        self.recompute = recompute

    def replica_weight(self) -> torch.Tensor:
        """Every genotype's replica as one [G, C_out, C_in/groups, 3, 3] tensor (both samplings)."""
        if self.sampling == "softmax":
            return self.weight
        return torch.cat(list(self.replicas)).view(len(self.dilations), self.out_channels, *self.replicas[0].shape[1:])

    def channel_weights(self) -> torch.Tensor:
        """softmax(alpha) expanded to one weight per (genotype, output channel): [G, C_out]."""
        p = F.softmax(self.alpha, dim=1)  # [N, G]
        return p.t().repeat_interleave(self.group_width, dim=1)

    def _branch(self, x: torch.Tensor, g: int) -> torch.Tensor:
        d = self.dilations[g]
        return F.conv2d(x, self.weight[g], stride=self.stride, padding=d, dilation=d, groups=self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sampling == "gumbel":
            return self._forward_sampled(x)
        cw = self.channel_weights()
        out = None
        for g in range(len(self.dilations)):
            if self.recompute and torch.is_grad_enabled():
                y = checkpoint(self._weighted, x, cw[g], g, use_reentrant=False)
            else:
                y = self._weighted(x, cw[g], g)
            out = y if out is None else out + y
        return out

    def _weighted(self, x: torch.Tensor, w: torch.Tensor, g: int) -> torch.Tensor:
        return self._branch(x, g) * w.view(1, -1, 1, 1).to(x.dtype)

    def _forward_sampled(self, x: torch.Tensor) -> torch.Tensor:
        local = self.training and self.estimator == "local"
        if local:
            index, gate = gumbel_index(self.alpha), None
            self.last_index, self.last_probs = index, F.softmax(self.alpha.detach(), dim=1)
        elif self.training:
            index, gate, probs = gumbel_hard(self.alpha, self.tau)
            self.last_index, self.last_probs = index.detach(), probs
        else:
            index, gate = self.alpha.detach().argmax(dim=1), None
        if self.recompute and torch.is_grad_enabled():
            y = checkpoint(self._sampled, x, index, gate, use_reentrant=False)
        else:
            y = self._sampled(x, index, gate)
        if local and torch.is_grad_enabled() and self.alpha.requires_grad:
            y = local_credit(y, self.alpha, index, self.credit_baseline, loss_scale=self.loss_scale)
        return y

    def _sampled(self, x: torch.Tensor, index: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        """Per drawn genotype, one conv over the filters of the groups that drew it; outputs put back in place."""
        w, n = self.group_width, self.n_groups
        order = torch.argsort(index, stable=True)  # groups, genotype by genotype
        genos, counts = torch.unique(index, return_counts=True)
        idx = index.tolist()
        parts = [self.replicas[idx[i] * n + i] for i in order.tolist()]
        weight = parts[0] if n == 1 else torch.cat(parts)  # the drawn filters, in branch order
        if gate is not None:  # conv is linear in its filters: scaling them is scaling the outputs, on fewer numbers
            weight = weight * gate[order].repeat_interleave(w).view(-1, 1, 1, 1).to(weight.dtype)
        ch = (order[:, None] * w + torch.arange(w, device=index.device)).reshape(-1)
        sizes = (counts * w).tolist()
        ys = [self._conv_filters(x, g, wg, c, whole=len(sizes) == 1)
              for g, wg, c in zip(genos.tolist(), weight.split(sizes), ch.split(sizes))]
        if len(ys) == 1:
            return ys[0]
        nhwc = ys[0].is_contiguous(memory_format=torch.channels_last) and not ys[0].is_contiguous()
        out = torch.empty((ys[0].shape[0], self.out_channels, *ys[0].shape[2:]), dtype=ys[0].dtype,
                          device=ys[0].device,  # keep the convs' layout (channels_last on CUDA)
                          memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        for y, c in zip(ys, ch.split(sizes)):  # each genotype's outputs straight to their channels: one copy
            out.index_copy_(1, c, y)
        return out

    def _conv_filters(self, x: torch.Tensor, g: int, weight: torch.Tensor, ch: torch.Tensor, *,
                      whole: bool) -> torch.Tensor:
        """Genotype g's conv with `weight`, the filters `ch` (increasing); grouped convs take those groups' inputs."""
        d = self.dilations[g]
        groups = self.groups if whole else 1
        if self.groups > 1 and not whole:  # search groups hold whole conv groups: take exactly their inputs
            k_out, k_in = self.out_channels // self.groups, self.in_channels // self.groups
            conv_groups = ch[::k_out] // k_out
            inputs = (conv_groups[:, None] * k_in + torch.arange(k_in, device=ch.device)).reshape(-1)
            x, groups = x.index_select(1, inputs), len(conv_groups)
        return F.conv2d(x, weight, stride=self.stride, padding=d, dilation=d, groups=groups)

    def extra_repr(self) -> str:
        return (f"genotypes={self.dilations}, groups={self.n_groups}x{self.group_width}ch, recompute={self.recompute}, "
                f"sampling={self.sampling}"
                + (f", estimator={self.estimator}, tau={self.tau:g}" if self.sampling == "gumbel" else ""))


def _replicas_to_weight(module: ChannelMixedConv, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    keys = [f"{prefix}replicas.{k}" for k in range(len(module.replicas))]
    if isinstance(state_dict.get(keys[0]), nn.Parameter):
        return  # state_dict(keep_vars=True) (e.g. jit tracing) wants the parameters themselves
    parts = [state_dict.pop(k) for k in keys]
    state_dict[prefix + "weight"] = torch.cat(parts).view(len(module.dilations), module.out_channels,
                                                          *parts[0].shape[1:])


def _weight_to_replicas(module: ChannelMixedConv, state_dict: dict, prefix: str, *args) -> None:
    weight = state_dict.get(prefix + "weight")
    shape = (len(module.dilations), module.out_channels, *module.replicas[0].shape[1:])
    if weight is None or tuple(weight.shape) != shape:
        return  # load_state_dict then names the mismatch
    del state_dict[prefix + "weight"]
    for k, part in enumerate(weight.reshape(len(module.replicas), *module.replicas[0].shape)):
        state_dict[f"{prefix}replicas.{k}"] = part


def build_supernet_backbone(backbone: str, *, preset: str = "NATS-C", groups: int | None = 16,
                            channels_per_group: int | None = None,
                            stages: Sequence[str] = ("layer2", "layer3", "layer4"), weights=None,
                            recompute: bool = False, sampling: str = "softmax", tau: float = 1.0,
                            estimator: str = "local") -> nn.Module:
    """A torchvision ResNet whose searchable 3x3 convs in `stages` are `ChannelMixedConv`s.

    `sampling`: "softmax" (the paper's mixture of every genotype) or "gumbel" (one drawn genotype
    per group and step). With gumbel, `estimator` is how alpha learns: "local" (per-group
    score-function credit) or "st" (GDAS's straight-through gate; `tau` is its temperature,
    changeable with `set_tau`). See `natsdeploy.search.estimators`.
    """
    from natsdeploy.models.build import build_baseline

    _check_sampling(sampling, tau, estimator)
    if backbone not in BACKBONES:
        raise ArchError(f"--backbone: got {backbone!r}, expected one of {sorted(BACKBONES)}")
    for s in stages:
        genotypes(preset, s)  # validates preset and stage
    model = build_baseline(backbone, weights)
    spec = BACKBONES[backbone]
    for name in searchable_convs(backbone, stages):
        info = spec.convs[name]
        width = group_width(info, groups=groups, channels_per_group=channels_per_group)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        conv = getattr(parent, child)
        setattr(parent, child, ChannelMixedConv(conv, genotypes(preset, info.stage), width, recompute=recompute,
                                                sampling=sampling, tau=tau, estimator=estimator))
    return model


def set_tau(model: nn.Module, tau: float) -> None:
    """Set the Gumbel-softmax temperature of every mixed conv in `model` (for annealing)."""
    _check_sampling("gumbel", tau)
    for m in model.modules():
        if isinstance(m, ChannelMixedConv):
            m.tau = float(tau)


def annealed_tau(start: float, end: float, *, step: int, total: int, schedule: str = "linear") -> float:
    """The temperature at `step` of `total` (0-based), from `start` to `end`: linear or exponential ("exp")."""
    _check_sampling("gumbel", start)
    _check_sampling("gumbel", end)
    if schedule not in ("linear", "exp"):
        raise ArchError(f"tau schedule: got {schedule!r}, expected 'linear' or 'exp'")
    t = min(max(step / max(total - 1, 1), 0.0), 1.0)
    return start + (end - start) * t if schedule == "linear" else start * (end / start) ** t


def sampled_alphas(model: nn.Module) -> dict[str, torch.Tensor]:
    """One-hot alphas of the genotypes each group drew in the last training forward (decode gives that arch)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, ChannelMixedConv):
            if m.last_index is None:
                raise ArchError(f"sampled_alphas: got no sample for {_conv_name(name)}, expected a gumbel-mode "
                                "training forward first")
            out[_conv_name(name)] = F.one_hot(m.last_index.cpu(), len(m.dilations)).float()
    return out


def _gumbel_convs(model: nn.Module) -> dict[str, ChannelMixedConv]:
    return {_conv_name(name): m for name, m in model.named_modules()
            if isinstance(m, ChannelMixedConv) and m.sampling == "gumbel"}


def credit_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The "local" estimator's per-group baselines, keyed by conv name (for checkpoints; empty for softmax)."""
    return {name: m.credit_baseline.detach().cpu().clone() for name, m in _gumbel_convs(model).items()}


def load_credit_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, where: str) -> None:
    """Restore `credit_state`: every gumbel conv of `model` named, with its [groups] shape (CheckpointError,
    one line, otherwise). An empty `state` (a checkpoint from before the baselines were saved) leaves
    them at NaN, as at step 0."""
    convs = _gumbel_convs(model)
    if not state:
        return
    for name in sorted(set(state) | set(convs)):
        got = state.get(name)
        want = (convs[name].n_groups,) if name in convs else None
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else None
        if want is None or shape != want:
            raise CheckpointError(f"{where}: key 'credit': {name}: got "
                                  f"{'nothing' if got is None else shape or type(got).__name__}, expected "
                                  f"{'no such conv' if want is None else f'a tensor of shape {want}'}")
    for name, m in convs.items():
        m.credit_baseline.copy_(state[name])


def set_loss_scale(model: nn.Module, scale: float) -> None:
    """Tell every mixed conv AMP's current loss scale (GradScaler.get_scale(); 1.0 without AMP)."""
    for m in model.modules():
        if isinstance(m, ChannelMixedConv):
            m.loss_scale = float(scale)


def supernet_alphas(model: nn.Module) -> dict[str, torch.Tensor]:
    """alpha of every mixed conv, keyed by the torchvision conv name (wrappers' prefixes removed)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, ChannelMixedConv):
            out[_conv_name(name)] = m.alpha.detach().cpu().clone()
    return out


def _conv_name(name: str) -> str:
    i = name.find("layer")
    return name[i:] if i >= 0 else name


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.alpha for m in model.modules() if isinstance(m, ChannelMixedConv)]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    alphas = {id(p) for p in arch_parameters(model)}
    return [p for p in model.parameters() if id(p) not in alphas and p.requires_grad]


def decode_supernet(alphas: Mapping[str, torch.Tensor], backbone: str, preset: str, *, extra: dict | None = None,
                    align: int | None = None) -> Arch:
    arch = decode(alphas, backbone, preset, align=align)
    if extra:
        prov = dict(arch.provenance)
        prov.update(extra)
        arch = Arch(backbone=arch.backbone, convs=arch.convs, provenance=prov)
    return arch
