"""Reconstruction after pruning: the layers that read removed channels make up for them.

A pruned channel's activation is rarely independent of the channels kept beside it. At
every mask site, the activations its consumers read are streamed over a few hundred
unlabelled calibration images (sums of ``z``, ``t``, ``z z^T``, ``t z^T`` over every sample
and spatial position, float64: memory independent of the number of images), ``t`` is
fitted as a ridge-regularised least-squares linear function, with an intercept, of the
kept channels ``z``, and the fit is folded into every consumer of the site (He et al.,
ICCV 2017; Neuron Merging, NeurIPS 2020; CaP, arXiv 2108.13728):

    z = s_K x_K        what a consumer reads of the kept channels now (s: the masks, fractional or 1)
    t ~ B z + c        ridge towards the prior P: B = (Cov(t, z) + lam P) (Cov z + lam I)^-1
    conv:  W'[:, K] = (W[:, T] B at every kernel position)      bias += sum_kernel W[:, T] c

``target`` says what ``t`` is:

- ``"dense"`` (default): every channel the consumer read before the cut, ``t = r x_ref``,
  computed by a copy of the model with the masks and gates at ``reference`` (default 1:
  the dense model) and the weights as they were before reconstruction, run beside it
  on the same images. Removed channels are fitted from the kept ones, and the kept ones
  are corrected for what pruning upstream changed (prior P: the identity on them).
- ``"removed"``: only the removed channels, ``t = r_R x_R``, from the pruned model's own
  forward (prior 0, ``W'[:, K] = W[:, K] + W[:, R] B``). No copy of the model is made.

The intercept goes into the consumer's bias, or, where it has none and a BatchNorm reads
its output alone, into that BatchNorm's running mean (exact in eval mode); else it is
dropped, and the reason recorded. Sites are fitted in graph order, each on activations
that the reconstruction of the sites before it already changed (``sequential=False``: one
pass for all). A residual stream or concat that spans several sites is compensated at
each of them. Consumers that cannot take a fit are left alone with a recorded reason:
grouped or depthwise convolutions, layers called more than once, tied weights.

Call it right after the cut, before anything else changes the model: with ``target="dense"``
the model as it is when called (masks and gates set to ``reference``) is what is fitted to,
so BatchNorm recalibrated before would make the pruned model's statistics the reference.

Only ordinary weights change, never masks: finalize of the reconstructed model computes
exactly what the masked, reconstructed model computes, and checks it as always. Recalibrate
BatchNorm afterwards (:func:`fxprune.training.recalibrate_bn`).

Example:
    >>> fxprune.prune_by_importance(pm, 0.5)                         # doctest: +SKIP
    >>> result = fxprune.reconstruct(pm, calibration_batches)        # doctest: +SKIP
    >>> small = fxprune.finalize(pm)                                 # doctest: +SKIP
"""

from __future__ import annotations

import copy
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
from fxprune.methods.least_squares import JointMoments, Reader, fold_fit, ridge_fit
from fxprune.report.compare import model_device

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TARGETS = ("dense", "removed")


@dataclass
class SiteFit:
    """What reconstruction did at one mask site.

    Args:
        site: the mask site's name.
        kept, removed: how many indices of the site survive, and how many go.
        consumers: the layers that took the fit.
        unexplained: share of the fitted channels' variance that the fit leaves unexplained
            (0: perfect; 1: no better than their mean).
        skipped: consumer -> why it could not take the fit, or where its intercept could not go.
    """

    site: str
    kept: int
    removed: int
    consumers: list = field(default_factory=list)
    unexplained: float = float("nan")
    skipped: dict = field(default_factory=dict)


@dataclass
class Reconstruction:
    """What :func:`reconstruct` did: per site the fit, the sites left alone and why, and the cost."""

    fits: list
    skipped: dict
    images: int
    passes: int
    seconds: float
    statistics_bytes: int


