"""finalize's graph surgery: drop removed branches, fold masks and gates, fix baked sizes.

Channel counts can hide in the graph as constants: ``x.view(B, 12, 64, N)``,
``torch.split(x, [32, 32], 1)``, ``x[:, :16]``, a ``num_heads`` argument. After slicing,
each such node is given its new sizes by a rewriter registered for its target, computed
from the node's layouts (which say which indices of each dimension survive):

    view(x, B, 2, 58, H, W)     ->  view(x, B, 2, 29, H, W)       58 channels per half -> 29
    getitem(x, (:, slice(0, 16)))  ->  getitem(x, (:, slice(0, 9)))   9 of the first 16 survive
"""

from __future__ import annotations

import math
import operator
from typing import Callable

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import swin_transformer

from . import ops
from .channels import has_atoms
from .fold import (can_fold_into, constant_multiply, fold_gate, fold_into_consumer, fold_scale_into_norm, module_calls,
                   norm_after, rescale)
from .masks import role
from .flow import is_tensor_shape
from .trace import AUGMENTED, IN_PLACE

_REWRITERS: dict = {}


def rewriter(*keys):
    """Register how nodes calling these targets get their baked sizes updated."""

    def register(fn):
        for k in keys:
            _REWRITERS[k] = fn
        return fn

    return register


class Sizes:
    """Old and new sizes of node outputs, from the prepared shapes and the plan."""

    def __init__(self, state, plan):
        self.state, self.plan = state, plan

    def layout(self, name: str):
        return self.state.index.node_layouts.get(name)

    def old(self, name: str):
        return self.state.shapes.get(name)

    def new(self, name: str, path=()):
        lay = self.layout(name)
        for i in path:
            lay = lay[i]
        return tuple(self.plan.new_size(d) for d in lay)

    def keep(self, name: str, dim: int, path=()):
        lay = self.layout(name)
        for i in path:
            lay = lay[i]
        return self.plan.keep(lay[dim])


def remove_branches(gm: torch.fx.GraphModule, state, plan) -> None:
    """Replace each removed branch's join ``a + g * f`` by ``a`` and erase the branch."""
    by_name = {n.name: n for n in gm.graph.nodes}
    for branch in state.branches:
        if branch.name not in plan.dead_branches or branch.join not in by_name:
            continue
        join = by_name[branch.join]
        trunk = next(a for a in join.args if isinstance(a, torch.fx.Node) and role(a) != "gate")
        for user in list(join.users):  # they wrote into the join's fresh result; now it aliases the trunk
            _out_of_place(gm, user)
        join.replace_all_uses_with(trunk)
        gm.graph.erase_node(join)
        del by_name[branch.join]
        for name in reversed(branch.nodes + [_gate_node(by_name, branch.name)]):
            node = by_name.get(name)
            if node is not None and not node.users:
                gm.graph.erase_node(node)
                del by_name[name]
    _erase_dead_getattrs(gm)


