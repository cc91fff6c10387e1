"""Reconstruction after pruning: the layers that read removed channels make up for them.

A pruned channel's activation is rarely independent of the channels kept beside it. At
every mask site, the activations the consumers read are streamed once over a few hundred
unlabelled calibration images (``sum x`` and ``sum x x^T`` over every sample and spatial
position, float64: memory independent of the number of images), and each removed
channel is fitted as a ridge-regularised least-squares linear function, with an
intercept, of the kept ones. The fit folds into every consumer of the site (He et al.,
ICCV 2017; Neuron Merging, NeurIPS 2020; CaP, arXiv 2108.13728):

    z_K = s_K x_K   what the consumer reads of the kept channels (s: the masks, fractional or 1)
    t_R = r_R x_R   what it read of the removed ones before the cut (r: ``reference``, default 1)
    t_R ~ A z_K + c                           ridge: (Cov z_K + lam I) A^T = Cov(z_K, t_R)
    conv:  W[:, K] += W[:, R] A  (at every kernel position)     bias += sum_kernel W[:, R] c

The intercept goes into the consumer's bias, or, where it has none and a BatchNorm reads
its output alone, into that BatchNorm's running mean (exact in eval mode); else it is
dropped and the reason recorded. Sites are fitted in graph order, each on activations
that the reconstruction of the sites before it already changed (``sequential=False``: one
pass for all). A residual stream or concat that spans several sites is compensated at
each of them.

Only ordinary weights change, never masks: finalize of the reconstructed model computes
exactly what the masked, reconstructed model computes, and checks it as always. Recalibrate
BatchNorm afterwards (:func:`fxprune.training.recalibrate_bn`).

Example:
    >>> fxprune.prune_by_importance(pm, 0.5)                         # doctest: +SKIP
    >>> result = fxprune.reconstruct(pm, calibration_batches)        # doctest: +SKIP
    >>> small = fxprune.finalize(pm)                                 # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
import torch.nn as nn

from fxprune.core.finalize.decide import decide
from fxprune.core.finalize.fold import can_fold_into, module_calls, norm_after
from fxprune.core.ir import state_of
from fxprune.core.masks import role
from fxprune.core.tensors import eval_mode
from fxprune.errors import FxPruneError
from fxprune.report.compare import model_device

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class SiteFit:
    """What reconstruction did at one mask site.

    Args:
        site: the mask site's name.
        kept, removed: how many indices of the site survive, and how many go.
        consumers: the layers that took the fit.
        unexplained: share of the removed channels' variance (as the consumers read it) that
            the fit leaves unexplained: 0 is perfect, 1 is no better than their mean.
        skipped: consumer -> why it could not take the fit.
    """

    site: str
    kept: int
    removed: int
    consumers: list = field(default_factory=list)
    unexplained: float = float("nan")
    skipped: dict = field(default_factory=dict)


@dataclass
class Reconstruction:
    """The outcome of :func:`reconstruct`: per site the fit, sites left alone and why, the cost."""

    fits: list
    skipped: dict
    images: int
    passes: int
    seconds: float
    statistics_bytes: int

    def summary(self) -> str:
        done = sum(len(f.consumers) for f in self.fits)
        return (f"{done} consumers at {len(self.fits)} sites reconstructed from {self.images} images "
                f"({self.passes} passes, {self.seconds:.1f} s); {len(self.skipped)} sites skipped")


class SecondMoments:
    """Streaming ``count``, ``sum x`` and ``sum x x^T`` (float64) of dimension ``dim``'s entries.

    Example:
        >>> m = SecondMoments(2)
        >>> m.add(torch.tensor([[1.0, 2.0], [3.0, 6.0]]), dim=1)
        >>> m.mean().tolist(), m.covariance()[0].tolist()
        ([2.0, 4.0], [1.0, 2.0])
    """

    def __init__(self, size: int, device=None):
        self.count = 0
        self.total = torch.zeros(size, dtype=torch.float64, device=device)
        self.outer = torch.zeros(size, size, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor, dim: int) -> None:
        flat = x.detach().movedim(dim, -1).reshape(-1, self.total.numel()).to(torch.float64)
        self.count += flat.shape[0]
        self.total += flat.sum(0)
        self.outer += flat.T @ flat

    def mean(self) -> torch.Tensor:
        return self.total / max(1, self.count)

    def covariance(self) -> torch.Tensor:
        mean = self.mean()
        return self.outer / max(1, self.count) - torch.outer(mean, mean)

    @property
    def nbytes(self) -> int:
        return (self.total.numel() + self.outer.numel()) * 8


def reconstruct(pm: torch.fx.GraphModule, batches: Iterable, *, ridge: float = 1e-2, reference: Optional[dict] = None,
                threshold: float = 0.0, num_batches: Optional[int] = None, sequential: bool = True) -> Reconstruction:
    """Compensate the channels the masks remove in the layers that consume them.

    Args:
        pm: a model from :func:`fxprune.prepare` whose masks say what goes (any method's,
            fractional ones included).
        batches: calibration data, no labels needed: tensors, or ``(inputs, ...)`` tuples of
            which the first item is the model's input. Read once per site (``sequential``), so
            a list or a re-iterable loader.
        ridge: the ridge strength relative to the mean variance of the kept channels at a site.
        reference: group name -> mask vector the consumers read before the cut (e.g. masks
            saved before :meth:`fxprune.EPFS.prune`); the removed channels are fitted at that
            scale. Default: 1 for every channel, what the dense model's consumers read.
        threshold: the magnitude at or below which a mask entry counts as removed (as finalize).
        num_batches: read at most this many batches (None: all).
        sequential: fit the sites in graph order, each on activations already changed by the
            reconstruction before it (one pass per site, each stopped at its site); False:
            one pass for all sites.

    Returns:
        A :class:`Reconstruction` record; ``pm``'s consumer weights (and biases, or BatchNorm
        running means) are changed in place, its masks are not.

    Raises:
        NotPreparedError: ``pm`` was not made by :func:`fxprune.prepare`.
        FxPruneError: no batches, a one-shot iterator where several passes are needed, or a
            ridge that is not a positive number.
    """
    state = state_of(pm)
    if not isinstance(ridge, (int, float)) or not ridge > 0:
        raise FxPruneError(f"ridge must be a number > 0, got {ridge!r}",
                           hint="use a small relative strength such as 1e-2")
    start = time.perf_counter()
    plan = decide(pm, state, threshold)
    calls = module_calls(pm)
    work, skipped = _sites_to_fit(pm, state, plan, calls)
    waves = [[s] for s in work] if sequential else ([work] if work else [])
    if len(waves) > 1 and iter(batches) is batches:
        raise FxPruneError("reconstruct reads the calibration batches once per site, but got a one-shot iterator",
                           hint="pass a list of batches or a re-iterable loader, or sequential=False")
    fits, images, peak = [], 0, 0
    for wave in waves:
        moments, images = _collect(pm, wave, batches, num_batches)
        peak = max(peak, sum(m.nbytes for m in moments.values()))
        for job in wave:
            fits.append(_fit_and_fold(pm, job, moments[job.name], ridge, reference, calls))
    if not waves:
        images = _count_images(batches, num_batches)
    return Reconstruction(fits, skipped, images, len(waves), time.perf_counter() - start, peak)


@dataclass
class _Job:
    """One site to fit: its mask node and module, its kept and removed indices, its consumers."""

    name: str
    node: torch.fx.Node
    dim: int
    kept: torch.Tensor
    removed: torch.Tensor
    consumers: list
    skipped: dict


def _sites_to_fit(pm, state, plan, calls) -> tuple:
    work, skipped = [], {}
    for node in pm.graph.nodes:
        if role(node) != "mask":
            continue
        name = node.meta["fxprune"]["site"]
        site = state.sites[name]
        cids = state.index.node_layouts[site.source][site.dim]
        kept = torch.as_tensor(plan.keep(cids), dtype=torch.long)
        removed = torch.as_tensor(sorted(set(range(cids.shape[0])) - set(kept.tolist())), dtype=torch.long)
        if removed.numel() == 0:
            continue
        if node.args[0].op == "get_attr":
            skipped[name] = "the masked tensor is a parameter, not an activation"
            continue
        if kept.numel() == 0:
            skipped[name] = "every index of the site is removed"
            continue
        consumers, reasons = [], {}
        for user in node.users:
            reason = _why_not(pm, user, site.dim, calls, plan)
            if reason is None:
                consumers.append(user)
            else:
                reasons[user.name] = reason
        if consumers:
            work.append(_Job(name, node, site.dim, kept, removed, consumers, reasons))
        else:
            skipped[name] = "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "no consumer"
    return work, skipped


def _why_not(pm, user: torch.fx.Node, dim: int, calls: dict, plan) -> Optional[str]:
    """Why a mask's user cannot take a fit, or None when it can."""
    if user.name in plan.removed_nodes:
        return "inside a removed branch"
    if not can_fold_into(pm, user, calls):
        return "not a layer called once with its own (untied) weights"
    layer = pm.get_submodule(user.target)
    if isinstance(layer, _CONVS):
        if layer.groups != 1:
            return f"grouped convolution (groups={layer.groups})"
        return None if dim == 1 else f"convolution reading the masked dimension {dim}, not 1"
    if isinstance(layer, nn.Linear):
        ndim = user.args[0].meta.get("tensor_meta").shape.__len__() if "tensor_meta" in user.args[0].meta else None
        return None if dim == -1 or ndim is None or dim == ndim - 1 else f"linear layer reading dimension {dim}"
    return f"{type(layer).__name__} is not a convolution or linear layer"