def reconstruct(pm: torch.fx.GraphModule, batches: Iterable, *, ridge: float = 1e-2, target: str = "dense",
                reference: Optional[dict] = None, threshold: float = 0.0, num_batches: Optional[int] = None,
                sequential: bool = True, patches: bool = True) -> Reconstruction:
    """Compensate the channels the masks remove in the layers that consume them.

    Args:
        pm: a model from :func:`fxprune.prepare` whose masks say what goes (any method's,
            fractional ones included).
        batches: calibration data, no labels needed: tensors, or ``(inputs, ...)`` tuples whose
            first item is the model's input. Read once per site (``sequential``), so a list or a
            re-iterable loader.
        ridge: the ridge strength relative to the mean variance of the kept channels at a site.
        target: ``"dense"`` (every channel as the model before the cut read it) or ``"removed"``
            (the removed channels alone, from the pruned model's own forward); see the module.
        reference: mask or gate name (``g<k>``, ``b<k>``) -> its value before the cut (e.g. saved
            before :meth:`fxprune.EPFS.prune`); names not given are 1, the dense model.
        threshold: the magnitude at or below which a mask entry counts as removed (as finalize).
        num_batches: read at most this many batches (None: all).
        sequential: fit the sites in graph order, each on activations already changed by the
            reconstruction before it (a pass per site, each stopped at its site); False: one
            pass for all sites.
        patches: a 2-d convolution's fit maps its input patches (every kernel offset of every
            kept channel) to the patches it read before; False: one channel map, the same at
            every kernel offset (fewer statistics: channels squared instead of patch columns squared).

    Returns:
        A :class:`Reconstruction`; ``pm``'s consumer weights (and biases, or BatchNorm running
        means) are changed in place, its masks and gates are not.

    Raises:
        NotPreparedError: ``pm`` was not made by :func:`fxprune.prepare`.
        FxPruneError: no batches, a one-shot iterator where several passes are needed, an
            unknown target or a ridge that is not a positive number.
    """
    state = state_of(pm)
    if not isinstance(ridge, (int, float)) or not ridge > 0:
        raise FxPruneError(f"ridge must be a number > 0, got {ridge!r}", hint="use a small relative strength: 1e-2")
    if target not in TARGETS:
        raise FxPruneError(f"unknown reconstruction target {target!r}", hint=f"use one of {', '.join(TARGETS)}")
    start = time.perf_counter()
    calls = module_calls(pm)
    work, skipped = _sites_to_fit(pm, state, decide(pm, state, threshold), calls, patches)
    waves = [[job] for job in work] if sequential else ([work] if work else [])
    if len(waves) > 1 and iter(batches) is batches:
        raise FxPruneError("reconstruct reads the calibration batches once per site, but got a one-shot iterator",
                           hint="pass a list of batches or a re-iterable loader, or sequential=False")
    before = _reference_model(pm, reference) if target == "dense" and work else None
    fits, images, peak = [], None, 0
    for wave in waves:
        moments, images = _collect(pm, before, wave, batches, num_batches, reference)
        peak = max(peak, sum(m.nbytes for m in moments.values()))
        for job in wave:
            fits.append(_fit_and_fold(pm, job, moments, ridge, calls))
    if images is None:
        images = _count_images(batches, num_batches)
    return Reconstruction(fits, skipped, images, len(waves), time.perf_counter() - start, peak)


@dataclass
class _Job:
    """One site to fit: its mask node, kept and removed indices, consumers, and its factors now and before."""

    name: str
    node: torch.fx.Node
    dim: int
    kept: torch.Tensor
    removed: torch.Tensor
    consumers: list
    skipped: dict
    readers: dict = field(default_factory=dict)  # consumer name -> Reader
    now: Optional[torch.Tensor] = None      # factor per index: the masks now
    before: Optional[torch.Tensor] = None   # and before the cut (reference)
    target: str = "dense"


def _sites_to_fit(pm, state, plan, calls, patches: bool) -> tuple:
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
        elif kept.numel() == 0:
            skipped[name] = "every index of the site is removed"
        else:
            consumers, reasons = [], {}
            for user in node.users:
                reason = _why_not(pm, user, site.dim, calls, plan)
                if reason:
                    reasons[user.name] = reason
                else:
                    consumers.append(user)
            if consumers:
                readers = {u.name: Reader(pm.get_submodule(u.target), site.dim, patches) for u in consumers}
                work.append(_Job(name, node, site.dim, kept, removed, consumers, reasons, readers))
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
        meta = user.args[0].meta.get("tensor_meta")
        ndim = len(meta.shape) if meta is not None and hasattr(meta, "shape") else None
        return None if dim == -1 or ndim is None or dim == ndim - 1 else f"linear layer reading dimension {dim}"
    return f"{type(layer).__name__} is not a convolution or linear layer"


def _reference_model(pm, reference: Optional[dict]) -> nn.Module:
    """A copy of ``pm`` as it computed before the cut: masks and gates at ``reference`` (default 1)."""
    before = copy.deepcopy(pm)  # a plain copy of the graph and modules, weights as they are now
    with torch.no_grad():
        for bank in (before.fxprune.masks, before.fxprune.gates):
            for name, value in bank.items():
                if reference and name in reference:
                    value.copy_(torch.as_tensor(reference[name]))
                else:
                    value.fill_(1.0)
    return before


