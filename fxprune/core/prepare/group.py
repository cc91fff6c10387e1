"""Channels and coupled-channel groups, read off a finished :class:`~fxprune.core.prepare.propagate.ChannelFlow`.

After propagation every live atom class is a *channel*: a set of indices across tensors
and parameters that is removed as one. Channels that appear in exactly the same
tensor dimensions form a *group* and share one mask vector. A group therefore never
straddles a layer boundary: emptying no group can never empty a tensor dimension.

    conv1.weight:0, bn1.*, relu out, conv2.weight:1    -> group g0 (conv1's 64 filters)
    residual stream of a ResNet stage (every block)     -> one group: those channels go together
    densenet: each layer's 32 new channels              -> a group per layer (the concats differ)

Channels nobody consumes (no mask could ever switch them off) are frozen here.

Example:
    >>> index = resolve(flow)                      # doctest: +SKIP
    >>> [g.size for g in index.groups][:3]         # doctest: +SKIP
    [64, 64, 256]
"""

from __future__ import annotations

import numpy as np
from torch.utils import _pytree as pytree

from fxprune.core.atoms import AtomTable
from fxprune.core.ir import ChannelGroup, ChannelIndex, TensorDim

NONE = -1


def resolve(flow) -> ChannelIndex:
    """Turn the atom table of a finished flow into channels and groups."""
    atoms: AtomTable = flow.atoms
    table = _leaf_table(atoms)  # both passes only add frozen leaves, so one table serves them
    already = set(atoms.frozen)
    _freeze_unconsumed(flow, table)
    _freeze_what_would_empty_a_layer(flow, table)
    leaf_table = _without_leaves(table, [r for r in atoms.frozen if r not in already])
    atom_live = np.r_[leaf_table[:-1, 0] >= 0, False]
    live = np.flatnonzero(_present(leaf_table, len(atoms.parent) + 1))
    cid_of_leaf = np.full(len(atoms.parent) + 1, NONE, dtype=np.int64)
    cid_of_leaf[live] = np.arange(live.size)
    cache: dict[int, np.ndarray] = {}

    def to_cids(dim):
        if not hasattr(dim, "shape"):
            return dim
        hit = cache.get(id(dim))
        if hit is None:
            hit = cache[id(dim)] = _rows_to_cids(dim, leaf_table, cid_of_leaf)
        return hit

    node_layouts = {name: _map_dims(to_cids, lay) for name, lay in flow.layouts.items()}
    params = []
    roots = _roots(atoms)
    frozen_reasons = _FrozenReasons(atoms, roots, atom_live)
    for record in flow.params.values():
        record.frozen = {d: frozen_reasons(dim)
                         for d, dim in enumerate(record.layout) if d in record.roles}
        record.layout = tuple(to_cids(d) for d in record.layout)
        params.append(record)
    groups, group_of, position = _group_by_signature(live.size, node_layouts, params)
    frozen: dict[str, int] = {}
    for reason in atoms.frozen.values():
        frozen[reason] = frozen.get(reason, 0) + 1
    return ChannelIndex(groups, group_of, position, node_layouts, params, frozen)


def _present(ids: np.ndarray, size: int) -> np.ndarray:
    """Which of ``0 .. size - 1`` occur in ``ids`` (-1 entries ignored): ``np.unique`` as a mask, without sorting."""
    mask = np.zeros(size, dtype=bool)
    mask[ids[ids >= 0]] = True
    return mask


def _map_dims(fn, lay):
    """``fn`` applied to every dimension layout of a node's layout (a tuple of them, or a pytree)."""
    if lay is None:
        return None
    if type(lay) is tuple and all(hasattr(d, "shape") for d in lay):  # one tensor's: nearly every node
        return tuple(fn(d) for d in lay)
    return pytree.tree_map(fn, lay)


