"""One-shot pruning by importance: zero the masks of the least important channels.

Importance of a channel is measured on every weight slice it would remove:

- ``"l1"``: sum of ``|w|`` over the filters producing it (rows of the weights whose
  output it is); channels without such filters use every slice.
- ``"l2"``: the l2 norm of the same slices.
- ``"bn_scale"``: ``|gamma|`` of the BatchNorm (or other norm) scaling it, as in network
  slimming; channels without one fall back to ``"l1"``.
- ``"random"``: uniform random scores (a baseline).

``scope="local"`` removes ``ratio`` of each group. ``scope="global"`` ranks every
prunable channel together and removes ``ratio`` of all of them, where a channel's rank
is its importance relative to its group's mean, divided by its cost (MACs) relative to
the mean cost, so cheap important channels stay and costly unimportant ones go first.
No group is ever emptied.

Example:
    >>> pm = fxprune.prepare(model)                                    # doctest: +SKIP
    >>> fxprune.prune_by_importance(pm, 0.5, importance="l1")          # doctest: +SKIP
    >>> small = fxprune.finalize(pm)                                   # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import math
from typing import Iterable, Optional

import numpy as np
import torch

from fxprune.core.channel_cost import relative_channel_macs
from fxprune.core.ir import state_of
from fxprune.core.tensors import owner_and_attribute
from fxprune.core.weight_slices import tied_slices
from fxprune.errors import FxPruneError

IMPORTANCES = ("l1", "l2", "bn_scale", "random")
SCOPES = ("local", "global")


def channel_importance(pm, importance: str = "l1", seed: int = 0) -> np.ndarray:
    """Importance of every channel (by channel id) of a prepared model."""
    if importance not in IMPORTANCES:
        raise FxPruneError(f"unknown importance {importance!r}", hint=f"use one of {', '.join(IMPORTANCES)}")
    n = state_of(pm).index.group_of.size
    if importance == "random":
        return np.random.default_rng(seed).random(n)
    if importance == "bn_scale":
        slices = tied_slices(pm, roles=("out", "channel"))
        scales = [s for s in slices if s.role == "channel" and _is_norm_scale(pm, s)]
        fallback = _accumulate(n, [s for s in slices if s.role == "out"], power=1)
        return np.where(_covered(n, scales), _accumulate(n, scales, power=1), fallback * 1e-3)
    power = 1 if importance == "l1" else 2
    filters = tied_slices(pm, roles=("out",))
    scores = _accumulate(n, filters, power=power)
    covered = _covered(n, filters)
    if not covered.all():  # channels no filter produces: every weight they touch
        scores = np.where(covered, scores, _accumulate(n, tied_slices(pm), power=power))
    return np.sqrt(scores) if power == 2 else scores


def relative_to_group(pm, scores: np.ndarray) -> np.ndarray:
    """Scores divided by the mean score of their group, so that groups of different scale
    (layers with larger or smaller weights) can be ranked together."""
    group_of = state_of(pm).index.group_of
    out = np.asarray(scores, dtype=np.float64).copy()
    valid = group_of >= 0
    sums = np.bincount(group_of[valid], weights=out[valid])
    means = sums / np.maximum(np.bincount(group_of[valid]), 1)
    means[means <= 0] = 1.0
    out[valid] /= means[group_of[valid]]
    return out


def _accumulate(n: int, slices: list, power: int) -> np.ndarray:
    """Per channel, the sum over the given slices of ``|w|`` (power 1) or ``w**2`` (power 2)."""
    out = torch.zeros(n, dtype=torch.float64)
    for s in slices:
        t = s.tensor.detach()
        t = t.abs() if power == 1 else t.pow(2)
        out += s.scatter(s.per_index(t).double().cpu(), n)
    return out.numpy()


def _covered(n: int, slices: list) -> np.ndarray:
    covered = np.zeros(n, dtype=bool)
    for s in slices:
        for channels in s.channels:
            covered[channels.numpy()] = True
    return covered


def _is_norm_scale(pm, s) -> bool:
    owner, attr = owner_and_attribute(s.name)
    return attr == "weight" and "Norm" in type(pm.get_submodule(owner)).__name__


def prune_by_importance(pm, ratio: float, importance: str = "l1", scope: str = "local",
                        round_to: Optional[int] = None, ignore: Iterable[str] = (), seed: int = 0) -> dict:
    """Zero the masks of the least important channels of a prepared model.

    Args:
        pm: a model from :func:`fxprune.prepare`.
        ratio: fraction of channels to remove, in ``[0, 1)``: of each group (local) or of
            all prunable channels (global). Where two groups index one dimension together
            (groups of a grouped convolution, heads), local pruning removes whole groups
            and heads, keeping their width, so that the dimension shrinks by ``ratio``
            (see :func:`_local_counts`).
        importance: ``"l1"``, ``"l2"``, ``"bn_scale"`` or ``"random"``.
        scope: ``"local"`` or ``"global"``.
        round_to: keep a multiple of this many channels in every group (where the group
            is that large), which suits hardware that works in blocks.
        ignore: module paths (whose output channels are left alone) or group names.
        seed: for ``"random"``.

    Returns:
        group name -> number of channels zeroed.
    """
    if not isinstance(ratio, (int, float)) or math.isnan(ratio) or not 0.0 <= ratio < 1.0:
        raise FxPruneError(f"ratio must lie in [0, 1), got {ratio!r}",
                           hint="pass the fraction of channels to remove, for example 0.5")
    if scope not in SCOPES:
        raise FxPruneError(f"unknown scope {scope!r}", hint="use 'local' or 'global'")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise FxPruneError(f"round_to must be a positive integer, got {round_to!r}", hint="for example round_to=8")
    state = state_of(pm)
    index = state.index
    scores = channel_importance(pm, importance, seed)
    skip = _ignored_groups(index, _known(pm, index, ignore))
    members = index.group_channels()
    steps = [round_to] * len(members)
    if scope == "local":
        plan, steps = _local_counts(index, ratio, skip, round_to)
    else:
        plan = _global_counts(pm, index, scores, members, skip, ratio)
    removed = {}
    with torch.no_grad():
        for i, n_remove in plan.items():
            channels = members[i]
            n = channels.size
            keep = _rounded(n - min(n_remove, n - 1), n, steps[i])
            n_remove = n - keep
            if n_remove <= 0:
                continue
            order = channels[np.argsort(scores[channels], kind="stable")][:n_remove]
            mask = pm.fxprune.masks[index.groups[i].name]
            mask[torch.as_tensor(index.position[order], device=mask.device)] = 0.0
            removed[index.groups[i].name] = int(n_remove)
    return removed


def _local_counts(index, ratio: float, skip: set, round_to: Optional[int]) -> tuple:
    """How many channels local pruning removes from each group (not skipped), and per group
    the multiple of channels to keep for ``round_to``.

    A group that indexes its dimensions alone loses ``ratio`` (rounded down). Where groups
    index one dimension together as outer and inner factors (the groups and the channels
    per group of a grouped convolution, heads and head-dims), the outer factor loses
    ``ratio`` and the inner ones nothing: whole groups and heads go, each kept one keeps
    its width, the shape fast kernels are written for, and the dimension still
    shrinks by ``ratio``; ``round_to`` then counts the channels of the kept groups (see
    :func:`_step`). A group that is outer in one dimension and inner in another (a channel
    shuffle swaps them), or whose outer factor is ignored, shares instead: each of the
    ``k`` factors of its dimensions loses ``1 - (1 - ratio) ** (1 / k)`` (rounded), so the
    dimension again shrinks by ``ratio``.
    """
    n = len(index.groups)
    roles: list = [set() for _ in range(n)]
    widths: list = [set() for _ in range(n)]
    k = [1] * n
    for order in factored_dims(index):
        shared = order[0] in skip
        for position, g in enumerate(order):
            k[g] = max(k[g], len(order))
            roles[g].add("shared" if shared else "inner" if position else "outer")
        widths[order[0]].add(math.prod(index.groups[g].size for g in order[1:]))
    plan, steps = {}, [round_to] * n
    for g, group in enumerate(index.groups):
        if g in skip:
            continue
        if roles[g] <= {"outer"}:
            plan[g] = int(math.floor(ratio * group.size))
            steps[g] = _step(round_to, widths[g])
        elif roles[g] == {"inner"}:
            plan[g] = 0
        else:
            plan[g] = int(round((1.0 - (1.0 - ratio) ** (1.0 / k[g])) * group.size))
    return plan, steps


def _step(round_to: Optional[int], widths: set) -> Optional[int]:
    """How many groups or heads to keep a multiple of, so that each dimension they index (``width``
    channels per group) holds a multiple of ``round_to`` channels: 1 for groups 8 wide and
    ``round_to=8``, 2 for groups 4 wide."""
    if not round_to or not widths:
        return round_to
    return math.lcm(*(round_to // math.gcd(round_to, w) for w in widths))


def factored_dims(index) -> list:
    """Every distinct way groups index a dimension together: their ids, outermost first.

    Within the rows of a dimension that one set of groups indexes, the outer factor is
    the one whose channel changes least often from row to row (``g * width + j``: the
    group ``g`` changes every ``width`` rows, the channel within it every row).
    """
    arrays = {id(d): d for lay in index.node_layouts.values() for d in _leaves(lay)}
    arrays.update({id(d): d for record in index.params for d in record.layout})
    found, seen = {}, set()
    for cids in arrays.values():
        if cids.shape[1] < 2 or cids.shape[0] < 2:
            continue
        key = (cids.shape, cids.tobytes())  # many nodes carry equal layouts (q, k and v's heads)
        if key in seen:
            continue
        seen.add(key)
        groups = np.where(cids >= 0, index.group_of[np.clip(cids, 0, None)], -1)
        ordered = np.sort(groups, axis=1)
        if (ordered == ordered[0]).all():  # the usual case: every row indexed by the same groups
            sets, which = ordered[:1], np.zeros(len(ordered), dtype=np.int64)
        else:
            sets, which = np.unique(ordered, axis=0, return_inverse=True)
        for j, row_set in enumerate(sets):
            present = [int(g) for g in np.unique(row_set) if g >= 0]
            if len(present) < 2:
                continue
            rows = np.flatnonzero(which.reshape(-1) == j)
            sub, sub_groups = cids[rows], groups[rows]
            changes = []
            for g in present:
                column = (sub_groups == g).argmax(axis=1)
                atoms = sub[np.arange(rows.size), column]
                changes.append(int(np.count_nonzero(atoms[1:] != atoms[:-1])))
            order = tuple(g for _, g in sorted(zip(changes, present)))
            found[order] = None
    return list(found)


def _leaves(lay):
    if isinstance(lay, np.ndarray):
        yield lay
    elif isinstance(lay, (tuple, list)):
        for sub in lay:
            yield from _leaves(sub)


def _rounded(keep: int, n: int, round_to: Optional[int]) -> int:
    if not round_to or n <= round_to:
        return max(keep, 1)
    keep = max(round_to, int(round(keep / round_to)) * round_to)
    return min(keep, n)


def _global_counts(pm, index, scores, members, skip, ratio: float) -> dict:
    cost = relative_channel_macs(pm, floor=1e-12)
    keys, owners = [], []
    for i, channels in enumerate(members):
        if i in skip or channels.size < 2:
            continue
        s = scores[channels]
        rel = s / (s.mean() if s.mean() > 0 else 1.0)
        keys.append(rel / cost[channels])
        owners.append(np.full(channels.size, i))
    if not keys:
        return {}
    keys, owners = np.concatenate(keys), np.concatenate(owners)
    budget = int(math.floor(ratio * keys.size))
    counts = {i: 0 for i in set(owners.tolist())}
    limit = {i: members[i].size - 1 for i in counts}
    for pos in np.argsort(keys, kind="stable"):
        if budget == 0:
            break
        i = int(owners[pos])
        if counts[i] < limit[i]:
            counts[i] += 1
            budget -= 1
    return counts


def _known(pm, index, ignore: Iterable[str]) -> set:
    """``ignore`` as a set, each name checked: a group name, a module path, or a prefix of a
    parameter's path (a lowered module's, such as an nn.MultiheadAttention's).

    Raises:
        FxPruneError: a name is none of these (a typo would otherwise prune the layer it meant).
    """
    ignore = {ignore} if isinstance(ignore, str) else set(ignore)
    names = {g.name for g in index.groups}
    names.update(p for p, _ in pm.named_modules() if p and p != "fxprune" and not p.startswith("fxprune."))
    for g in index.groups:
        for m in g.members:
            if m.kind == "param":
                parts = m.name.split(".")
                names.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    unknown = sorted(ignore - names)
    if unknown:
        close = {u: difflib.get_close_matches(u, names, n=3, cutoff=0.5) for u in unknown}
        said = "; ".join(f"{u!r} (closest: {', '.join(map(repr, c))})" if c else f"{u!r} (nothing close)"
                         for u, c in close.items())
        raise FxPruneError(f"ignore names no layer or group of this model: {said}",
                           hint="pass module paths as in model.named_modules(), or group names from "
                                "fxprune.channel_groups(pm)")
    return ignore


def _ignored_groups(index, ignore: set) -> set:
    if not ignore:
        return set()
    out = set()
    for i, g in enumerate(index.groups):
        if g.name in ignore:
            out.add(i)
            continue
        for m in g.producers:  # a layer is left alone by keeping every channel it produces
            if any(m.name == p or m.name.startswith(p + ".") for p in ignore):
                out.add(i)
                break
    return out