class _Stop(Exception):
    """Raised by a hook once every site of a pass has been seen: the rest of the forward is not needed."""


def _site_inputs(model: nn.Module, wave: list, x: torch.Tensor) -> dict:
    """Run ``model`` on ``x`` until every site of ``wave`` is reached; each site's input (before its mask)."""
    found, handles = {}, []

    def hook_for(name):
        def hook(module, args, output):
            found[name] = args[0]
            if len(found) == len(wave):
                raise _Stop
        return hook

    for job in wave:
        handles.append(model.get_submodule(job.node.target).register_forward_hook(hook_for(job.name)))
    try:
        model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return found


def _collect(pm, before, wave: list, batches: Iterable, num_batches: Optional[int], reference) -> tuple:
    """Joint moments, per site of ``wave`` and consumer, of what it reads now (``z``) and what is fitted (``t``)."""
    moments: dict = {}
    for job in wave:
        job.now, job.before = _factors(pm, job.node, reference)
        job.target = "dense" if before is not None else "removed"
    device, images = model_device(pm), 0
    with eval_mode(pm, *([before] if before is not None else [])), torch.no_grad():
        for i, batch in enumerate(batches):
            if num_batches is not None and i >= num_batches:
                break
            x = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
            now = _site_inputs(pm, wave, x)
            then = _site_inputs(before, wave, x) if before is not None else now
            for job in wave:
                for user, reader in job.readers.items():
                    _accumulate(moments, (job.name, user), job, reader, now[job.name], then[job.name])
            images += x.shape[0]
    if images == 0:
        raise FxPruneError("reconstruct got no calibration batches",
                           hint="pass a few hundred unlabelled inputs, e.g. a list of batches of training images")
    return moments, images


def _accumulate(moments: dict, key, job, reader: Reader, now: torch.Tensor, then: torch.Tensor) -> None:
    kept = reader.columns(job.kept.to(now.device))
    fitted = reader.columns(job.removed.to(now.device)) if job.target == "removed" else None
    pairs = zip(reader.rows(now), reader.rows(then)) if then is not now else ((a, a) for a in reader.rows(now))
    for rows_now, rows_then in pairs:  # unscaled: the masks' factors are applied to the moments at the end
        z = rows_now[:, kept]
        t = rows_then if fitted is None else rows_then[:, fitted]
        if key not in moments:
            moments[key] = JointMoments(z.shape[1], t.shape[1], z.device)
        moments[key].add(z, t)


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


def _factors(pm, node: torch.fx.Node, reference: Optional[dict]) -> tuple:
    """The site's factor per index now (the masks), and before the cut (``reference``, default 1)."""
    module = pm.get_submodule(node.target)
    names = [a.target.rsplit(".", 1)[-1] for a in node.args[1:]]
    masks = [pm.fxprune.masks[n].detach() for n in names]
    before = [torch.as_tensor(reference[n], dtype=m.dtype, device=m.device) if reference and n in reference
              else torch.ones_like(m) for n, m in zip(names, masks)]
    return module.scale(*masks).to(torch.float64), module.scale(*before).to(torch.float64)


def _fit_and_fold(pm, job: _Job, moments: dict, ridge: float, calls) -> SiteFit:
    fit = SiteFit(job.name, len(job.kept), len(job.removed), skipped=dict(job.skipped))
    unexplained = []
    for user, reader in job.readers.items():
        stats = moments[(job.name, user)]
        device = stats.z.device
        kept = reader.columns(job.kept.to(device))
        prior = torch.zeros_like(stats.tz)
        s, r = (reader.per_column(f.to(device)) for f in (job.now, job.before))
        if job.target == "dense":  # every column is fitted; a kept one's prior: itself, rescaled to before the cut
            fitted = torch.arange(stats.tz.shape[0], device=device)
            prior[kept, torch.arange(len(kept), device=device)] = r[kept] / s[kept]
        else:
            fitted = reader.columns(job.removed.to(device))
        coef, intercept, left = ridge_fit(stats, ridge, prior, s[kept], r[fitted])
        unexplained.append(left)
        node = next(u for u in job.consumers if u.name == user)
        note = fold_fit(pm.get_submodule(node.target), reader, kept, fitted, coef, intercept,
                        replace=job.target == "dense", norm=norm_after(pm, node, calls))
        fit.consumers.append(user)
        if note:
            fit.skipped[user] = note
    fit.unexplained = sum(unexplained) / len(unexplained)
    return fit
