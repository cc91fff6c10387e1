"""Pruning to a MACs budget: remove the lowest-ranked channels and branches until the target is met.

Candidates (channels, and optionally branches) are ranked by a score (low goes first).
The number removed is found by bisection on the *measured* MACs of the finalized model
(``fxprune.count``), so the result lands on the target rather than on an estimate:
the smallest prefix of the ranking whose removal reaches ``target`` is taken, which is
within one candidate's cost of the target. No group is ever emptied; a branch whose
gate is removed takes its inner groups with it.

    ranking:  c17 c3 b2 c40 c8 ...      (lower score first)
    k = bisect(0, N): reduction(first k removed) >= target

Example:
    >>> result = prune_to_macs(pm, 0.5, channel_scores=np.abs(masks))    # doctest: +SKIP
    >>> result.reduction                                                  # doctest: +SKIP
    0.503
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from fxprune.core.channel_cost import branch_macs, channel_macs
from fxprune.core.finalize import finalize
from fxprune.core.ir import state_of
from fxprune.errors import FxPruneError
from fxprune.report.count import count

_SCAN = 64  # candidates tried when the ranking's next step overshoots the target


@dataclass
class BudgetResult:
    """What :func:`prune_to_macs` did.

    Args:
        target: the asked-for MACs reduction (fraction).
        reduction: the measured reduction of the finalized model.
        macs_before, macs_after: measured MACs.
        channels: number of channels switched off; branches: names of branches switched off.
    """

    target: float
    reduction: float
    macs_before: int
    macs_after: int
    channels: int
    branches: list


def current_masks(pm) -> tuple:
    """Copies of every mask and gate, to restore with :func:`restore_masks`."""
    bank = pm.fxprune
    return ({k: v.detach().clone() for k, v in bank.masks.items()},
            {k: v.detach().clone() for k, v in bank.gates.items()})


def restore_masks(pm, saved: tuple) -> None:
    masks, gates = saved
    with torch.no_grad():
        for k, v in masks.items():
            pm.fxprune.masks[k].copy_(v)
        for k, v in gates.items():
            pm.fxprune.gates[k].copy_(v)


def measured_macs(pm, threshold: float = 0.0) -> int:
    """MACs of the model finalize would produce now (finalized without its self-check)."""
    state = state_of(pm)
    return count(finalize(pm, threshold=threshold, check=False), state.example).macs


def prune_to_macs(pm, target: float, channel_scores: Optional[np.ndarray], gate_scores: Optional[dict] = None,
                  keep_zeros: bool = True, tolerance: float = 0.01) -> BudgetResult:
    """Switch off the lowest-scored channels (and branches) until MACs fall by ``target``.

    Args:
        pm: a prepared model; masks already at zero stay at zero.
        target: the MACs reduction to reach, in ``(0, 1)``, relative to the model with
            every mask at one (the unpruned model).
        channel_scores: one score per channel id (lower is removed first); None: channels stay.
        gate_scores: branch name -> score, ranked together with the channels.
        keep_zeros: channels and gates already at zero count as removed from the start.
        tolerance: if removing a whole branch overshoots the target by more than this, the
            target is reached with channels instead.

    Returns:
        A :class:`BudgetResult`; the masks of ``pm`` are left set accordingly (zeroed
        entries are exactly zero; the others keep their values).
    """
    if not 0.0 < target < 1.0:
        raise FxPruneError(f"the MACs reduction target must lie in (0, 1), got {target!r}",
                           hint="for example 0.5 to halve the MACs")
    index = state_of(pm).index
    saved = current_masks(pm)
    ones = _ones(saved)
    before = unpruned_macs(pm)
    order = _ranking(index, channel_scores, gate_scores or {})

    def apply(items: list) -> float:
        restore_masks(pm, saved if keep_zeros else ones)
        switch_off(pm, index, [c for kind, c in items if kind == "mask"])
        with torch.no_grad():
            for kind, name in items:
                if kind == "gate":
                    pm.fxprune.gates[name].zero_()
        return (before - measured_macs(pm)) / before

    def shortest(prefix: list, candidates: list) -> int:
        """The fewest candidates that, after ``prefix``, reach the target (bisection)."""
        lo, hi = 0, len(candidates)
        while lo < hi:
            mid = (lo + hi) // 2
            if apply(prefix + candidates[:mid]) >= target:
                hi = mid
            else:
                lo = mid + 1
        return lo

    if apply(order) < target:
        raise FxPruneError(f"cannot remove {100 * target:.1f}% of the MACs: at most "
                           f"{100 * apply(order):.1f}% without emptying a group",
                           hint="ask for a smaller reduction, or let branch gates be removed too")
    k = shortest([], order)
    chosen = order[:k]
    if k and apply(chosen) - target > tolerance and order[k - 1][0] == "gate":
        # the last step removed a whole branch and overshot: reach the target with channels instead
        prefix, rest = order[: k - 1], [c for c in order[k - 1:] if c[0] == "mask"]
        j = shortest(prefix, rest)
        if apply(prefix + rest[:j]) >= target:
            chosen = prefix + rest[:j]
    if chosen and apply(chosen) - target > tolerance:
        # overshot by more than the tolerance (the last candidate was costly, a channel of a
        # wide residual stream say): finish instead with the next candidates in rank order
        # that are small enough to fit, skipping those that would overshoot
        chosen = _fill(chosen, order, target, tolerance, apply, _estimated_costs(pm, before)) or chosen
    reduction = apply(chosen)
    after = before - round(reduction * before)
    gates = [n for n, g in pm.fxprune.gates.items() if float(g.detach()) == 0.0]
    channels = sum(int((m == 0).sum()) for m in pm.fxprune.masks.values())
    return BudgetResult(target, reduction, before, after, channels, gates)


def _fill(chosen: list, order: list, target: float, tolerance: float, apply, cost: dict) -> Optional[list]:
    """``chosen`` less its last item, then lower-ranked candidates whose estimated cost fits
    the remaining gap, until the measured reduction lies in ``[target, target + tolerance]``;
    None if that does not happen within ``_SCAN`` measurements."""
    prefix = list(chosen[:-1])
    current = apply(prefix)
    tries = 0
    for candidate in order[len(chosen):]:
        if tries >= _SCAN:
            break
        if cost.get(candidate, 0.0) * (1.0 - current) > target + tolerance - current:
            continue  # too costly even if it shrank with the rest of the model
        tries += 1
        value = apply(prefix + [candidate])
        if value <= target + tolerance:
            prefix.append(candidate)
            current = value
            if current >= target:
                return prefix
    return None


def _estimated_costs(pm, before: int) -> dict:
    """candidate -> the share of the unpruned MACs it takes part in (an estimate)."""
    out = {("mask", cid): float(c) / before for cid, c in enumerate(channel_macs(pm).tolist())}
    out.update({("gate", name): float(c) / before for name, c in branch_macs(pm).items()})
    return out


def _ranking(index, channel_scores: np.ndarray, gate_scores: dict) -> list:
    """Candidates ``("mask", channel id)`` and ``("gate", branch)`` sorted by score, lowest first."""
    items = [] if channel_scores is None else [
        (score, 0, ("mask", cid)) for cid, score in enumerate(np.asarray(channel_scores, dtype=np.float64).tolist())]
    items += [(float(score), 1, ("gate", name)) for name, score in gate_scores.items()]
    items.sort(key=lambda t: (t[0], t[1]))
    return [t[2] for t in items]


def _ones(saved: tuple) -> tuple:
    return ({k: torch.ones_like(v) for k, v in saved[0].items()}, {k: torch.ones_like(v) for k, v in saved[1].items()})


def unpruned_macs(pm) -> int:
    """Measured MACs with every mask and gate at one."""
    saved = current_masks(pm)
    restore_masks(pm, _ones(saved))
    try:
        return measured_macs(pm)
    finally:
        restore_masks(pm, saved)


def alive_channels(pm) -> np.ndarray:
    """channel id -> whether its mask is non-zero."""
    index = state_of(pm).index
    alive = np.ones(index.group_of.size, dtype=bool)
    for gi, g in enumerate(index.groups):
        values = pm.fxprune.masks[g.name].detach().cpu().numpy()
        members = index.group_of == gi
        alive[members] = values[index.position[members]] != 0
    return alive


def switch_off(pm, index, channel_ids) -> int:
    """Zero the masks of these channels, skipping any that would leave its group empty. Returns how many."""
    left = {g.name: int((pm.fxprune.masks[g.name] != 0).sum()) for g in index.groups}
    done = 0
    with torch.no_grad():
        for cid in channel_ids:
            name = index.groups[index.group_of[cid]].name
            mask = pm.fxprune.masks[name]
            pos = int(index.position[cid])
            if mask[pos] != 0 and left[name] > 1:
                mask[pos] = 0.0
                left[name] -= 1
                done += 1
    return done