def _freeze_unconsumed(flow, table: np.ndarray) -> None:
    """Freeze channels that no mask site sees: switching them off would change nothing."""
    atoms = flow.atoms
    consumed = np.zeros(len(atoms.parent) + 1, dtype=bool)
    for site in flow.sites.values():
        dim = flow.layouts[site.source][site.dim]
        leaves = table[dim[dim >= 0]]
        consumed[leaves[leaves >= 0]] = True
    for leaf in np.flatnonzero(_present(table, consumed.size) & ~consumed).tolist():
        atoms.frozen.setdefault(leaf, "no op mixes these channels")


def _freeze_what_would_empty_a_layer(flow, table: np.ndarray) -> None:
    """Freeze a channel that every index of a parameter's dimension depends on.

    An index survives only if all its atoms do. Where two layers split the same channels
    into different products (a conv with 3 groups of 2 outputs feeding one with 2 groups
    of 3 inputs), tying their rows can leave one atom in every row: switching it off
    would remove the whole layer, which no finalized model can hold.
    """
    atoms = flow.atoms
    seen = set()
    for record in flow.params.values():
        for d, dim in enumerate(record.layout):
            if d not in record.roles or dim.shape[0] == 0 or dim.shape[1] == 0 or id(dim) in seen:
                continue
            seen.add(id(dim))  # a layer's tensors share their layouts: a BatchNorm's four, one check
            flat = table[dim].reshape(dim.shape[0], -1)
            if flat.shape[1] == 1:  # the common case: one leaf per row, and the rows differ
                if flat[0, 0] < 0 or not (flat[:, 0] == flat[0, 0]).all():
                    continue
                everywhere = [int(flat[0, 0])]
            else:  # a leaf in every row is one of the first row's
                everywhere = [leaf for leaf in sorted(set(flat[0].tolist()))
                              if leaf >= 0 and (flat == leaf).any(axis=1).all()]
            name = record.name
            for leaf in everywhere:
                atoms.frozen.setdefault(leaf, f"switching it off would remove every index of {name}'s dimension {d}")


class _FrozenReasons:
    """How many indices of a dimension are frozen, by reason; each frozen root's reason is looked up once.

    Many dimensions share the same frozen channels (a transformer's residual stream), so the
    reasons are kept as one code per root and counted with numpy.
    """

    def __init__(self, atoms: AtomTable, roots: np.ndarray, atom_live: np.ndarray):
        self.atoms, self.roots, self.atom_live = atoms, roots, atom_live
        self.code = np.full(len(roots) + 1, NONE, dtype=np.int64)  # root -> reason index; last: no atom
        self.reasons = [_NEVER]
        self.index = {_NEVER: 0}
        self.code[-1] = 0

    def __call__(self, dim: np.ndarray) -> dict:
        """reason -> how many indices of ``dim`` are frozen for it."""
        if dim.shape[1] == 0:
            return {_NEVER: dim.shape[0]} if dim.shape[0] else {}
        live_rows = self.atom_live[dim].any(axis=1)  # -1 picks the trailing False
        if live_rows.all():
            return {}
        first = dim[~live_rows, 0]
        first = np.where(first >= 0, self.roots[first], NONE)  # NONE picks the last code: no atom
        for root in np.unique(first[self.code[first] == NONE]).tolist():
            reason = self.atoms.frozen_reason(root) or _NEVER
            self.code[root] = self.index.setdefault(reason, len(self.reasons))
            if self.code[root] == len(self.reasons):
                self.reasons.append(reason)
        counts = np.bincount(self.code[first], minlength=len(self.reasons))
        return {self.reasons[i]: int(c) for i, c in enumerate(counts.tolist()) if c}


_NEVER = "never prunable (fed by the input, size one, or coupled to something fixed)"


def _roots(atoms: AtomTable) -> np.ndarray:
    """atom -> its union-find root, by pointer jumping."""
    roots = np.asarray(atoms.parent, dtype=np.int64)
    while True:
        up = roots[roots]
        if np.array_equal(up, roots):
            return roots
        roots = up


