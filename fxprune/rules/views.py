"""Fast paths for the commonest data-movement ops, which move whole dimensions or slices.

These give the same layouts as running the op on index-coded tensors
(:mod:`fxprune.rules.movement`, which the tests use as the oracle) without touching
every element: a permute reorders dimension layouts, a cat concatenates them, a slice
slices them. A reshape is split into blocks of dimensions whose sizes multiply to the
same number; a block that is neither one-to-one nor free of atoms is probed on its own,
a small tensor of the block's size, instead of the whole activation.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..channels import compact, empty_dim, has_atoms
from .movement import movement, output_layout
from .registry import RuleContext, rule

# -- reshapes ---------------------------------------------------------------------------


@rule(torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, torch.unflatten, nn.Flatten, nn.Unflatten,
      "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as")
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


@rule(torch.permute, torch.transpose, torch.swapaxes, torch.swapdims, torch.movedim, torch.moveaxis, torch.t,
      "permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t")
def reorder(ctx: RuleContext):
    x = ctx.layout(0, "input")
    v = ctx.arg(0, "input")
    nd = v.dim()
    order = np.arange(nd)
    target = ctx.node.target
    name = target if isinstance(target, str) else target.__name__
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


# -- joins and splits -------------------------------------------------------------------


@rule(torch.cat, torch.concat, torch.concatenate)
def cat(ctx: RuleContext):
    nodes = ctx.node.args[0] if ctx.node.args else ctx.node.kwargs["tensors"]
    values = ctx.arg(0, "tensors")
    dim = ctx.arg(1, "dim", 0)
    pairs = [(v, ctx.flow.layout_of(n) if isinstance(n, torch.fx.Node) else None) for n, v in zip(nodes, values)]
    pairs = [(v, lay) for v, lay in pairs if v.dim() > 0 and v.numel() > 0 or v.dim() == ctx.out.dim()]
    nd = ctx.out.dim()
    dim %= nd
    out = []
    for b in range(nd):
        lays = [lay[b] if lay is not None else empty_dim(v.shape[b]) for v, lay in pairs]
        if b == dim:
            k = max(d.shape[1] for d in lays)
            out.append(compact(np.concatenate([_widen(d, k) for d in lays], axis=0)))
        else:
            out.append(_tie_all(ctx, lays))
    return tuple(out)


@rule(torch.stack)
def stack(ctx: RuleContext):
    nodes = ctx.node.args[0] if ctx.node.args else ctx.node.kwargs["tensors"]
    values = ctx.arg(0, "tensors")
    dim = ctx.arg(1, "dim", 0) % ctx.out.dim()
    lays = [ctx.flow.layout_of(n) if isinstance(n, torch.fx.Node) else None for n in nodes]
    per_dim = [_tie_all(ctx, [lay[a] if lay is not None else empty_dim(v.shape[a]) for v, lay in zip(values, lays)])
               for a in range(values[0].dim())]
    return tuple(per_dim[:dim]) + (empty_dim(len(values)),) + tuple(per_dim[dim:])


@rule(torch.split, torch.chunk, torch.tensor_split, torch.unbind, "split", "chunk", "tensor_split", "unbind",
      "split_with_sizes")
def split(ctx: RuleContext):
    x = ctx.layout(0)
    name = ctx.node.target if isinstance(ctx.node.target, str) else ctx.node.target.__name__
    dim = ctx.arg(1 if name == "unbind" else 2, "dim", 0) % len(x)
    outs = []
    offset = 0
    for piece in ctx.out:
        if name == "unbind":
            ctx.freeze(x[dim][offset:offset + 1], "a single index is taken out")
            outs.append(tuple(x[:dim]) + tuple(x[dim + 1:]))
            offset += 1
            continue
        n = piece.shape[dim]
        outs.append(tuple(x[:dim]) + (x[dim][offset:offset + n],) + tuple(x[dim + 1:]))
        offset += n
    if name in ("tensor_split",) and offset != x[dim].shape[0]:
        return movement(ctx)
    return tuple(outs)


# -- indexing -----------------------------------------------------------------------------


@rule(operator.getitem, "__getitem__")
def getitem(ctx: RuleContext):
    value = ctx.arg(0)
    index = ctx.arg(1)
    if not isinstance(value, torch.Tensor):
        return movement(ctx)
    items = index if isinstance(index, tuple) else (index,)
    if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items):
        return movement(ctx)
    x = ctx.layout(0)
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded = []
    for i in items:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (len(x) - n_real))
        else:
            expanded.append(i)
    a = 0
    out = []
    for i in expanded:
        if i is None:
            out.append(empty_dim(1))
            continue
        if isinstance(i, int):
            ctx.freeze(x[a][i:i + 1] if i != -1 else x[a][-1:], "a single index is taken out")
        else:
            out.append(x[a][i])
        a += 1
    out.extend(x[a:])
    return tuple(out)


@rule(torch.narrow, "narrow")
def narrow(ctx: RuleContext):
    x = ctx.layout(0)
    dim, start, length = ctx.arg(1, "dim") % len(x), ctx.arg(2, "start"), ctx.arg(3, "length")
    if isinstance(start, torch.Tensor):
        start = int(start)
    start %= x[dim].shape[0]
    return tuple(x[:dim]) + (x[dim][start:start + length],) + tuple(x[dim + 1:])


@rule(torch.select, "select")
def select(ctx: RuleContext):
    x = ctx.layout(0)
    dim, index = ctx.arg(1, "dim") % len(x), ctx.arg(2, "index")
    ctx.freeze(x[dim][index:index + 1] if index != -1 else x[dim][-1:], "a single index is taken out")
    return tuple(x[:dim]) + tuple(x[dim + 1:])


@rule(torch.index_select, "index_select")
def index_select(ctx: RuleContext):
    x = ctx.layout(0)
    dim, index = ctx.arg(1, "dim") % len(x), ctx.arg(2, "index")
    return tuple(x[:dim]) + (x[dim][index.cpu().numpy()],) + tuple(x[dim + 1:])


@rule(torch.flip, "flip")
def flip(ctx: RuleContext):
    x = ctx.layout(0)
    dims = ctx.arg(1, "dims")
    dims = {d % len(x) for d in ((dims,) if isinstance(dims, int) else dims)}
    return tuple(d[::-1] if a in dims else d for a, d in enumerate(x))


@rule(torch.roll, "roll")
def roll(ctx: RuleContext):
    x = ctx.layout(0)
    shifts, dims = ctx.arg(1, "shifts"), ctx.arg(2, "dims")
    if dims is None:
        return movement(ctx)
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    out = list(x)
    for s, d in zip(shifts, dims):
        out[d % len(x)] = np.roll(out[d % len(x)], s, axis=0)
    return tuple(out)


@rule("expand", "expand_as")
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
    reps = ctx.args[1:] if ctx.node.target == "repeat" else (ctx.arg(1, "dims"),)
    if len(reps) == 1 and isinstance(reps[0], (tuple, list)):
        reps = tuple(reps[0])
    nd = ctx.out.dim()
    reps = (1,) * (nd - len(reps)) + tuple(reps)
    out = []
    for b, r in enumerate(reps):
        a = b - (nd - v.dim())
        out.append(np.tile(x[a], (r, 1)) if a >= 0 else empty_dim(r))
    return tuple(out)


@rule(F.pad)
def pad(ctx: RuleContext):
    mode = ctx.arg(2, "mode", "constant")
    pads = ctx.arg(1, "pad")
    if mode != "constant" or any(p < 0 for p in pads):
        return movement(ctx)
    x = ctx.layout(0)
    out = list(x)
    for k in range(len(pads) // 2):
        d = len(x) - 1 - k
        left, right = pads[2 * k], pads[2 * k + 1]
        if left or right:
            lay = out[d]
            out[d] = np.concatenate([np.full((left, lay.shape[1]), -1), lay, np.full((right, lay.shape[1]), -1)])
    return tuple(out)


def _widen(dim: np.ndarray, k: int) -> np.ndarray:
    if dim.shape[1] == k:
        return dim
    return np.concatenate([dim, np.full((dim.shape[0], k - dim.shape[1]), -1, dtype=np.int64)], axis=1)


def _tie_all(ctx: RuleContext, lays):
    first = max(lays, key=lambda d: d.shape[1])
    for other in lays:
        ctx.unify(first, other)
    return first
