"""How the sampled (gumbel) super-net's alphas learn: the architecture-gradient estimators.

Both estimators draw one genotype per channel group with the Gumbel-max trick,
index = argmax(alpha + G), G ~ Gumbel(0, 1) (a sample from softmax(alpha)), and compute only
that genotype's filters. They differ in what alpha learns from the step.

- ``"st"``: GDAS's straight-through Gumbel-softmax ("Searching for A Robust Neural Architecture in
  Four GPU Hours"). The group's output is scaled by a gate of value 1 whose gradient is that of
  softmax((alpha + G) / tau) at the drawn genotype, so alpha's credit is <dL/dy_s, y_s>: would
  scaling the drawn genotype's output up help? At the right genotype the output already fits and
  this is ~0, while a wrong genotype whose output is small and correlated with the target earns a
  negative (rewarding) credit, so alpha drifts onto such genotypes. Measured in
  benchmarks/results/search_recovery.md: 36% of planted groups recovered on ResNet-50 at 224 px.
- ``"local"`` (default): a score-function (REINFORCE) estimator with a cost per group instead of
  one reward for the whole network. Group i's cost is the mean square of dL/dy over the entries of
  its output channels where dL/dy is not zero, relative to the conv's mean over groups. Near a fit,
  dL/dy ~ H (y - y*), so the cost measures how far the drawn genotype's output is from what the
  rest of the network needs from that group; the correct genotype scores lowest. Averaging over
  the non-zero entries only matters: the ReLU after the conv zeroes dL/dy wherever the drawn
  genotype's output is negative, so a plain mean rewards genotypes whose output the ReLU kills
  (measured: ResNet-50 at 224 px recovers 83% with the plain mean, 97% without that bias). The
  gradient is (c_i - b_i) * (one_hot(s_i) - softmax(alpha_i)), with b_i an exponential moving
  average of c_i (a buffer: checkpoints carry it, so a resumed search is bit-identical). A group
  whose dL/dy is zero everywhere says nothing: no credit, baseline kept. tau plays no part.
  The zeros come from the ReLU only when BN after the conv does not spread dL/dy over the batch:
  frozen or eval-mode BN, as in the planted benchmark and a search from given weights
  (FrozenBatchNorm2d). With training-mode BN dL/dy is dense and the cost is the plain mean
  (ResNet-50, 224 px, planted: 83% against 97%). Every backward that reaches a mixed conv updates
  the baselines, the search's weight steps included (the draws come from the same alpha); under
  DDP the buffers of rank 0 are broadcast at each forward.

Both leave the forward exactly the drawn genotypes' network (the gate is 1), and both touch only
the drawn filters in the weight gradient; "local" adds a per-channel reduction of dL/dy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ESTIMATORS", "BASELINE_MOMENTUM", "gumbel_hard", "gumbel_index", "local_credit", "group_cost"]

ESTIMATORS = ("local", "st")
BASELINE_MOMENTUM = 0.9  # measured: 0.9 and 0.7 recover the same within noise; 0.9 is smoother


def _gumbel_noise(alpha: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise shaped like `alpha`, from torch's global RNG."""
    return -torch.empty_like(alpha).exponential_().log()


def gumbel_index(alpha: torch.Tensor) -> torch.Tensor:
    """One genotype per row of `alpha` [N, G]: argmax(alpha + Gumbel noise), i.e. a draw from softmax(alpha).

    The noise comes from torch's global RNG (seed it for a reproducible draw)."""
    return (alpha.detach() + _gumbel_noise(alpha)).argmax(dim=1)


def gumbel_hard(alpha: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Gumbel-softmax sample per row of `alpha` [N, G] with the hard straight-through estimator.

    Returns (index [N], gate [N], probs [N, G]): index = argmax(alpha + Gumbel noise); gate is the
    sampled entry of one_hot - probs.detach() + probs (1 in the forward, the soft gradient in the
    backward); probs = softmax((alpha + noise) / tau), detached. Noise comes from torch's global RNG.
    """
    probs = F.softmax((alpha + _gumbel_noise(alpha)) / tau, dim=1)
    index = probs.detach().argmax(dim=1)
    hard = torch.zeros_like(probs).scatter_(1, index[:, None], 1.0)
    gate = (hard - probs.detach() + probs).gather(1, index[:, None]).squeeze(1)
    return index, gate, probs.detach()


class _LocalCredit(torch.autograd.Function):
    """Identity on y; in the backward, alpha's gradient from the per-group cost of dL/dy (see module doc)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, alpha: torch.Tensor, index: torch.Tensor,  # type: ignore[override]
                baseline: torch.Tensor, momentum: float, loss_scale: float) -> torch.Tensor:
        ctx.baseline, ctx.momentum, ctx.loss_scale = baseline, momentum, loss_scale
        ctx.save_for_backward(alpha.detach(), index)
        # a view of y, no copy: an in-place op on it would raise (the ResNets put an out-of-place BN next)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        alpha, index = ctx.saved_tensors
        cost = group_cost(grad, n_groups=alpha.shape[0])
        finite = torch.isfinite(grad).all()  # a tensor, no host sync; AMP overflow: skip, as GradScaler does
        b = ctx.baseline
        with torch.no_grad():
            seeded = torch.where(torch.isnan(b), cost, b)  # the first step sets the baseline: no credit yet
            cost = torch.where(torch.isnan(cost), seeded, cost)  # a group with no signal: no credit, baseline kept
            advantage = torch.nan_to_num(cost - seeded, nan=0.0)  # NaN only while a group never had a signal
            moved = torch.where(torch.isnan(seeded), seeded, seeded * ctx.momentum + cost * (1 - ctx.momentum))
            b.copy_(torch.where(finite, moved, b))
            p = F.softmax(alpha.float(), dim=1)
            grad_alpha = advantage[:, None] * (F.one_hot(index, p.shape[1]).float() - p)
            # in the loss's units: GradScaler divides every gradient by its scale before the step, and
            # gives a non-finite one no step at all
            grad_alpha = torch.where(finite, grad_alpha * ctx.loss_scale, torch.nan)
        return grad, grad_alpha.to(alpha.dtype), None, None, None, None


def group_cost(grad: torch.Tensor, *, n_groups: int) -> torch.Tensor:
    """Per channel group (contiguous, equal widths) of `grad` [B, C, H, W]: the mean square of its non-zero
    entries, over the mean of that across groups. NaN for a group whose entries are all zero."""
    g = grad.detach().float()
    square = g.square().sum(dim=(0, 2, 3)).view(n_groups, -1).sum(dim=1)  # any memory layout
    count = (g != 0).sum(dim=(0, 2, 3)).view(n_groups, -1).sum(dim=1)
    cost = torch.where(count > 0, square / count.clamp_min(1), torch.nan)
    return cost / cost.nanmean().clamp_min(torch.finfo(cost.dtype).tiny)  # no host sync; all NaN stays NaN


def local_credit(y: torch.Tensor, alpha: torch.Tensor, index: torch.Tensor, baseline: torch.Tensor, *,
                 momentum: float = BASELINE_MOMENTUM, loss_scale: float = 1.0) -> torch.Tensor:
    """`y` unchanged, wired so that backward gives `alpha` [N, G] the "local" estimator's gradient.

    `index` [N]: the genotype each group drew; `baseline` [N]: the moving average of each group's
    cost (NaN before the first step), updated in place by the backward. `loss_scale`: the AMP
    GradScaler's current scale (the cost is scale-free, so alpha's gradient is multiplied by it
    to come out right after GradScaler's unscale)."""
    return _LocalCredit.apply(y, alpha, index, baseline, momentum, loss_scale)
