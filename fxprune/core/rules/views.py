"""Fast paths for the commonest data-movement ops that reshape or reorder whole dimensions.

These give the same layouts as running the op on index-coded tensors
(:mod:`fxprune.core.rules.movement`, which the tests use as the oracle) without touching
every element: a permute reorders dimension layouts, an expand or repeat tiles them. A
reshape is split into blocks of dimensions whose sizes multiply to the same number; a
block that is neither one-to-one nor free of atoms is probed on its own, a small tensor
of the block's size, instead of the whole activation.

After slicing, the sizes a ``view``, ``reshape`` or ``expand`` was called with are
rewritten from the layouts (which say which indices of each dimension survive):

    view(x, B, 2, 58, H, W)     ->  view(x, B, 2, 29, H, W)       58 channels per half -> 29
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from fxprune.core.atoms import empty_dim, has_atoms
from fxprune.core.rules.context import RuleContext
from fxprune.core.rules.movement import movement, output_layout
from fxprune.core.rules.registry import Handler, aten, register, rule

# -- reshapes ---------------------------------------------------------------------------


@register(torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, torch.unflatten, nn.Flatten, nn.Unflatten,
          "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as")
class Reshape(Handler):
    """A reshape keeps every element: it commutes with scaling, so a gate passes through."""

    def flow(self, ctx: RuleContext):
        return reshape(ctx)

    def passes_scale(self, value: float) -> bool:
        return True


@register("view", "reshape", torch.reshape)
class SizedReshape(Reshape):
    """A reshape called with sizes: those that count channels are rewritten after slicing."""

    def resize_node(self, gm, node, sizes) -> None:
        resize_shape_args(gm, node, sizes)


def reshape(ctx: RuleContext):
    x = ctx.layout(0, "input")
    v = ctx.arg(0, "input")
    if x is None or not isinstance(ctx.out, torch.Tensor) or (v.dtype != ctx.out.dtype) or v.numel() == 0:
        return movement(ctx)
    return reshape_layout(ctx, x, tuple(v.shape), tuple(ctx.out.shape))


def reshape_layout(ctx: RuleContext, x, in_shape, out_shape):
    """Layout of ``x.reshape(out_shape)``, one block of matching dimensions at a time."""
    out = [empty_dim(s) for s in out_shape]
    for a, s in enumerate(in_shape):
        if s == 1 and has_atoms(x[a]):
            ctx.freeze(x[a], "a single index is copied everywhere")
    ins = [a for a, s in enumerate(in_shape) if s != 1]
    outs = [b for b, s in enumerate(out_shape) if s != 1]
    i = j = 0
    while i < len(ins) and j < len(outs):
        bi, bj = [ins[i]], [outs[j]]
        pi, pj = in_shape[ins[i]], out_shape[outs[j]]
        while pi != pj:
            if pi < pj:
                i += 1
                bi.append(ins[i])
                pi *= in_shape[ins[i]]
            else:
                j += 1
                bj.append(outs[j])
                pj *= out_shape[outs[j]]
        i, j = i + 1, j + 1
        if not any(has_atoms(x[a]) for a in bi):
            continue
        if len(bi) == 1 and len(bj) == 1:
            out[bj[0]] = x[bi[0]]
            continue
        shape_i = tuple(in_shape[a] for a in bi)
        shape_o = tuple(out_shape[b] for b in bj)
        coded = torch.arange(1, pi + 1, dtype=torch.float64).reshape(shape_i).reshape(shape_o)
        block = output_layout(ctx, coded, [(1, shape_i, tuple(x[a] for a in bi))])
        for b, lay in zip(bj, block):
            out[b] = lay
    return tuple(out)


# -- dimension reorders -----------------------------------------------------------------


@register(torch.permute, torch.transpose, torch.swapaxes, torch.swapdims, torch.movedim, torch.moveaxis, torch.t,
          "permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t")
class Reorder(Handler):
    """A reorder of dimensions commutes with scaling: a gate passes through."""

    def flow(self, ctx: RuleContext):
        return reorder(ctx)

    def passes_scale(self, value: float) -> bool:
        return True


def reorder(ctx: RuleContext):
    x = ctx.layout(0, "input")
    v = ctx.arg(0, "input")
    nd = v.dim()
    order = np.arange(nd)
    name = ctx.op
    rest = [a for a in list(ctx.args[1:]) + list(ctx.kwargs.values())]
    if name == "permute":
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        order = np.array([d % nd for d in dims])
    elif name in ("transpose", "swapaxes", "swapdims", "t"):
        d0, d1 = (rest[0] % nd, rest[1] % nd) if name != "t" else (0, nd - 1)
        order[d0], order[d1] = order[d1], order[d0]
    else:
        order = np.moveaxis(np.arange(nd), rest[0], rest[1])
    return tuple(x[a] for a in order)


# -- tiling -----------------------------------------------------------------------------


@register("expand", "expand_as")
class Expand(Handler):
    def flow(self, ctx: RuleContext):
        return expand(ctx)


@register("expand")
class SizedExpand(Expand):
    def resize_node(self, gm, node, sizes) -> None:
        resize_shape_args(gm, node, sizes)


def expand(ctx: RuleContext):
    x = ctx.layout(0)
    v = ctx.arg(0)
    nd = ctx.out.dim()
    out = []
    for b, size in enumerate(ctx.out.shape):
        a = b - (nd - v.dim())
        if a >= 0 and v.shape[a] == size:
            out.append(x[a])
        else:
            out.append(empty_dim(size))
    return tuple(out)


@rule("repeat", torch.tile, "tile")
def repeat(ctx: RuleContext):
    x = ctx.layout(0)
    v = ctx.arg(0)
    reps = ctx.args[1:] if ctx.node.target == "repeat" else (ctx.arg(1, "dims"),)  # the method takes *sizes
    if len(reps) == 1 and isinstance(reps[0], (tuple, list)):
        reps = tuple(reps[0])
    nd = ctx.out.dim()
    reps = (1,) * (nd - len(reps)) + tuple(reps)
    out = []
    for b, r in enumerate(reps):
        a = b - (nd - v.dim())
        out.append(np.tile(x[a], (r, 1)) if a >= 0 else empty_dim(r))
    return tuple(out)


# -- sizes after slicing ------------------------------------------------------------------


def resize_shape_args(gm, node, sizes) -> None:
    """Baked sizes that changed become the new ones; so do sizes computed from a channel count.

    ``n, c, h, w = x.shape; x.view(n, 2, c // 2, h, w)`` computes ``c // 2`` at run time
    from the pruned ``c``, which need not give the kept layout's size (two groups of one
    channel each, one of them pruned: ``c // 2`` is 0). Such an entry is replaced by the
    size the layouts say; entries read from dimensions without channels (the batch, the
    resolution) stay computed, so the model still takes other batch sizes and resolutions.
    """
    old, new = sizes.old(node.name), sizes.new(node.name)
    if node.target is torch.reshape:
        entries, rebuild = list(node.args[1]), lambda e: (node.args[0], tuple(e))
    elif len(node.args) == 2 and isinstance(node.args[1], (tuple, list)):
        entries, rebuild = list(node.args[1]), lambda e: (node.args[0], tuple(e))
    else:
        entries, rebuild = list(node.args[1:]), lambda e: (node.args[0], *e)
    changed = False
    layout = sizes.layout(node.name)
    for i, (o, n) in enumerate(zip(old, new)):
        if type(entries[i]) is int and entries[i] != -1 and has_atoms(layout[i]):
            sizes.note(node, entries[i], n)  # a channel count written in the call
        if (o != n and not _is_minus_one(entries[i])) or _reads_channel_count(entries[i], sizes):
            changed |= entries[i] != n
            entries[i] = n
    if changed:
        node.args = rebuild(entries)


def _is_minus_one(entry) -> bool:
    return isinstance(entry, int) and entry == -1


_SIZE_ARITHMETIC = (operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
                    operator.neg, operator.pow, int, math.floor, math.ceil)


def _reads_channel_count(entry, sizes) -> bool:
    """Whether ``entry`` is a graph value computed from the size of a dimension that has channels."""
    if not isinstance(entry, torch.fx.Node):
        return False
    read = _size_read(entry)
    if read is not None:
        source, dim = read
        lay = sizes.layout(source.name)
        if not isinstance(lay, tuple) or not all(isinstance(d, np.ndarray) for d in lay):
            return False
        dims = range(len(lay)) if dim is None else [dim % len(lay)]
        return any(has_atoms(lay[a]) for a in dims)
    if entry.op == "call_function" and entry.target in _SIZE_ARITHMETIC:
        return any(_reads_channel_count(a, sizes) for a in entry.all_input_nodes)
    return False


def _size_read(node: torch.fx.Node):
    """``(tensor node, dim)`` for ``x.shape[d]``, ``x.size()[d]``, ``x.size(d)``; dim None for a whole shape."""
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return (node.args[0], dim) if isinstance(node.args[0], torch.fx.Node) else None
    if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
        return (node.args[0], None) if isinstance(node.args[0], torch.fx.Node) else None
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], torch.fx.Node):
        whole = _size_read(node.args[0])
        if whole is not None and whole[1] is None and isinstance(node.args[1], int):
            return (whole[0], node.args[1])
    return None


# -- what torch.export records -------------------------------------------------------------

register(*aten("flatten.using_ints", "unflatten.int", "squeeze.default", "squeeze.dim", "squeeze.dims",
               "unsqueeze.default"))(Reshape)
register(*aten("view.default", "reshape.default", "_unsafe_view.default"))(SizedReshape)
register(*aten("permute.default", "transpose.int", "t.default", "movedim.int", "swapaxes.default",
               "swapdims.default"))(Reorder)
register(*aten("expand.default"))(SizedExpand)
rule(*aten("repeat.default"))(repeat)