def _leaf_table(atoms: AtomTable) -> np.ndarray:
    """atom -> its live leaves, as rows of a ``[n_atoms + 1, k]`` array (last row: none)."""
    n = len(atoms.parent)
    roots = _roots(atoms)
    table = np.full((n + 1, 1), NONE, dtype=np.int64)
    table[:n, 0] = roots
    frozen = np.fromiter(atoms.frozen, dtype=np.int64)
    table[:n][np.isin(roots, frozen[roots[frozen] == frozen]), 0] = NONE  # a frozen root has no live leaf
    refined = np.fromiter((r for r in atoms.refined if roots[r] == r), dtype=np.int64)
    if refined.size == 0:
        return table
    # a refined root stands for the leaves of its factors, which may be refined in turn:
    # gather the factors' rows until nothing changes (as deep as the nesting, usually once)
    rows = [atoms.refined[r] for r in refined.tolist()]
    width = max(map(len, rows))
    factors = np.array([f if len(f) == width else f + (n,) * (width - len(f)) for f in rows],  # n: no leaves
                       dtype=np.int64)
    members = np.isin(roots, refined)
    slot = np.searchsorted(np.sort(refined), roots[members])
    rank = np.argsort(refined)
    for _ in range(len(refined) + 1):
        rows = _distinct_rows(table[factors].reshape(refined.size, -1))
        grown = np.full((n + 1, max(table.shape[1], rows.shape[1])), NONE, dtype=np.int64)
        grown[:, : table.shape[1]] = table
        grown[:n][members] = NONE
        grown[:n][members, : rows.shape[1]] = rows[rank[slot]]
        if grown.shape == table.shape and np.array_equal(grown, table):
            break
        table = grown
    return table


def _without_leaves(table: np.ndarray, leaves: list) -> np.ndarray:
    """:func:`_leaf_table` after freezing ``leaves``, which were live leaves of ``table``."""
    if not leaves:
        return table
    return _distinct_rows(np.where(np.isin(table, leaves), NONE, table))


def _distinct_rows(rows: np.ndarray) -> np.ndarray:
    """Each row's distinct non-negative entries, largest first, ``NONE``-padded to the longest row."""
    rows = -np.sort(-rows, axis=1)
    rows[:, 1:][rows[:, 1:] == rows[:, :-1]] = NONE
    rows = -np.sort(-rows, axis=1)
    return np.ascontiguousarray(rows[:, : max(1, int((rows >= 0).sum(axis=1).max(initial=0)))])


def _rows_to_cids(dim: np.ndarray, leaf_table: np.ndarray, cid_of_leaf: np.ndarray) -> np.ndarray:
    if dim.shape[1] == 0:
        return dim
    expanded = leaf_table[dim]  # -1 indexes the last row, which holds no leaves
    flat = expanded.reshape(dim.shape[0], -1)
    cids = np.where(flat >= 0, cid_of_leaf[flat], NONE)
    cids = -np.sort(-cids, axis=1)
    dup = np.zeros_like(cids, dtype=bool)
    dup[:, 1:] = (cids[:, 1:] == cids[:, :-1]) & (cids[:, 1:] >= 0)
    cids[dup] = NONE
    cids = -np.sort(-cids, axis=1)
    keep = (cids >= 0).any(axis=0)
    return np.ascontiguousarray(cids[:, keep])