class _Stop(Exception):
    """Raised by a hook once every site of a pass has been seen: the rest of the forward is not needed."""


def _collect(pm, wave: list, batches: Iterable, num_batches: Optional[int]) -> tuple:
    """Second moments of the input of each site of ``wave`` over the calibration batches."""
    moments: dict = {}
    seen: set = set()
    handles = []

    def hook_for(job):
        def hook(module, args, output):
            x = args[0]
            if job.name not in moments:
                moments[job.name] = SecondMoments(x.shape[job.dim], x.device)
            moments[job.name].add(x, job.dim)
            seen.add(job.name)
            if len(seen) == len(wave):
                raise _Stop
        return hook

    for job in wave:
        handles.append(pm.get_submodule(job.node.target).register_forward_hook(hook_for(job)))
    images = 0
    device = model_device(pm)
    try:
        with eval_mode(pm), torch.no_grad():
            for i, batch in enumerate(batches):
                if num_batches is not None and i >= num_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                seen.clear()
                try:
                    pm(x.to(device))
                except _Stop:
                    pass
                images += x.shape[0]
    finally:
        for h in handles:
            h.remove()
    if images == 0:
        raise FxPruneError("reconstruct got no calibration batches",
                           hint="pass a few hundred unlabelled inputs, e.g. a list of batches of training images")
    return moments, images


