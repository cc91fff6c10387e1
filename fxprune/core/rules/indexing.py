"""Fast paths for data movement that joins, splits or indexes dimensions.

Like :mod:`fxprune.core.rules.views`, these give the layouts that the index-coded probe
(:mod:`fxprune.core.rules.movement`) would, from the dimension layouts alone: a cat
concatenates them, a split or a slice slices them. After slicing, the sizes and indices
these ops were called with are re-expressed over the surviving channels:

    split(x, [32, 32], 1)           ->  split(x, [20, 17], 1)
    getitem(x, (:, slice(0, 16)))   ->  getitem(x, (:, slice(0, 9)))   9 of the first 16 survive
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F

from fxprune.core.atoms import compact, empty_dim
from fxprune.core.rules.context import RuleContext
from fxprune.core.rules.movement import movement
from fxprune.core.rules.registry import Handler, aten, register, rule
from fxprune.core.tensors import tensor_at

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


@register(torch.split, torch.chunk, torch.tensor_split, torch.unbind, "split", "chunk", "tensor_split", "unbind",
          "split_with_sizes")
class Split(Handler):
    def flow(self, ctx: RuleContext):
        return split(ctx)


@register(torch.split, "split", "split_with_sizes", torch.chunk, "chunk")
class SizedSplit(Split):
    """A split into pieces of given sizes (or a number of chunks): the sizes follow the slicing."""

    def resize_node(self, gm, node, sizes) -> None:
        x = node.args[0]
        dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        old = sizes.old(node.name)
        if not old:
            return
        dim %= len(old[0])
        new_pieces = [sizes.new(node.name, (i,))[dim] for i in range(len(old))]
        if new_pieces == [o[dim] for o in old]:
            return
        kwargs = {k: v for k, v in node.kwargs.items() if k != "dim"}
        node.target, node.op = "split", "call_method"
        node.args = (x, new_pieces, dim)
        node.kwargs = kwargs


def split(ctx: RuleContext):
    x = ctx.layout(0)
    name = ctx.op
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


@register(operator.getitem, "__getitem__")
class GetItem(Handler):
    def flow(self, ctx: RuleContext):
        return getitem(ctx)


@register(operator.getitem)
class IndexedGetItem(GetItem):
    """``x[..., a:b]`` and ``x[:, i]``: indices are re-expressed over the surviving channels."""

    def resize_node(self, gm, node, sizes) -> None:
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or not isinstance(sizes.old(src.name), tuple) or \
                not all(isinstance(s, int) for s in sizes.old(src.name) or ()):
            return
        index = node.args[1]
        items = list(index) if isinstance(index, tuple) else [index]
        in_old = sizes.old(src.name)
        n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
        a = 0
        out = []
        changed = False
        for item in items:
            if item is Ellipsis:
                out.append(item)
                a += len(in_old) - n_real
                continue
            if item is None:
                out.append(item)
                continue
            if isinstance(item, (int, slice)):
                keep = sizes.keep(src.name, a)
                if keep.size != in_old[a]:
                    item = _reindex(item, keep, in_old[a])
                    changed = True
            out.append(item)
            a += 1
        if changed:
            node.args = (src, tuple(out) if isinstance(index, tuple) else out[0])



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


@register(torch.narrow, "narrow")
class Narrow(Handler):
    """``x.narrow(dim, start, length)``: a contiguous run of indices, re-counted over the survivors."""

    def flow(self, ctx: RuleContext):
        x = ctx.layout(0)
        dim, start, length = ctx.arg(1, "dim") % len(x), ctx.arg(2, "start"), ctx.arg(3, "length")
        start = int(start) % x[dim].shape[0]
        return tuple(x[:dim]) + (x[dim][start:start + length],) + tuple(x[dim + 1:])

    def resize_node(self, gm, node, sizes) -> None:
        src, dim, keep, old = _kept_along(node, sizes)
        if keep.size == old:
            return
        start, length = node.args[2], node.args[3]
        picked = _reindex(slice(start, start + length), keep, old)
        node.args = (src, dim, picked.start or 0, picked.stop - (picked.start or 0))


@register(torch.select, "select")
class Select(Handler):
    """``x.select(dim, index)``: one index taken out (frozen: it must stay), its position re-counted."""

    def flow(self, ctx: RuleContext):
        x = ctx.layout(0)
        dim, index = ctx.arg(1, "dim") % len(x), ctx.arg(2, "index")
        ctx.freeze(x[dim][index:index + 1] if index != -1 else x[dim][-1:], "a single index is taken out")
        return tuple(x[:dim]) + tuple(x[dim + 1:])

    def resize_node(self, gm, node, sizes) -> None:
        src, dim, keep, old = _kept_along(node, sizes)
        if keep.size != old:
            node.args = (src, dim, _reindex(node.args[2], keep, old))


@register(torch.index_select, "index_select")
class IndexSelect(Handler):
    """``x.index_select(dim, index)``: the index is re-expressed over the surviving channels."""

    def flow(self, ctx: RuleContext):
        return index_select(ctx)

    def resize_node(self, gm, node, sizes) -> None:
        src = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
        dim %= len(sizes.old(src.name))
        keep_in, keep_out = sizes.keep(src.name, dim), sizes.keep(node.name, dim)
        if keep_in.size == sizes.old(src.name)[dim] and keep_out.size == sizes.old(node.name)[dim]:
            return
        index = node.args[2] if len(node.args) > 2 else node.kwargs["index"]
        old = tensor_at(gm, index.target) if isinstance(index, torch.fx.Node) else index
        rank = np.full(sizes.old(src.name)[dim], -1, dtype=np.int64)
        rank[keep_in] = np.arange(keep_in.size)
        new = torch.as_tensor(rank[old.cpu().numpy()[keep_out]], device=old.device)
        name = f"{node.name}_index"
        gm.register_buffer(name, new)
        with gm.graph.inserting_before(node):
            getter = gm.graph.get_attr(name)
        node.args = (src, dim, getter)
        node.kwargs = {}


def index_select(ctx: RuleContext):
    x = ctx.layout(0)
    dim, index = ctx.arg(1, "dim") % len(x), ctx.arg(2, "index")
    computed = ctx.arg_node(2, "index")
    if computed is not None and computed.op != "get_attr":
        ctx.freeze(x[dim], "index_select with an index computed in the graph")
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


def _kept_along(node: torch.fx.Node, sizes) -> tuple:
    """``(source node, dim, surviving indices, old size)`` of an op indexing dimension ``args[1]`` of ``args[0]``."""
    src = node.args[0]
    dim = node.args[1] % len(sizes.old(src.name))
    return src, dim, sizes.keep(src.name, dim), sizes.old(src.name)[dim]


def _reindex(item, keep: np.ndarray, old_size: int):
    """An int or slice over an old dimension, re-expressed over the surviving indices."""
    rank = np.full(old_size, -1, dtype=np.int64)
    rank[keep] = np.arange(keep.size)
    if isinstance(item, int):
        return int(rank[item])
    picked = rank[np.arange(old_size)[item]]
    picked = picked[picked >= 0]
    if picked.size == 0:
        return slice(0, 0)
    step = int(picked[1] - picked[0]) if picked.size > 1 else 1
    if step > 0 and np.array_equal(picked, np.arange(picked[0], picked[-1] + 1, step)):
        return slice(int(picked[0]), int(picked[-1]) + 1, step if step != 1 else None)
    return torch.as_tensor(picked)


# -- what torch.export records -------------------------------------------------------------

rule(*aten("cat.default"))(cat)
rule(*aten("stack.default"))(stack)
register(*aten("unbind.int"))(Split)
register(*aten("split.Tensor", "split_with_sizes.default", "chunk.default"))(SizedSplit)
register(*aten("narrow.default"))(Narrow)
register(*aten("select.int"))(Select)
register(*aten("index_select.default"))(IndexSelect)
rule(*aten("flip.default"))(flip)
rule(*aten("roll.default"))(roll)
rule(*aten("pad.default"))(pad)


@register(*aten("slice.Tensor"))
class Slice(Handler):
    """``aten.slice(x, dim, start, end, step)``, what ``x[..., a:b:c]`` becomes under torch.export."""

    def flow(self, ctx: RuleContext):
        x = ctx.layout(0)
        dim = ctx.arg(1, "dim", 0) % len(x)
        return tuple(x[:dim]) + (x[dim][_slice_of(ctx.node.args, ctx.arg)],) + tuple(x[dim + 1:])

    def resize_node(self, gm, node, sizes) -> None:
        src = node.args[0]
        dim = (node.args[1] if len(node.args) > 1 else 0) % len(sizes.old(src.name))
        keep, old = sizes.keep(src.name, dim), sizes.old(src.name)[dim]
        if keep.size == old:
            return
        bounds = _slice_of(node.args, lambda i, name=None, default=None: node.args[i] if i < len(node.args)
                           else default)
        if any(isinstance(b, torch.fx.Node) for b in (bounds.start, bounds.stop, bounds.step)):
            return  # bounds computed at run time: propagation froze what could not follow them
        picked = _reindex(bounds, keep, old)
        if isinstance(picked, slice):
            node.args = (src, dim, picked.start or 0, picked.stop, picked.step or 1)
            node.kwargs = {}
            return
        name = f"{node.name}_index"  # the survivors are no longer evenly spaced: pick them
        gm.register_buffer(name, picked.to(next(iter(gm.buffers()), picked).device))
        with gm.graph.inserting_before(node):
            index = gm.graph.get_attr(name)
        node.target, node.args, node.kwargs = torch.ops.aten.index_select.default, (src, dim, index), {}


def _slice_of(args, arg) -> slice:
    """The Python slice an ``aten.slice`` call takes (its end may be a huge number, meaning "to the end")."""
    start, end, step = arg(2, "start", None), arg(3, "end", None), arg(4, "step", 1)
    if isinstance(end, int) and end >= 2**62:
        end = None
    return slice(start, end, step)
