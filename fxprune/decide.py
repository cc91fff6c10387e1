"""What goes: channels whose mask and branches whose gate are at or below the threshold.

Example:
    >>> plan = decide(pm, state_of(pm), threshold=0.0)      # doctest: +SKIP
    >>> plan.alive.sum(), sorted(plan.dead_branches)        # doctest: +SKIP
    (1440, ['b3'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import FxPruneError, MaskError


@dataclass
class Plan:
    """The decision finalize carries out.

    Args:
        alive: channel id -> kept.
        group_alive: group name -> bool array over its channels.
        dead_branches: names of the branches removed.
        removed_nodes: names of every node inside a removed branch.
    """

    alive: np.ndarray
    group_alive: dict
    dead_branches: set
    removed_nodes: set

    def keep(self, cids: np.ndarray) -> np.ndarray:
        """Indices of a dimension that survive: every channel they depend on is kept."""
        if cids.shape[1] == 0:
            return np.arange(cids.shape[0])
        ok = np.all((cids < 0) | self.alive[np.clip(cids, 0, None)], axis=1)
        return np.flatnonzero(ok)

    def new_size(self, cids: np.ndarray) -> int:
        return int(self.keep(cids).size)


def decide(pm, state, threshold: float) -> Plan:
    """Read the masks and gates of a prepared model and decide what finalize removes.

    Raises:
        MaskError: a mask or gate holds NaN or inf, or a group that is not inside a removed
            branch would lose every channel.
        FxPruneError: the threshold is negative or not a number.
    """
    if not isinstance(threshold, (int, float)) or math.isnan(threshold) or threshold < 0:
        raise FxPruneError(f"threshold must be a number >= 0, got {threshold!r}",
                           hint="use 0.0 to remove exactly the zeroed channels")
    index = state.index
    group_alive = {}
    for g in index.groups:
        values = pm.fxprune.masks[g.name].detach()
        _check_finite(values, f"mask {g.name}")
        group_alive[g.name] = (values.abs() > threshold).cpu().numpy()
    alive = np.zeros(index.group_of.size, dtype=bool)
    for gi, g in enumerate(index.groups):
        members = index.group_of == gi
        alive[members] = group_alive[g.name][index.position[members]]
    dead = set()
    for b in state.branches:
        value = pm.fxprune.gates[b.name].detach()
        _check_finite(value, f"gate {b.name}")
        if float(value.abs()) <= threshold:
            dead.add(b.name)
    removed = set()
    for b in state.branches:
        if b.name in dead:
            removed.update(b.nodes)
    plan = Plan(alive, group_alive, dead, removed)
    _check_no_group_emptied(state, plan)
    return plan


def _check_finite(values: torch.Tensor, what: str) -> None:
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise MaskError(f"{what} holds {bad} NaN or infinite value(s); finalize cannot decide what to keep",
                        hint="fix the training that produced them (lower the mask learning rate), or reset the "
                             "mask with pm.fxprune.masks[...].data.nan_to_num_(0.0)")


def _check_no_group_emptied(state, plan: Plan) -> None:
    for g in state.index.groups:
        if plan.group_alive[g.name].any():
            continue
        live_members = [m for m in g.members if m.kind == "node" and _node_of(m.name) not in plan.removed_nodes]
        if not live_members:
            continue
        producers = ", ".join(str(m) for m in g.producers[:3]) or str(live_members[0])
        branch = next((b for b in state.branches if _node_of(live_members[0].name) in b.nodes), None)
        also = f", or zero gate {branch.name} to remove its whole branch" if branch else ""
        raise MaskError(f"mask {g.name} would remove all {g.size} channels of its group (made by {producers}); "
                        "a layer with no channels left is not a valid model",
                        hint=f"keep at least one channel of {g.name}{also}")


def _node_of(member_name: str) -> str:
    return member_name.split("[", 1)[0]
