"""hold: with ``PruneConfig(keep_classes=True)``, freeze the channels the user's own classes cannot hold.

``finalize(pm, keep_classes=True)`` returns the user's classes only where their code can hold
the pruned widths (:mod:`fxprune.core.finalize.keep_classes`): ``nn.MultiheadAttention`` needs
its heads to fill its embedding width, ShuffleNet's ``x.chunk(2)`` needs equal halves, Swin
computes its head width from its input's. Which channels those are is in the user's Python
code, which fxprune does not read, so it is found by trial, with the same check finalize runs:

    1. switch off one channel of every group and finalize into the user's classes;
       if that passes, nothing is held (most CNNs: one trial);
    2. otherwise try each group alone (one group of each kind: the same parameters up to the
       numbers in their names, as in every layer of a transformer); the groups that fail are *held*;
    3. prepare again with the held groups' channels frozen, the reason being the error their
       trial gave ("keep_classes: VisionTransformer cannot hold ..."), so every report and
       method sees them as frozen; repeat from 1 on the new groups (at most ``ROUNDS`` times).

Held channels are identified between the two captures by a parameter dimension and the rows
of it they occupy (captures of one model on one example are the same graph). Freezing the
atoms of those rows can freeze a little more than the group (a head width shared by all heads
of a layer): never less, so what is left is still held by the classes.

Example:
    >>> pm = prepare(vit, x, PruneConfig(keep_classes=True))     # doctest: +SKIP
    >>> fxprune.finalize(pm, keep_classes=True)                   # any masks: the user's classes
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from fxprune.core.ir import state_of
from fxprune.errors import EquivalenceError, FxPruneError, MaskError

ROUNDS = 3


@dataclass(frozen=True)
class Held:
    """Rows of one parameter dimension whose channels are frozen in the next capture.

    Args:
        param: the parameter's name (``layer1.0.conv1.weight``).
        dim: its dimension.
        rows: the indices of that dimension the held group occupies.
        reason: why (the trial's error: what failed, and the first size its code could not follow).
    """

    param: str
    dim: int
    rows: tuple
    reason: str


def hold_for_classes(pm: torch.fx.GraphModule, again: Callable[[list], torch.fx.GraphModule]) -> torch.fx.GraphModule:
    """``pm``, or a new capture from ``again(held)``, in which every group can lose a channel and the
    model still come back as its own classes.

    Raises:
        FxPruneError: after ``ROUNDS`` captures a channel of every group still cannot be removed together
            (groups that pass alone and fail together), or the model cannot be returned as its classes
            at all.
    """
    held: list = []
    for _ in range(ROUNDS):
        groups = [g for g in state_of(pm).index.groups if g.size > 1]
        if not groups or _trial(pm, groups) is None:
            return pm
        failed = _failing(pm, groups)
        if not failed:
            break
        held += [h for g in groups if g.name in failed for h in _rows_of(pm, g, failed[g.name])]
        pm = again(held)
    raise FxPruneError(f"keep_classes: {type(state_of(pm).model).__name__}'s classes still cannot hold one channel "
                       f"removed from every group after {ROUNDS} captures",
                       hint="prepare without keep_classes: finalize(pm) returns a GraphModule that is exact")


def _failing(pm, groups: list) -> dict:
    """Group name -> why its trial failed. Groups of the same kind (the same parameters, up to the
    numbers in their names, in the same roles: the heads of every encoder layer) are tried by their
    first and last; where those agree, the rest are taken to go the same way (the next round's first
    trial checks it), and where they differ, each is tried."""
    kinds: dict = {}
    for g in groups:
        kinds.setdefault(_kind(g), []).append(g)
    failed = {}
    for same in kinds.values():
        ends = {g.name: _trial(pm, [g]) for g in {id(g): g for g in (same[0], same[-1])}.values()}
        if len({why is None for why in ends.values()}) > 1:  # the kind's first and last differ: each alone
            ends.update((g.name, _trial(pm, [g])) for g in same[1:-1])
            failed.update((name, why) for name, why in ends.items() if why is not None)
        elif (why := next(iter(ends.values()))) is not None:
            failed.update((g.name, ends.get(g.name, why)) for g in same)
    if not failed and len(kinds) < len(groups):  # each kind passes alone, all together do not: one by one
        failed = {g.name: why for g in groups if (why := _trial(pm, [g])) is not None}
    return failed


def _kind(group) -> tuple:
    return tuple(sorted({(re.sub(r"\d+", "#", m.name), m.dim, m.role) for m in group.members if m.kind == "param"}))


def freeze_held(flow, held: list) -> None:
    """Freeze the atoms of the held rows in a new capture's flow (before its groups are formed)."""
    if not held:
        return
    by_name = {record.name: record for record in flow.params.values()}
    for h in held:
        record = by_name.get(h.param)
        if record is None or h.dim >= len(record.layout):
            raise FxPruneError(f"keep_classes: the second capture has no parameter {h.param} (dimension {h.dim})",
                               hint="the model captures differently each time; prepare without keep_classes")
        flow.atoms.freeze(record.layout[h.dim][list(h.rows)], h.reason)


def _trial(pm, groups: list) -> Optional[str]:
    """None if ``pm`` with the first channel of each group switched off finalizes into the user's
    classes; else why not (the error's first line). ``pm``'s masks are left as they were."""
    from fxprune.core.finalize import finalize  # the stage runs finalize: imported when used

    masks = pm.fxprune.masks
    saved = {g.name: masks[g.name].detach().clone() for g in groups}
    try:
        with torch.no_grad():
            for g in groups:
                masks[g.name][0] = 0
        finalize(pm, check=False, keep_classes=True)
        return None
    except (EquivalenceError, MaskError):
        raise  # finalize itself went wrong: not a question of the user's classes
    except FxPruneError as e:
        lines = [line.strip() for line in str(e).splitlines()[:2]]  # what failed, and the first size behind it
        return "keep_classes: " + "; ".join(lines)
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                masks[name].copy_(value)


def _rows_of(pm, group, reason: str) -> list:
    """Where ``group``'s channels sit: every parameter dimension that holds them, and its rows."""
    index = state_of(pm).index
    g = int(group.name[1:])
    found = []
    for record in index.params:
        for d, cids in enumerate(record.layout):
            if d not in record.roles or not cids.shape[1]:
                continue
            mine = (cids >= 0) & (index.group_of[np.maximum(cids, 0)] == g)
            rows = np.flatnonzero(mine.any(axis=1))
            if rows.size:
                found.append(Held(record.name, d, tuple(rows.tolist()), reason))
    return found
