"""Channel atoms: the smallest units that can be pruned, and how ops tie them together.

Every dimension of every tensor (activations and parameters alike) gets a *layout*:
an ``int64`` array of shape ``[size, k]`` whose row ``i`` lists the atoms that index ``i``
depends on (``-1`` pads short rows). Index ``i`` survives pruning iff *all* its atoms
survive, so a row is a conjunction:

    conv1.weight dim 0   [[a0], [a1], [a2], [a3]]        four filters, four atoms
    flatten(conv out)    [[a0], [a0], ..., [a3], [a3]]   each channel spans H*W features
    q.reshape(H, D)      dim H: [[h0], [h1]]  dim D: [[d0], [d1]]   heads x head-dims
    spatial dims         [[], [], ...]                   never pruned

Ops tie atoms together through :class:`AtomTable`, a union-find whose classes are
*channels*. Two conjunctions can be declared equal (``unify``): a residual add makes
``x[c]`` and ``y[c]`` the same channel. A class can be *refined* into a conjunction of
finer atoms (a linear layer's outputs become heads x head-dims when a reshape splits
them), and *frozen* with a reason (it reaches the model output, a LayerNorm mixes it,
an op is not understood). Frozen atoms always survive, so they drop out of
conjunctions.

Example:
    >>> t = AtomTable()
    >>> a, b = t.new_space(3, "conv1.weight:0"), t.new_space(3, "conv2.weight:0")
    >>> t.unify(a, b)                      # a residual add ties them channel by channel
    >>> t.freeze(a[2:], "reaches the output")
    >>> [t.leaves(row) for row in b]       # channel 2 is frozen, so always alive
    [(0,), (1,), ()]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

Layout = tuple  # tuple[np.ndarray, ...]: one [size, k] int64 array per tensor dimension


def empty_dim(size: int) -> np.ndarray:
    """A dimension nothing can prune (batch, spatial, tokens, network inputs)."""
    return np.full((size, 0), -1, dtype=np.int64)


def empty_layout(shape: Sequence[int]) -> Layout:
    """A layout with no atoms in any dimension."""
    return tuple(empty_dim(int(s)) for s in shape)


def has_atoms(dim: np.ndarray) -> bool:
    """Whether any index of this dimension depends on an atom."""
    return dim.shape[1] > 0 and bool((dim >= 0).any())


def row(dim: np.ndarray, i: int) -> tuple:
    """The atoms of index ``i`` of a dimension layout."""
    r = dim[i]
    return tuple(int(a) for a in r[r >= 0])


def product(dims: Sequence[np.ndarray]) -> np.ndarray:
    """Row-wise conjunction of several equally long dimension layouts."""
    dims = [d for d in dims if d.shape[1] > 0]
    if not dims:
        return None
    out = np.concatenate(dims, axis=1)
    return compact(out)


def compact(dim: np.ndarray) -> np.ndarray:
    """Drop columns that are ``-1`` everywhere and move atoms to the left of each row."""
    if dim.shape[1] <= 1:
        return dim
    dim = -np.sort(-dim, axis=1)  # atoms (>= 0) first, -1 last
    keep = (dim >= 0).any(axis=0)
    return np.ascontiguousarray(dim[:, keep])


@dataclass
class Space:
    """A block of atoms created together: one dimension of one parameter, or a factor.

    Args:
        name: where the atoms came from, e.g. ``"layer1.0.conv1.weight:0"`` or ``"heads@node"``.
        size: how many atoms.
        first: the id of the first atom; the atoms are ``first .. first + size - 1``.
    """

    name: str
    size: int
    first: int


class AtomTable:
    """Union-find over channel atoms, with refinement into conjunctions and freezing."""

    def __init__(self):
        self.parent: list[int] = []
        self.space_of: list[int] = []
        self.spaces: list[Space] = []
        self.refined: dict[int, tuple] = {}
        self.frozen: dict[int, str] = {}

    # -- creation -------------------------------------------------------------------
    def new_space(self, size: int, name: str) -> np.ndarray:
        """Create ``size`` fresh atoms; returns their layout ``[size, 1]``.

        A dimension of size one gets no atom: removing its only index is never allowed.
        """
        if size <= 1:
            return empty_dim(size)
        first = len(self.parent)
        self.parent.extend(range(first, first + size))
        self.space_of.extend([len(self.spaces)] * size)
        self.spaces.append(Space(name, size, first))
        return np.arange(first, first + size, dtype=np.int64)[:, None]

    # -- union-find -----------------------------------------------------------------
    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def leaves(self, atoms: Iterable[int]) -> tuple:
        """The live (unfrozen, unrefined) root atoms a conjunction of atoms stands for."""
        out: set[int] = set()
        stack = [int(a) for a in atoms if a >= 0]
        while stack:
            r = self.find(stack.pop())
            factors = self.refined.get(r)
            if factors is not None:
                stack.extend(factors)
            elif r not in self.frozen:
                out.add(r)
        return tuple(sorted(out))

    def _union_roots(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra
        self.parent[rb] = ra

    def _refine(self, root: int, factors: tuple) -> None:
        self.refined[self.find(root)] = tuple(factors)

    def unify_rows(self, p: Iterable[int], q: Iterable[int], reason: str) -> None:
        """Declare two conjunctions equal: one survives iff the other does.

        Where one side is empty (always alive) the other is frozen. Where one side is a
        single atom and the other a product, the atom is refined into that product.
        Otherwise atoms are paired up, which is always correct though it may couple
        more than strictly needed.
        """
        lp, lq = self.leaves(p), self.leaves(q)
        if lp == lq:
            return
        if not lp or not lq:
            fixed = p if not lp else q
            why = next((self.frozen_reason(a) for a in fixed if a >= 0 and self.frozen_reason(a)), None)
            self._freeze_leaves(lp or lq, why or f"{reason}: tied to channels that are never pruned")
            return
        common = set(lp) & set(lq)
        rp = [a for a in lp if a not in common]
        rq = [a for a in lq if a not in common]
        if not rp or not rq:
            anchor = min(common)
            for a in rp or rq:
                self._union_roots(anchor, a)
        elif len(rp) == 1 and len(rq) == 1:
            self._union_roots(rp[0], rq[0])
        elif len(rp) == 1:
            self._refine(rp[0], rq)
        elif len(rq) == 1:
            self._refine(rq[0], rp)
        else:
            n = min(len(rp), len(rq))
            for a, b in zip(rp[:n], rq[:n]):
                self._union_roots(a, b)
            for extra in rp[n:] + rq[n:]:
                self._union_roots(rp[n - 1], extra)

    def unify(self, a: np.ndarray, b: np.ndarray, reason: str = "coupled") -> None:
        """Row-wise :meth:`unify_rows` of two equally long dimension layouts."""
        if a is b or (a.shape == b.shape and np.array_equal(a, b)):
            return
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"cannot unify dimensions of sizes {a.shape[0]} and {b.shape[0]}")
        if a.shape[1] == 1 and b.shape[1] == 1 and (a >= 0).all() and (b >= 0).all():
            find, parent, refined, frozen = self.find, self.parent, self.refined, self.frozen
            for x, y in zip(a[:, 0].tolist(), b[:, 0].tolist()):
                rx = x if parent[x] == x else find(x)  # most atoms met here are roots: no call
                ry = y if parent[y] == y else find(y)
                if rx == ry:
                    continue
                if rx in refined or ry in refined or rx in frozen or ry in frozen:
                    self._unify_single(x, y, reason)
                elif rx < ry:  # _union_roots, inline: most pairs are two plain channels
                    parent[ry] = rx
                else:
                    parent[rx] = ry
            return
        if self._refine_fresh(a, b) or self._refine_fresh(b, a):
            return
        for i in range(a.shape[0]):
            self.unify_rows(a[i], b[i], reason)

    def _refine_fresh(self, atoms: np.ndarray, product: np.ndarray) -> bool:
        """:meth:`unify` of single atoms with a product, where that is one refinement per row.

        A grouped convolution's input channels meet its (group, channel-in-group) product:
        each input channel is a distinct live atom, and each product row distinct live atoms
        of other classes, so :meth:`unify_rows` would refine every atom into its row. This
        does the same without building leaves row by row. Returns False, changing nothing,
        where the rows are not that simple (the caller then goes row by row).
        """
        if atoms.shape[1] != 1 or product.shape[1] < 2 or (atoms < 0).any():
            return False
        find, refined, frozen = self.find, self.refined, self.frozen
        roots = [find(a) for a in atoms[:, 0].tolist()]
        taken = set(roots)
        if len(taken) != len(roots) or any(r in refined or r in frozen for r in roots):
            return False
        factors = []
        for row_atoms in product.tolist():
            row_roots = {find(a) for a in row_atoms if a >= 0}
            if len(row_roots) < 2 or any(r in refined or r in frozen or r in taken for r in row_roots):
                return False
            factors.append(tuple(sorted(row_roots)))
        refined.update(zip(roots, factors))
        return True

    def _unify_single(self, x: int, y: int, reason: str) -> None:
        """:meth:`unify_rows` of two single atoms, without building their leaves where neither is refined."""
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return
        if rx in self.refined or ry in self.refined:
            plain, other = (ry, rx) if rx in self.refined else (rx, ry)
            if plain not in self.refined and plain not in self.frozen:
                factors = self.leaves((other,))  # what unify_rows would do, sooner:
                if len(factors) >= 2 and plain not in factors:
                    self.refined[plain] = factors
                    return
                if len(factors) == 1 and plain != factors[0]:
                    self._union_roots(plain, factors[0])
                    return
            self.unify_rows((x,), (y,), reason)
            return
        why_x, why_y = self.frozen.get(rx), self.frozen.get(ry)
        if why_x is None and why_y is None:
            self._union_roots(rx, ry)
        elif why_y is None:
            self.frozen.setdefault(ry, why_x or f"{reason}: tied to channels that are never pruned")
        elif why_x is None:
            self.frozen.setdefault(rx, why_y or f"{reason}: tied to channels that are never pruned")

    def freeze(self, dim: np.ndarray, reason: str) -> None:
        """Freeze every atom appearing in a dimension layout (or any array of atom ids)."""
        atoms = np.unique(dim[dim >= 0]) if isinstance(dim, np.ndarray) else dim
        self._freeze_leaves(self.leaves(atoms), reason)

    def _freeze_leaves(self, leaves: Iterable[int], reason: str) -> None:
        for r in leaves:
            self.frozen.setdefault(r, reason)

    def frozen_reason(self, atom: int) -> Optional[str]:
        """Why an atom is frozen (checking its factors), or None if it can be pruned."""
        stack = [atom]
        while stack:
            r = self.find(stack.pop())
            if r in self.frozen:
                return self.frozen[r]
            stack.extend(self.refined.get(r, ()))
        return None

    def can_refine(self, dim: np.ndarray) -> bool:
        """Whether each index of ``dim`` is one distinct, untouched atom of a single space.

        Such a dimension (the fresh outputs of one layer) can be split into a product of
        factors (heads x head-dims, groups x channels-per-group) without coupling anything.
        """
        if dim.shape[1] != 1 or (dim < 0).any():
            return False
        atoms = dim[:, 0].tolist()
        roots = [self.find(a) for a in atoms]
        if len(set(roots)) != len(roots):
            return False
        if any(r in self.refined or r in self.frozen for r in roots):
            return False
        return len({self.space_of[a] for a in atoms}) == 1

    def refine(self, dim: np.ndarray, factors: Sequence[np.ndarray]) -> None:
        """Refine each atom of ``dim`` into the conjunction of the matching factor rows.

        Args:
            dim: a layout accepted by :meth:`can_refine`.
            factors: layouts as long as ``dim``; row ``i`` of each names the factor atoms
                index ``i`` of ``dim`` becomes.
        """
        rows = np.concatenate(factors, axis=1).tolist() if factors else [[] for _ in range(dim.shape[0])]
        for a, row in zip(dim[:, 0].tolist(), rows):
            parts = tuple(f for f in row if f >= 0)
            if len(parts) == 1:  # one factor (a depthwise convolution's group): the same channel
                self._unify_single(a, parts[0], "refined into one factor")
            elif parts:
                self._refine(a, parts)
            else:
                self.frozen.setdefault(self.find(a), "its only factors cannot be pruned")

    def resolve(self, dim: np.ndarray) -> list:
        """The live leaves of every row of a dimension layout."""
        return [self.leaves(r) for r in dim.tolist()]