def _group_by_signature(n_channels: int, node_layouts: dict, params: list):
    """Group channels by the exact set of tensor dimensions they appear in."""
    members: list[TensorDim] = []
    pairs = []
    seen: dict[int, int] = {}
    for name, lay in node_layouts.items():
        for path, d, dim in _dims(lay):
            if dim.shape[1]:  # a dimension without channels (batch, spatial) belongs to no group
                _add_member(members, pairs, seen, dim, TensorDim("node", f"{name}{path}", d))
    for record in params:
        name = record.name
        for d, dim in enumerate(record.layout):
            if dim.shape[1]:
                _add_member(members, pairs, seen, dim, TensorDim("param", name, d, record.roles.get(d)))
    if not pairs:
        return [], np.zeros(0, np.int64), np.zeros(0, np.int64)
    cid = np.concatenate([p[0] for p in pairs])
    mid = np.concatenate([p[1] for p in pairs])
    order = np.lexsort((mid, cid))
    cid, mid = cid[order], mid[order]
    once = np.r_[True, (cid[1:] != cid[:-1]) | (mid[1:] != mid[:-1])]  # a channel twice in one dimension
    cid, mid = cid[once], mid[once]
    starts = np.flatnonzero(np.r_[True, cid[1:] != cid[:-1]])
    channels = cid[starts]
    label, first = _equal_segments(mid, starts)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)  # groups in order of their first channel
    gid = rank[label]
    group_of = np.full(n_channels, NONE, dtype=np.int64)
    position = np.full(n_channels, NONE, dtype=np.int64)
    group_of[channels] = gid
    by_group = np.argsort(gid, kind="stable")  # channels ascending within each group
    sizes = np.bincount(gid, minlength=first.size)
    position[channels[by_group]] = np.arange(gid.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    ends = np.r_[starts[1:], cid.size]
    groups = []
    for g, f in enumerate(np.sort(first).tolist()):
        signature = mid[starts[f]:ends[f]].tolist()
        groups.append(ChannelGroup(f"g{g}", int(sizes[g]), [t for m in signature for t in members[m]]))
    return groups, group_of, position


def _equal_segments(values: np.ndarray, starts: np.ndarray):
    """Label the segments ``values[starts[i]:starts[i + 1]]`` so that equal segments share a label.

    Returns ``(label, first)``: per segment its label, per label its first segment. Segments are
    hashed (a sum of random 64-bit words, one per value) and every segment is then compared with
    its label's first, so the labels are exact; were two different segments ever to hash alike,
    they are labelled by their contents instead.
    """
    lengths = np.diff(np.r_[starts, values.size])
    keys = np.add.reduceat(_hash_words(int(values.max()) + 1)[values], starts)  # wraps around: a hash, not a sum
    _, first, label = np.unique(keys, return_index=True, return_inverse=True)
    rep = first[label]
    if not np.array_equal(lengths, lengths[rep]):
        rep = None
    owner = np.repeat(np.arange(starts.size), lengths)
    offset = np.arange(values.size) - starts[owner]
    if rep is not None and np.array_equal(values, values[starts[rep[owner]] + offset]):
        return label, first
    by_content: dict = {}
    label = np.array([by_content.setdefault(tuple(values[s:s + n].tolist()), len(by_content))
                      for s, n in zip(starts.tolist(), lengths.tolist())], dtype=np.int64)
    _, first = np.unique(label, return_index=True)
    return label, first


def _hash_words(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(-2 ** 63, 2 ** 63 - 1, size=n, dtype=np.int64)


def _add_member(members, pairs, seen, dim, member: TensorDim) -> None:
    """Record that ``member`` holds the channels of ``dim``; arrays shared by several are paired once."""
    key = id(dim)
    if key in seen:
        members[seen[key]].append(member)
        return
    mid = seen[key] = len(members)
    members.append([member])
    present = dim[dim >= 0]  # repeats are dropped once all pairs are sorted
    pairs.append((present, np.full(present.size, mid, dtype=np.int64)))


def _dims(lay, path=""):
    """``(path, dimension, layout)`` for every dimension of a (possibly nested) layout."""
    if lay is None:
        return
    if isinstance(lay, tuple) and lay and all(hasattr(d, "shape") for d in lay):
        for i, d in enumerate(lay):
            yield path, i, d
        return
    if isinstance(lay, (tuple, list)):
        for i, sub in enumerate(lay):
            yield from _dims(sub, f"{path}[{i}]")
