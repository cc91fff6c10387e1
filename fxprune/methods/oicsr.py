"""OICSR: out-in-channel sparsity regularisation and global greedy pruning (Li et al., CVPR 2019).

OICSR puts a channel's *outgoing* weights (the filter producing it) and its *incoming*
weights in the next layer (the columns reading it) into one regularisation group, so
the two consecutive layers shrink together. fxprune's channels generalise these out-in
groups across residual joins, concats and splits: every weight slice tied to a channel
(producer rows, consumer columns, BatchNorm and other per-channel parameters) is in
its group ``W_c``.

Penalty (group lasso over out-in groups), with optional MACs-aware weights ``w_c``::

    R(W) = lam * sum_c w_c * ||W_c||_2,      w_c = 1  or  w_c = cost_c / mean(cost)

usable as a loss term (:meth:`OutInGroupLasso.penalty`) or as a proximal step after each
optimiser step (:meth:`OutInGroupLasso.prox`: ``W_c <- W_c * max(0, 1 - lr*lam*w_c/||W_c||)``).

Channel importance is the energy of the out-in group normalised by its size
(:func:`oicsr_importance`)::

    E_c = ||W_c||_2^2 / |W_c|            (|W_c|: number of weights in the group)

For ranking across layers (:func:`greedy_prune`'s default) it is taken relative to the
mean over the channel's group ``G(c)`` (the channels that are pruned together)::

    I_c = E_c / mean_{k in G(c)} E_k

Without that, the per-weight energy follows the layer's fan-in (initialisation and weight
decay make weights of wide layers small), and a global ranking empties the widest layers first.

Global greedy pruning (:func:`greedy_prune`) repeatedly switches off the globally least
important ``step`` of the remaining channels (optionally fine-tuning a few steps in
between, which re-ranks the rest), until the measured MACs reduction reaches the target;
the last iteration is bisected so that it lands within a channel of the target.

Example:
    >>> reg = OutInGroupLasso(pm, lam=1e-4)                  # doctest: +SKIP
    >>> loss = F.cross_entropy(pm(x), y) + reg.penalty()      # doctest: +SKIP
    >>> greedy_prune(pm, target=0.5)                          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from fxprune.core.channel_cost import relative_channel_macs
from fxprune.core.ir import state_of
from fxprune.core.weight_slices import tied_slices
from fxprune.methods.budget import (
    BudgetResult,
    alive_channels,
    current_masks,
    measured_macs,
    prune_to_macs,
    restore_masks,
    switch_off,
    unpruned_macs,
)
from fxprune.methods.importance import relative_to_group


class OutInGroupLasso:
    """The OICSR penalty over every channel's out-in group of weights.

    Args:
        pm: a prepared model.
        lam: regularisation strength.
        macs_weighted: weight each group by its cost relative to the mean cost.
        eps: smoothing inside the square root, so the gradient exists at zero.
    """

    def __init__(self, pm, lam: float = 1e-4, macs_weighted: bool = False, eps: float = 1e-12):
        self.pm = pm
        self.lam = lam
        self.eps = eps
        self.slices = [s for s in tied_slices(pm) if s.tensor.requires_grad or s.role != "channel"
                       if isinstance(s.tensor, torch.nn.Parameter)]
        self.n = state_of(pm).index.group_of.size
        weights = relative_channel_macs(pm) if macs_weighted else np.ones(self.n)
        self.weights = torch.as_tensor(weights, dtype=torch.float32)

    def group_norms_sq(self) -> torch.Tensor:
        """``||W_c||^2`` for every channel (differentiable)."""
        total = None
        for s in self.slices:
            part = s.scatter(s.per_index(s.tensor.pow(2)), self.n)
            total = part if total is None else total + part.to(total.device)
        return total if total is not None else torch.zeros(self.n)

    def penalty(self) -> torch.Tensor:
        """``lam * sum_c w_c ||W_c||_2`` as a differentiable loss term."""
        sq = self.group_norms_sq()
        return self.lam * (self.weights.to(sq.device, sq.dtype) * torch.sqrt(sq + self.eps)).sum()

    @torch.no_grad()
    def prox(self, lr: float) -> None:
        """The proximal step of the penalty on the weights (group soft-thresholding)."""
        norms = torch.sqrt(self.group_norms_sq())
        w = self.weights.to(norms.device, norms.dtype)
        factor = torch.clamp(1.0 - lr * self.lam * w / norms.clamp_min(1e-30), min=0.0)
        for s in self.slices:
            per_index = torch.ones(s.tensor.shape[s.dim], dtype=factor.dtype, device=factor.device)
            for rows, channels in zip(s.rows, s.channels):
                per_index[rows.to(factor.device)] *= factor[channels.to(factor.device)]
            shape = [1] * s.tensor.dim()
            shape[s.dim] = -1
            s.tensor.mul_(per_index.view(shape).to(s.tensor.dtype))


def oicsr_importance(pm) -> np.ndarray:
    """``I_c = ||W_c||^2 / |W_c|`` for every channel id."""
    n = state_of(pm).index.group_of.size
    energy = torch.zeros(n, dtype=torch.float64)
    size = torch.zeros(n, dtype=torch.float64)
    for s in tied_slices(pm):
        t = s.tensor.detach().double()
        energy += s.scatter(s.per_index(t.pow(2)).cpu(), n)
        size += s.scatter(s.per_index(torch.ones_like(t)).cpu(), n)
    return (energy / size.clamp_min(1.0)).numpy()


def relative_oicsr_importance(pm) -> np.ndarray:
    """``I_c``: :func:`oicsr_importance` relative to the mean over the channel's group."""
    return relative_to_group(pm, oicsr_importance(pm))


def greedy_prune(pm, target: float, step: float = 0.05, finetune: Optional[Callable[[object], None]] = None,
                 importance: Callable = relative_oicsr_importance) -> BudgetResult:
    """Global greedy pruning to a MACs reduction ``target``.

    Args:
        pm: a prepared model (masks already at zero stay removed).
        target: MACs reduction to reach, in (0, 1), relative to the unpruned model.
        step: fraction of the remaining channels switched off per iteration.
        finetune: called with ``pm`` after each iteration (a few training steps), or None.
        importance: channel scores, recomputed each iteration (lowest removed first).

    Returns:
        The :class:`~fxprune.methods.budget.BudgetResult`; the last iteration is bisected
        so the result lands within one channel of the target.
    """
    index = state_of(pm).index
    before = unpruned_macs(pm)
    while True:
        alive = alive_channels(pm)
        scores = np.where(alive, importance(pm), -np.inf)
        reduction = (before - measured_macs(pm)) / before
        saved = current_masks(pm)
        n_step = max(1, int(step * alive.sum()))
        lowest = [c for c in np.argsort(scores, kind="stable") if alive[c]][:n_step]
        switch_off(pm, index, lowest)
        stepped = (before - measured_macs(pm)) / before
        if stepped >= target or stepped <= reduction:
            restore_masks(pm, saved)
            return prune_to_macs(pm, target, scores)
        if finetune is not None:
            finetune(pm)