def _out_of_place(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    """Turn an in-place op (``relu_``, ``ReLU(inplace=True)``, ``F.relu(x, inplace=True)``) out-of-place."""
    if node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("__"):
        node.target = node.target[:-1]
    elif node.op == "call_function" and node.kwargs.get("inplace"):
        node.kwargs = {**node.kwargs, "inplace": False}
    elif node.op == "call_function" and node.target in _IN_PLACE_FUNCTIONS:
        node.target = _IN_PLACE_FUNCTIONS[node.target]
    elif node.op == "call_module" and getattr(gm.get_submodule(node.target), "inplace", False):
        gm.get_submodule(node.target).inplace = False


_IN_PLACE_FUNCTIONS = {**{in_place: op for op, (in_place, _) in AUGMENTED.items()},
                       torch.relu_: torch.relu, F.relu_: F.relu}
# layers whose output is a fresh tensor that their backward does not read
_FRESH_OUTPUT = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def restore_in_place(gm: torch.fx.GraphModule, state) -> None:
    """Make the user's ``a += b`` in place again where nothing can tell the difference.

    Tracing reads it as ``a = a + b`` (see :class:`fxprune.trace.InPlaceProxy`). It goes back to
    ``a += b`` only where ``a`` is the output of a convolution, linear layer or normalisation
    that nothing else reads, and has the result's shape: writing into it then changes no
    other value, and none of those layers needs its output for backward. Edits
    ``gm.graph``; the caller recompiles.
    """
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in AUGMENTED or not node.meta.get(IN_PLACE) \
                or node.kwargs or len(node.args) != 2:
            continue
        left, shape = node.args[0], state.shapes.get(node.name)
        if not (isinstance(left, torch.fx.Node) and left.op == "call_module" and len(left.users) == 1
                and isinstance(gm.get_submodule(left.target), _FRESH_OUTPUT)):
            continue
        if is_tensor_shape(shape) and state.shapes.get(left.name) == shape:
            node.target = AUGMENTED[node.target][0]


def _gate_node(by_name: dict, branch: str) -> str:
    for name, n in by_name.items():
        info = n.meta.get("fxprune")
        if isinstance(info, dict) and info.get("branch") == branch:
            return name
    return ""


def fold_masks_and_gates(gm: torch.fx.GraphModule, state, plan) -> None:
    """Fold every surviving mask and gate value into weights; remove the fxprune nodes."""
    calls = module_calls(gm)
    bank = gm.fxprune
    for node in reversed(list(gm.graph.nodes)):  # downstream first: a chained mask then folds into a layer
        kind = role(node)
        if kind == "mask":
            _fold_mask(gm, node, state, plan, bank, calls)
        elif kind == "gate":
            _fold_gate(gm, node, bank, calls)
    _erase_dead_getattrs(gm)


def _fold_mask(gm, node, state, plan, bank, calls) -> None:
    info = node.meta["fxprune"]
    site = state.sites[info["site"]]
    cids = state.index.node_layouts[site.source][site.dim]
    source = node.args[0]
    with torch.no_grad():
        vector = bank.sites[info["site"]].scale(*[getattr_path(gm, a.target) for a in node.args[1:]])
    keep = plan.keep(cids)
    survivors = vector[torch.as_tensor(keep, device=vector.device)]
    if bool((survivors == 1).all()):
        node.replace_all_uses_with(source)
    elif source.op == "get_attr":
        owner, _, attr = source.target.rpartition(".")
        module = gm.get_submodule(owner) if owner else gm
        shape = [1] * getattr(module, attr).dim()
        shape[site.dim] = -1
        rescale(module, attr, vector.view(shape))
        node.replace_all_uses_with(source)
    elif all(can_fold_into(gm, u, calls) for u in node.users):
        common = float(survivors.abs().max())  # below 1, no surviving mask is 1: those columns stay bit-identical
        for u in node.users:
            norm = norm_after(gm, u, calls) if 0.0 < common < 1.0 else None
            if norm is not None:
                fold_into_consumer(gm, u, vector / common)
                fold_scale_into_norm(gm, u, norm, common)
            else:
                fold_into_consumer(gm, u, vector)
        node.replace_all_uses_with(source)
    else:
        ndim = len(state.shapes[site.source])
        shape = [1] * ndim
        shape[site.dim] = -1
        constant_multiply(gm, node, source, survivors.detach().clone().view(shape), f"folded_scale_{info['site']}")
    gm.graph.erase_node(node)


def _fold_gate(gm, node, bank, calls) -> None:
    branch = node.meta["fxprune"]["branch"]
    value = float(bank.gates[branch].detach())
    source = node.args[0]
    if value != 1.0 and not fold_gate(gm, source, value, calls):
        with gm.graph.inserting_before(node):
            scaled = gm.graph.call_function(operator.mul, (source, value))
        node.replace_all_uses_with(scaled)
    else:
        node.replace_all_uses_with(source)
    gm.graph.erase_node(node)


def getattr_path(gm, target: str):
    owner, _, attr = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, attr)


