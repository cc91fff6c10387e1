"""EPFS: structured pruning with deep-feature stabilisation (Xu et al., Neural Comput. Appl. 2021).

Each structure's output is scaled by a learnable mask: every channel group's mask
vector (filter pruning) and every residual branch's scalar gate (block pruning), both
inserted by :func:`fxprune.prepare`. Training adds to the task loss

    L = L_task + lam_c * L_center(features, y)          (smooth: autograd, weight optimiser)
          + lam_2/2 * sum_i m_i^2                        (smooth: the l2 term on filter masks)
          + lam_1 * sum_i w_i |m_i| + lam_g * sum_b w_b |g_b|    (non-smooth: FISTA's prox)

and the masks and gates are updated by FISTA (soft-thresholding gives exact zeros, Beck
and Teboulle's momentum speeds convergence), never weight-decayed; the weights keep
their own optimiser. ``w_i`` are 1, or with ``macs_weighted`` the MACs a channel (or
branch) controls relative to the mean, so costly structures are pushed harder.

The l2 term. The paper does not publish its exact form; fxprune uses the elastic net
``lam_1 |m| + lam_2/2 m^2`` on filter masks. Reasons: (1) the next layer can grow its
weights to undo a shrinking mask, so l1 alone can be dodged by trading scale; the l2
term bounds the masks and closes that door together with the weights' own decay; (2)
the elastic net's grouping effect keeps correlated filters of a layer together rather
than picking one at random; (3) it makes the problem strongly convex in the masks, so
FISTA converges linearly instead of as 1/k^2. Gates get the l1 term only.

Center Loss (Wen et al., ECCV 2016) is taken on the classifier's input, which fxprune
finds in the prepared graph; its centres move with the usual rate ``alpha = 0.5``.

A user's training loop needs four lines::

    epfs = fxprune.EPFS(pm, num_classes=10)
    opt = torch.optim.SGD(fxprune.weight_parameters(pm), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for x, y in loader:
        loss = F.cross_entropy(pm(x), y) + epfs.loss(y)
        opt.zero_grad(); epfs.zero_grad(); loss.backward(); opt.step(); epfs.step()
    epfs.prune(target=0.5)            # or epfs.finish(): keep exactly the zeros FISTA found
    small = fxprune.finalize(pm)
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch

from fxprune.core.channel_cost import branch_macs, channel_macs, mean_channel_macs, relative_channel_macs
from fxprune.core.finalize.decide import decide, emptied_groups
from fxprune.core.finalize.fold import can_fold_into, module_calls, norm_after
from fxprune.core.ir import state_of
from fxprune.core.masks import ROLE, gate_parameters, mask_parameters, role
from fxprune.errors import FxPruneError
from fxprune.methods.budget import BudgetResult, prune_to_macs
from fxprune.methods.center_loss import CenterLoss
from fxprune.methods.features import FeatureTap
from fxprune.methods.fista import FISTA
from fxprune.methods.importance import channel_importance, relative_to_group


class EPFS:
    """EPFS sparse training of a prepared model's masks and gates.

    Args:
        pm: a model from :func:`fxprune.prepare`.
        lr: FISTA's step size on the masks and gates.
        l1: l1 strength on channel masks (``lam_1``).
        l2: l2 strength on channel masks (``lam_2``, the elastic-net term).
        gate_l1: l1 strength on branch gates (``lam_g``); defaults to ``l1``.
        center: weight of Center Loss (0 turns it off).
        num_classes: number of classes, needed for Center Loss.
        center_alpha: rate of the centre update.
        filters: train (and prune) channel masks.
        blocks: train (and prune) branch gates.
        macs_weighted: weight each penalty by the MACs its structure controls.
        classifier: module path of the classifier for Center Loss; found when None.
        restart: FISTA's momentum restart (see :class:`FISTA`). The default, O'Donoghue and
            Candes' gradient restart, keeps the momentum from building up over the thousands
            of noisy minibatch steps of a training run, where plain Beck-Teboulle momentum
            (``None``) tends to 1 and makes the masks oscillate.
        normalise: after each FISTA step, divide the masks of every group that only feeds
            layers followed by BatchNorm (:func:`normalised_groups`) by their largest value.
            In training such a model cannot see a group's common scale, so l1 would shrink
            the whole group together (at a pace set by its penalty weight, not by what it
            is worth) and BatchNorm's running statistics would lag behind. Held at a largest
            value of 1, the l1 step still takes ``lr * l1`` off every mask, and the rescale
            gives it back to the largest: what shrinks is each mask *relative to its group*,
            the mask's share that the model does see. Off by default.
    """

    def __init__(self, pm, lr: float = 0.01, l1: float = 1e-4, l2: float = 1e-4, gate_l1: Optional[float] = None,
                 center: float = 0.0, num_classes: Optional[int] = None, center_alpha: float = 0.5,
                 filters: bool = True, blocks: bool = True, macs_weighted: bool = True,
                 classifier: Optional[str] = None, restart="gradient", normalise: bool = False):
        if not (filters or blocks):
            raise FxPruneError("EPFS needs filters=True, blocks=True or both", hint="pick what to prune")
        if blocks and not gate_parameters(pm):
            raise FxPruneError("block pruning asked for, but the model has no removable residual branch",
                               hint="use blocks=False, or prepare with gate_branches=True on a residual model")
        self.pm = pm
        self.l2 = l2 if filters else 0.0
        self.filters, self.blocks = filters, blocks
        self.macs_weighted = macs_weighted
        groups = []
        if filters:
            weights = self._mask_weights() if macs_weighted else None
            groups.append({"params": mask_parameters(pm), "lam": l1, "weights": weights})
        if blocks:
            weights = self._gate_weights() if macs_weighted else None
            groups.append({"params": gate_parameters(pm), "lam": l1 if gate_l1 is None else gate_l1,
                           "weights": weights})
        self.optimizer = FISTA(groups, lr=lr, restart=restart)
        self._annealed = 0.0  # the MACs reduction anneal() has switched off so far
        self.normalised = normalised_groups(pm) if (normalise and filters) else []
        if self.normalised:
            self.optimizer.register_step_post_hook(lambda *_: self._normalise())
        self.center_weight = center
        self.center_loss = None
        self.tap = None
        if center > 0:
            if num_classes is None:
                raise FxPruneError("Center Loss needs num_classes", hint="pass num_classes=... or center=0")
            self.center_loss = CenterLoss(num_classes, alpha=center_alpha)
            self.tap = FeatureTap(pm, classifier)

    # -- the training loop's four calls -------------------------------------------------------
    def loss(self, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The smooth EPFS terms for the latest forward pass: Center Loss and the l2 on masks."""
        total = torch.zeros((), device=self._device())
        if self.l2 and self.filters:
            total = total + 0.5 * self.l2 * sum(m.pow(2).sum() for m in mask_parameters(self.pm))
        if self.center_loss is not None:
            if targets is None or self.tap.features is None:
                raise FxPruneError("Center Loss needs the targets of the batch just run",
                                   hint="call epfs.loss(targets) after pm(inputs)")
            self.center_loss.train(self.pm.training)
            total = total + self.center_weight * self.center_loss(self.tap.features, targets)
        return total

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """A FISTA step on masks and gates (call after the weight optimiser's step)."""
        self.optimizer.step()

    # -- after training ---------------------------------------------------------------------
    def finish(self) -> None:
        """Write FISTA's proximal iterates (with their exact zeros) into the masks and gates."""
        self.optimizer.commit_iterates()

    def prune(self, target: Optional[float] = None) -> Optional[BudgetResult]:
        """End training and decide what goes.

        Without ``target`` the zeros FISTA reached are what finalize removes. With a MACs
        reduction ``target`` the structures (channels and, with block pruning, branches
        together) are ranked and the lowest removed until the finalized model's measured
        MACs fall by ``target`` (within one channel). A channel ranks by its mask's magnitude
        relative to the mean of its group (BatchNorm after the next layer makes a group's
        common scale meaningless); a branch by its gate's magnitude relative to the mean
        gate, so that both are on one scale. Cost counts once: with
        ``macs_weighted`` the penalty already pushed costly structures harder; without it
        the scores are divided by the MACs each structure controls.
        """
        self.finish()
        self._keep_one_per_group()
        if target is None:
            return None
        index = state_of(self.pm).index
        magnitude = np.zeros(index.group_of.size)
        for gi, g in enumerate(index.groups):
            members = index.group_of == gi
            magnitude[members] = self.pm.fxprune.masks[g.name].detach().abs().cpu().numpy()[index.position[members]]
        # A mask that feeds a convolution followed by BatchNorm is scale-invariant in training:
        # the whole group can shrink at no cost, at a pace set by its penalty weight, not by
        # its importance. Only a mask's size relative to its group carries information.
        channel_scores = relative_to_group(self.pm, magnitude) if self.filters else None
        # Gates are ranked the same way, relative to the mean gate: the penalty shrinks them
        # all, and channels and branches must share one scale to be ranked together.
        gate_scores = None
        if self.blocks:
            gates = {b: float(g.detach().abs()) for b, g in self.pm.fxprune.gates.items()}
            mean = np.mean(list(gates.values())) if gates else 0.0
            gate_scores = {b: v / mean if mean > 0 else v for b, v in gates.items()}
        if not self.macs_weighted:  # cost counts once: a weighted penalty already pushed costly structures harder
            cost = channel_macs(self.pm)
            unit = mean_channel_macs(cost)

            def per_cost(score, macs):  # a score per unit of MACs, relative to the mean channel's
                return score / np.maximum(macs / unit, 1e-12)

            if channel_scores is not None:
                channel_scores = per_cost(channel_scores, cost)
            if gate_scores is not None:
                bcost = branch_macs(self.pm)
                gate_scores = {b: float(per_cost(v, bcost.get(b, 0.0))) for b, v in gate_scores.items()}
        return prune_to_macs(self.pm, target, channel_scores, gate_scores)

    def anneal(self, progress: float, target: float, until: float = 0.5,
               release: bool = True) -> Optional[BudgetResult]:
        """Gradual pruning during sparse training: switch off structures as training goes.

        The MACs reduction reached so far follows Zhu and Gupta's cubic schedule,
        ``target * (1 - (1 - progress / until)**3)``, so the whole ``target`` is off by
        ``progress == until`` and the rest of the phase trains the network without those
        structures. Each call ranks as :meth:`prune` does, switches off the lowest until
        the schedule's reduction is met, and FISTA holds them at exactly zero from then on.
        The final :meth:`prune` then removes what was switched off and costs nothing.

        Call it every few dozen steps (a step hook); calls that would add nothing are cheap.

        Args:
            progress: the share of the sparse phase done, in ``[0, 1]``.
            target: the MACs reduction to end with, in ``(0, 1)``.
            until: the share of the phase by which ``target`` is reached.
            release: once ``target`` is off, set the l1 strengths to zero, so that the rest
                of the phase trains the surviving masks and gates by their gradient alone
                (what was switched off stays at zero). Otherwise l1 keeps shrinking the
                survivors, the residual stream's among them, whose scale the model does see.

        Returns:
            The :class:`BudgetResult` of this step, or None if nothing was switched off.
        """
        goal = target * (1.0 - (1.0 - min(1.0, max(0.0, progress) / until)) ** 3)
        result = None
        if goal > self._annealed + 1e-3:
            result = self.prune(target=goal)
            self._annealed = result.reduction
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    self.optimizer.hold_at_zero(p, p.detach() == 0)
        if release and progress >= until:
            for group in self.optimizer.param_groups:
                group["lam"] = 0.0
        return result

    def anneal_hook(self, total_steps: int, target: float, until: float = 0.5, every: int = 20,
                    release: bool = True):
        """A :class:`fxprune.training.Trainer` step hook calling :meth:`anneal` every ``every`` steps.

        ``total_steps`` is the length of the sparse phase in optimiser steps.
        """

        def hook(trainer, step: int) -> None:
            if step % every == 0:
                self.anneal(step / total_steps, target, until=until, release=release)

        return hook

    @torch.no_grad()
    def _normalise(self) -> None:
        """Rescale each BatchNorm-normalised group's masks so that the largest is 1 (see ``normalise``)."""
        for name in self.normalised:
            mask = self.pm.fxprune.masks[name]
            state = self.optimizer.state.get(mask)
            iterate = state["x"] if state else mask
            scale = float(iterate.abs().max())
            if scale > 0 and scale != 1.0:
                mask.div_(scale)
                if state:
                    state["x"].div_(scale)

    def _keep_one_per_group(self) -> None:
        """A group FISTA emptied keeps its most important channel (by the l1 norm of its filters).

        Groups that live only inside a branch whose gate is zero are left empty: the branch
        goes, and they with it.
        """
        state = state_of(self.pm)
        index = state.index
        emptied = {g.name for g, _ in emptied_groups(state, decide(self.pm, state, 0.0, validate=False))}
        if not emptied:
            return
        scores = channel_importance(self.pm, "l1")
        with torch.no_grad():
            for gi, g in enumerate(index.groups):
                if g.name in emptied:
                    members = np.flatnonzero(index.group_of == gi)
                    best = members[np.argmax(scores[members])]
                    self.pm.fxprune.masks[g.name][int(index.position[best])] = 1.0
        warnings.warn(f"the l1 penalty emptied {len(emptied)} channel group(s); each keeps its most important "
                      "channel. Lower l1 (or use prune(target=...)) to choose what goes.", stacklevel=2)

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict()}
        if self.center_loss is not None:
            state["center"] = self.center_loss.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.center_loss is not None and "center" in state:
            self.center_loss.load_state_dict(state["center"])

    def close(self) -> None:
        """Remove the feature hook from the prepared model."""
        if self.tap is not None:
            self.tap.close()

    # -- helpers ----------------------------------------------------------------------------------
    def _device(self):
        return mask_parameters(self.pm)[0].device if mask_parameters(self.pm) else torch.device("cpu")

    def _mask_weights(self) -> list:
        index = state_of(self.pm).index
        cost = relative_channel_macs(self.pm, floor=1e-3)
        out = []
        for gi, g in enumerate(index.groups):
            members = np.flatnonzero(index.group_of == gi)
            w = np.ones(g.size)
            w[index.position[members]] = cost[members]
            out.append(torch.as_tensor(w, dtype=self.pm.fxprune.masks[g.name].dtype))
        return out

    def _gate_weights(self) -> list:
        bcost = branch_macs(self.pm)
        values = np.array(list(bcost.values()) or [1.0])
        mean = values[values > 0].mean() if (values > 0).any() else 1.0
        return [torch.tensor(max(bcost.get(name, 0.0), 1e-3 * mean) / mean) for name in self.pm.fxprune.gates]


def normalised_groups(pm) -> list:
    """Names of the mask groups whose every reader is a layer followed by BatchNorm.

    In training mode such a model computes the same function whatever the common scale
    of the group's masks (BatchNorm divides it out), e.g. the inner channels of a ResNet
    block, or the residual stream of a stage that ends in a downsampling convolution.
    """
    calls = module_calls(pm)
    normalised: dict = {}
    for node in pm.graph.nodes:
        if role(node) != "mask":
            continue
        ok = bool(node.users) and all(can_fold_into(pm, u, calls) and norm_after(pm, u, calls) is not None
                                      for u in node.users)
        for g in node.meta[ROLE]["groups"]:
            normalised[g] = normalised.get(g, True) and ok
    return [f"g{g}" for g, ok in sorted(normalised.items()) if ok]
