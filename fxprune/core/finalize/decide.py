"""What goes: channels whose mask and branches whose gate are at or below the threshold.

Example:
    >>> plan = decide(pm, state_of(pm), threshold=0.0)      # doctest: +SKIP
    >>> plan.alive.sum(), sorted(plan.dead_branches)        # doctest: +SKIP
    (1440, ['b3'])
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fxprune.core.ir import Plan
from fxprune.errors import FxPruneError, MaskError


def decide(pm, state, threshold: float, validate: bool = True) -> Plan:
    """Read the masks and gates of a prepared model and decide what finalize removes.

    With ``validate=False`` a plan that empties a group is returned rather than refused
    (see :func:`emptied_groups`).

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
    if validate:
        _check_no_group_emptied(state, plan)
    return plan


def _check_finite(values: torch.Tensor, what: str) -> None:
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise MaskError(f"{what} holds {bad} NaN or infinite value(s); finalize cannot decide what to keep",
                        hint="fix the training that produced them (lower the mask learning rate), or reset the "
                             "mask with pm.fxprune.masks[...].data.nan_to_num_(0.0)")


def emptied_groups(state, plan: Plan) -> list:
    """The channel groups the plan would empty outside removed branches: (group, a live member) pairs.

    A group whose every member lies inside a removed branch may lose all its channels;
    the branch goes with them.
    """
    out = []
    for g in state.index.groups:
        if plan.group_alive[g.name].any():
            continue
        live = next((m for m in g.members if m.kind == "node" and _node_of(m.name) not in plan.removed_nodes), None)
        if live is not None:
            out.append((g, live))
    return out


def _check_no_group_emptied(state, plan: Plan) -> None:
    for g, live in emptied_groups(state, plan):
        producers = ", ".join(str(m) for m in g.producers[:3]) or str(live)
        branch = next((b for b in state.branches if _node_of(live.name) in b.nodes), None)
        also = f", or zero gate {branch.name} to remove its whole branch" if branch else ""
        raise MaskError(f"mask {g.name} would remove all {g.size} channels of its group (made by {producers}); "
                        "a layer with no channels left is not a valid model",
                        hint=f"keep at least one channel of {g.name}{also}")


def _node_of(member_name: str) -> str:
    return member_name.split("[", 1)[0]
