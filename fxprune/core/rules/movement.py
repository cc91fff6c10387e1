"""Ops that only move data, understood by running them on index-coded tensors.

Every floating-point input is replaced by a tensor whose elements hold their own flat
index (offset per input, starting at 1 so that padding's zeros mean "no source"). The
op runs on those codes; each output element then names the input element it copied.
From that correspondence one rule derives how every indexed dimension maps:

    flatten  [N, C, H, W] -> [N, C*H*W]   feature f depends on channel f // (H*W)
    cat      ([N, A], [N, B]) -> [N, A+B] index A+i depends on the second input's i
    view     [N, C] -> [N, g, C/g]         one dimension split in two: a product

An input dimension whose index follows one output dimension maps onto it (several
input dimensions merged into one output dimension form a conjunction). One that
follows several output dimensions was split: a fresh block of atoms (a layer's
outputs) is refined into one factor per output dimension (heads x head-dims); atoms
already tied elsewhere are merged along the smaller factors instead (a channel
shuffle ties channel k of both halves). Where inputs meet in one output slice their
atoms are tied; an input that copies one index everywhere (``x[:, 3]``) freezes it.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torchvision.models import swin_transformer

from fxprune.core.atoms import compact, empty_dim, has_atoms
from fxprune.core.rules.context import RuleContext
from fxprune.core.rules.registry import aten, rule

_MOVEMENT_MODULES = (
    nn.Flatten, nn.Unflatten, nn.ChannelShuffle,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad2d,
)
_MOVEMENT_FUNCTIONS = (
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.swapaxes,
    torch.swapdims, torch.movedim, torch.moveaxis, torch.squeeze, torch.unsqueeze, torch.cat,
    torch.concat, torch.concatenate, torch.stack, torch.split, torch.chunk, torch.unbind,
    torch.narrow, torch.roll, torch.flip, torch.index_select, torch.t, torch.select,
    torch.tensor_split, torch.unflatten, torch.channel_shuffle, torch.gather,
    torch.take_along_dim, torch.repeat_interleave, torch.tile,
    F.pad, F.channel_shuffle, operator.getitem,
    swin_transformer._patch_merging_pad, swin_transformer._get_relative_position_bias,
)
_MOVEMENT_METHODS = (
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "swapaxes", "swapdims",
    "movedim", "moveaxis", "squeeze", "unsqueeze", "split", "chunk", "unbind", "narrow", "roll",
    "flip", "expand", "expand_as", "repeat", "t", "select", "index_select", "view_as",
    "reshape_as", "tensor_split", "unfold", "gather", "repeat_interleave", "tile",
    "__getitem__", "split_with_sizes",
)


@rule(*_MOVEMENT_MODULES, *_MOVEMENT_FUNCTIONS, *_MOVEMENT_METHODS, fallback=True)
def movement(ctx: RuleContext):
    """Derive the output layout of a data-movement op from an index-coded run."""
    if ctx.node.target is operator.getitem and not isinstance(ctx.arg(0), torch.Tensor):
        return select_from_container(ctx)
    inputs = [t for t in ctx.tensor_args() if t[2].is_floating_point()]
    if not any(has_atoms(d) for *_, lay in inputs for d in lay):
        return ctx.empty_out()
    coded_out = run_coded(ctx, inputs)
    if coded_out is None:
        return ctx.barrier("moves data in a way fxprune could not follow")
    sources = []
    base = 1
    for _, _, value, lay in inputs:
        sources.append((base, tuple(value.shape), lay))
        base += value.numel()
    flat_out, spec = pytree.tree_flatten(coded_out)
    real_out, _ = pytree.tree_flatten(ctx.out)
    layouts = []
    for coded, _real in zip(flat_out, real_out):
        if not isinstance(coded, torch.Tensor):
            layouts.append(None)
            continue
        lay = output_layout(ctx, coded, sources)
        if lay is None:
            return ctx.barrier("moves data in a way fxprune could not follow")
        layouts.append(lay)
    return pytree.tree_unflatten(layouts, spec) if not isinstance(ctx.out, torch.Tensor) else layouts[0]


def select_from_container(ctx: RuleContext):
    """``getitem`` on a tuple or list output (split, chunk, a module's tuple) picks its layout."""
    src = ctx.arg_node(0)
    lay = ctx.flow.layout_of(src) if src is not None else None
    index = ctx.arg(1)
    if lay is None or not isinstance(lay, (tuple, list)) or not isinstance(index, (int, slice)):
        return ctx.empty_out()
    try:
        return lay[index]
    except (IndexError, TypeError):
        return ctx.empty_out()


def run_coded(ctx: RuleContext, inputs):
    """Run the node's op with every floating input replaced by its element codes."""
    coded = {}
    base = 1
    for path, _, value, _ in inputs:
        n = value.numel()
        coded[path] = torch.arange(base, base + n, dtype=torch.float64).reshape(value.shape)
        base += n
    if base >= 2**52:
        return None
    flat, spec = pytree.tree_flatten((ctx.args, ctx.kwargs))
    flat = [coded.get(i, v) for i, v in enumerate(flat)]
    args, kwargs = pytree.tree_unflatten(flat, spec)
    try:
        with torch.no_grad():
            out = ctx.flow.call(ctx.node, args, kwargs)
    except Exception:
        return None
    ok = all(t.dtype == torch.float64 for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
    return out if ok else None


def output_layout(ctx: RuleContext, coded: torch.Tensor, sources):
    """The layout of one coded output, given ``(base, shape, layout)`` of each input."""
    values = coded.detach().reshape(-1).numpy()
    src = np.rint(values).astype(np.int64)
    if not np.array_equal(src, values):
        return None
    out_shape = tuple(coded.shape)
    nd = len(out_shape)
    if nd == 0:
        for _, _, lay in sources:
            for dim in lay:
                ctx.freeze(dim, "reduced to a single value")
        return ()
    coords = np.unravel_index(np.arange(src.size), out_shape) if src.size else [np.zeros(0, np.int64)] * nd
    slots = [Slots(m) for m in out_shape]
    for base, shape, lay in sources:
        numel = int(np.prod(shape)) if shape else 1
        sel = (src >= base) & (src < base + numel)
        if not sel.any():
            continue
        local = src[sel] - base
        idx = np.unravel_index(local, shape) if shape else ()
        ocoord = [c[sel] for c in coords]
        per_dim = [[] for _ in range(nd)]
        for a, dim in enumerate(lay):
            if not has_atoms(dim):
                continue
            place_input_dim(ctx, dim, idx[a], ocoord, out_shape, per_dim)
        for b in range(nd):
            present = np.zeros(out_shape[b], dtype=bool)
            present[ocoord[b]] = True
            parts = [p for p in per_dim[b] if p is not None]
            contribution = compact(np.concatenate(parts, axis=1)) if parts else empty_dim(out_shape[b])
            slots[b].add(ctx, present, contribution)
    return tuple(s.layout() for s in slots)


def place_input_dim(ctx, dim, idx, ocoord, out_shape, per_dim):
    """Map one atom-carrying input dimension onto the output dimensions it follows."""
    nd = len(out_shape)
    relevant = [b for b in range(nd) if not _function_of(idx, ocoord, [c for c in range(nd) if c != b], out_shape)]
    if not relevant:
        ctx.freeze(dim[np.unique(idx)], "a single index is copied everywhere")
        return
    if len(relevant) == 1:
        b = relevant[0]
        f = np.full(out_shape[b], -1, dtype=np.int64)
        f[ocoord[b]] = idx
        per_dim[b].append(_gather(dim, f))
        return
    split_input_dim(ctx, dim, idx, ocoord, out_shape, relevant, per_dim)


def split_input_dim(ctx, dim, idx, ocoord, out_shape, relevant, per_dim):
    """An input dimension spread over several output dimensions (a reshape that splits it)."""
    sizes = [out_shape[b] for b in relevant]
    joint = np.ravel_multi_index([ocoord[b] for b in relevant], sizes)
    grid = np.full(int(np.prod(sizes)), -1, dtype=np.int64)
    grid[joint] = idx
    used = grid[grid >= 0]
    bijective = (grid >= 0).all() and len(np.unique(used)) == used.size
    if bijective and ctx.atoms.can_refine(dim[used]):
        factors = [ctx.new_space(m, f"factor{b}") for b, m in zip(relevant, sizes)]
        cells = np.unravel_index(np.arange(grid.size), sizes)
        ctx.atoms.refine(dim[grid], [f[c] for f, c in zip(factors, cells)])
        for b, f in zip(relevant, factors):
            per_dim[b].append(f)
        return
    keep = max(range(len(relevant)), key=lambda i: (sizes[i], i))
    b_keep = relevant[keep]
    cells = np.unravel_index(np.arange(grid.size), sizes)
    rep = np.full((out_shape[b_keep], dim.shape[1]), -1, dtype=np.int64)
    for j in range(out_shape[b_keep]):
        members = np.unique(grid[(cells[keep] == j) & (grid >= 0)])
        if members.size == 0:
            continue
        rep[j] = dim[members[0]]
        for m in members[1:]:
            ctx.atoms.unify_rows(dim[members[0]], dim[m], f"split by a reshape at {ctx.node.name}")
    per_dim[b_keep].append(rep)


def _function_of(values, ocoord, dims, out_shape) -> bool:
    """Whether ``values`` is determined by the output coordinates along ``dims``."""
    if not dims:
        return bool((values == values[0]).all()) if values.size else True
    key = np.ravel_multi_index([ocoord[d] for d in dims], [out_shape[d] for d in dims])
    table = np.full(int(np.prod([out_shape[d] for d in dims])), -1, dtype=np.int64)
    table[key] = values
    return bool((table[key] == values).all())


def _gather(dim: np.ndarray, f: np.ndarray) -> np.ndarray:
    out = np.full((f.size, dim.shape[1]), -1, dtype=np.int64)
    ok = f >= 0
    out[ok] = dim[f[ok]]
    return out


class Slots:
    """Collects, per index of one output dimension, the atoms each input contributes."""

    def __init__(self, size: int):
        self.size = size
        self.rows = None
        self.filled = np.zeros(size, dtype=bool)

    def add(self, ctx, present: np.ndarray, contribution: np.ndarray) -> None:
        if self.rows is None:
            self.rows = np.full((self.size, contribution.shape[1]), -1, dtype=np.int64)
        if contribution.shape[1] > self.rows.shape[1]:
            pad = np.full((self.size, contribution.shape[1] - self.rows.shape[1]), -1, dtype=np.int64)
            self.rows = np.concatenate([self.rows, pad], axis=1)
        k = contribution.shape[1]
        fresh = present & ~self.filled
        self.rows[fresh, :k] = contribution[fresh]
        for j in np.nonzero(present & self.filled)[0]:
            ctx.atoms.unify_rows(self.rows[j], contribution[j], f"joined at {ctx.node.name}")
        self.filled |= present

    def layout(self) -> np.ndarray:
        if self.rows is None:
            return empty_dim(self.size)
        return compact(self.rows)


rule(*aten(
    "view.default", "reshape.default", "_unsafe_view.default", "flatten.using_ints", "unflatten.int",
    "permute.default", "transpose.int", "t.default", "squeeze.default", "squeeze.dim", "squeeze.dims",
    "unsqueeze.default", "expand.default", "repeat.default", "cat.default", "stack.default", "split.Tensor",
    "split_with_sizes.default", "chunk.default", "unbind.int", "narrow.default", "select.int", "slice.Tensor",
    "index_select.default", "index.Tensor", "flip.default", "roll.default", "gather.default", "pixel_shuffle.default",
    "pixel_unshuffle.default", "channel_shuffle.default", "native_channel_shuffle.default", "pad.default",
    "constant_pad_nd.default", "unfold.default", "movedim.int", "tile.default", "repeat_interleave.self_int",
    "diagonal.default", "take_along_dim.default", "meshgrid.indexing", "meshgrid.default",
), fallback=True)(movement)