def _count_images(batches: Iterable, num_batches: Optional[int]) -> int:
    images = 0
    for i, batch in enumerate(batches):
        if num_batches is not None and i >= num_batches:
            break
        images += (batch[0] if isinstance(batch, (tuple, list)) else batch).shape[0]
    if images == 0:
        raise FxPruneError("reconstruct got no calibration batches",
                           hint="pass a few hundred unlabelled inputs, e.g. a list of batches of training images")
    return images


def _scales(pm, node: torch.fx.Node, reference: Optional[dict]) -> tuple:
    """The site's factor per index now (the masks), and before the cut (``reference``, default 1)."""
    module = pm.get_submodule(node.target)
    names = [a.target.rsplit(".", 1)[-1] for a in node.args[1:]]
    masks = [pm.fxprune.masks[n].detach() for n in names]
    now = module.scale(*masks).to(torch.float64)
    if reference is None:
        return now, torch.ones_like(now)
    before = [torch.as_tensor(reference[n], dtype=masks[i].dtype, device=masks[i].device) if n in reference
              else torch.ones_like(masks[i]) for i, n in enumerate(names)]
    return now, module.scale(*before).to(torch.float64)


def _fit_and_fold(pm, job: _Job, moments: SecondMoments, ridge: float, reference, calls) -> SiteFit:
    now, before = _scales(pm, job.node, reference)
    device = moments.total.device
    kept, removed = job.kept.to(device), job.removed.to(device)
    s, r = now.to(device)[kept], before.to(device)[removed]
    cov, mean = moments.covariance(), moments.mean()
    czz = s[:, None] * cov[kept][:, kept] * s[None, :]
    ctz = r[:, None] * cov[removed][:, kept] * s[None, :]
    ctt = r[:, None] * cov[removed][:, removed] * r[None, :]
    lam = ridge * float(czz.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(len(kept), dtype=torch.float64, device=device)
    coef = torch.linalg.solve(czz + lam * eye, ctz.T).T  # [removed, kept]
    intercept = r * mean[removed] - coef @ (s * mean[kept])
    residual = ctt - coef @ ctz.T - ctz @ coef.T + coef @ czz @ coef.T
    total = float(ctt.trace())
    fit = SiteFit(job.name, len(kept), len(removed), skipped=dict(job.skipped),
                  unexplained=float(residual.trace()) / total if total > 0 else 0.0)
    for user in job.consumers:
        note = _fold(pm, user, kept, removed, coef, intercept, calls)
        fit.consumers.append(user.name)
        if note:
            fit.skipped[user.name] = note
    return fit


@torch.no_grad()
def _fold(pm, user: torch.fx.Node, kept, removed, coef, intercept, calls) -> Optional[str]:
    """``W[:, K] += W[:, R] A`` and the intercept ``W[:, R] c`` into the bias; a note if it had nowhere to go."""
    layer = pm.get_submodule(user.target)
    weight = layer.weight
    w = weight.detach().to(torch.float64)
    w_removed = w[:, removed.to(w.device)]                                  # [out, R, *kernel]
    delta = torch.einsum("or...,rk->ok...", w_removed, coef.to(w.device))   # [out, K, *kernel]
    w[:, kept.to(w.device)] += delta
    weight.copy_(w.to(weight.dtype))
    shift = torch.einsum("or...,r->o", w_removed, intercept.to(w.device))
    if getattr(layer, "bias", None) is not None:
        layer.bias.add_(shift.to(layer.bias.dtype))
        return None
    norm = norm_after(pm, user, calls)
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_mean is not None:
        norm.running_mean.sub_(shift.to(norm.running_mean.dtype))
        return None
    return "intercept dropped: no bias, and no BatchNorm reading the layer alone"