def _erase_dead_getattrs(gm: torch.fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)


def rewrite_sizes(gm: torch.fx.GraphModule, state, plan) -> None:
    """Give every node with baked channel counts its new sizes."""
    sizes = Sizes(state, plan)
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        try:
            fn = _REWRITERS.get(node.target)
        except TypeError:
            fn = None
        if fn is not None and node.name in state.shapes:
            fn(gm, node, sizes)


# -- rewriters ------------------------------------------------------------------------------


@rewriter("view", "reshape", torch.reshape, "expand")
def _shape_args(gm, node, sizes: Sizes) -> None:
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
    for i, (o, n) in enumerate(zip(old, new)):
        if (o != n and not _is_minus_one(entries[i])) or _reads_channel_count(entries[i], sizes):
            changed |= entries[i] != n
            entries[i] = n
    if changed:
        node.args = rebuild(entries)


def _is_minus_one(entry) -> bool:
    return isinstance(entry, int) and entry == -1


_SIZE_ARITHMETIC = (operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
                    operator.neg, operator.pow, int, math.floor, math.ceil)


def _reads_channel_count(entry, sizes: Sizes) -> bool:
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


@rewriter(torch.split, "split", "split_with_sizes", torch.chunk, "chunk")
def _split_sizes(gm, node, sizes: Sizes) -> None:
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


@rewriter(operator.getitem)
def _getitem(gm, node, sizes: Sizes) -> None:
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


@rewriter(torch.narrow, "narrow")
def _narrow(gm, node, sizes: Sizes) -> None:
    src = node.args[0]
    dim = node.args[1] % len(sizes.old(src.name))
    keep = sizes.keep(src.name, dim)
    old = sizes.old(src.name)[dim]
    if keep.size == old:
        return
    start, length = node.args[2], node.args[3]
    picked = _reindex(slice(start, start + length), keep, old)
    node.args = (src, dim, picked.start or 0, picked.stop - (picked.start or 0))


@rewriter(torch.select, "select")
def _select(gm, node, sizes: Sizes) -> None:
    src = node.args[0]
    dim = node.args[1] % len(sizes.old(src.name))
    keep = sizes.keep(src.name, dim)
    if keep.size != sizes.old(src.name)[dim]:
        node.args = (src, dim, _reindex(node.args[2], keep, sizes.old(src.name)[dim]))


@rewriter(F.scaled_dot_product_attention)
def _attention_scale(gm, node, sizes: Sizes) -> None:
    q = node.args[0]
    old, new = sizes.old(q.name), sizes.new(q.name)
    if old[-1] != new[-1] and node.kwargs.get("scale") is None:
        node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(old[-1])}


@rewriter(swin_transformer.shifted_window_attention)
def _swin_attention(gm, node, sizes: Sizes) -> None:
    w_qkv, w_proj = node.args[1], node.args[2]
    old_proj, new_proj = sizes.old(w_proj.name), sizes.new(w_proj.name)
    if old_proj == new_proj:
        return
    num_heads = node.args[5] if len(node.args) > 5 else node.kwargs["num_heads"]
    head_dim = sizes.old(w_qkv.name)[1] // num_heads
    keep_cols = sizes.keep(w_proj.name, 1)
    heads = sorted({int(c) // head_dim for c in keep_cols})
    v_dim = keep_cols.size // len(heads)
    args = list(node.args)
    if len(args) > 5:
        args[5] = len(heads)
    else:
        node.kwargs = {**node.kwargs, "num_heads": len(heads)}
    node.target = ops.window_attention
    node.args = tuple(args)
    node.kwargs = {**node.kwargs, "qk_head_dim": head_dim, "v_head_dim": v_dim}
