"""Residual branches that can be removed whole: ``y = a + f(x)`` where ``y = a`` stays valid.

A branch is the operand ``f`` of an add (or the subtrahend of a sub) together with every
node that only feeds it: the region that dies if ``f`` is dropped. It qualifies when the
other operand alone already has the join's shape and dtype, the region holds parameters,
and nothing in it writes in place into a tensor from outside. Where both operands
qualify (a ResNet downsampling block) the one with more parameters is the branch.

    x ──conv──bn──relu──conv──bn── f ─┐
    └───────────────────────── a ─── add ── y        y = a + g * f,  g = 0 drops f
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from fxprune.core.ir import Branch
from fxprune.core.tensors import tensor_at

_aten = torch.ops.aten
_SUBTRACTIONS = {operator.sub, operator.isub, torch.sub, "sub", _aten.sub.Tensor, _aten.sub_.Tensor}
_JOINS = {operator.add, operator.iadd, torch.add, "add", _aten.add.Tensor, _aten.add_.Tensor, *_SUBTRACTIONS}


def find_branches(gm: torch.fx.GraphModule, shapes: dict, min_params: int = 1) -> list:
    """Every removable residual branch of ``gm``, in graph order.

    Args:
        gm: the traced model.
        shapes: node name -> output shape (from shape propagation).
        min_params: a branch must hold at least this many parameter elements.
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    nodes = list(gm.graph.nodes)
    branches = []
    for join in nodes:
        if not _is_join(join):
            continue
        best = None
        for pos in (0, 1):
            if join.target in _SUBTRACTIONS and pos == 0:
                continue
            f, other = join.args[pos], join.args[1 - pos]
            if not isinstance(f, torch.fx.Node) or not isinstance(other, torch.fx.Node):
                continue
            if shapes.get(other.name) != shapes.get(join.name) or f is other:
                continue
            region = _region(f, join, nodes, order)
            if region is None:
                continue
            count = _param_count(gm, region)
            if count >= min_params and (best is None or count > best[1]):
                best = (f, count, region)
        if best is not None:
            f, count, region = best
            branches.append(Branch(f"b{len(branches)}", join.name, f.name,
                                   [n.name for n in sorted(region, key=order.get)], count))
    return branches


def _is_join(node: torch.fx.Node) -> bool:
    if node.op not in ("call_function", "call_method") or node.target not in _JOINS:
        return False
    return len(node.args) == 2 and not node.kwargs


def _region(f: torch.fx.Node, join: torch.fx.Node, nodes: list, order: dict):
    """The nodes that only feed ``f`` (``f`` included), or None if ``f`` is used elsewhere."""
    if set(f.users) != {join} or f.op in ("placeholder", "get_attr"):
        return None
    region = {f}
    for n in reversed(nodes[: order[f]]):
        if n.op in ("placeholder", "output") or not n.users:
            continue
        if all(u in region for u in n.users):
            region.add(n)
    for n in region:
        if n.op == "call_method" and str(n.target).endswith("_") and not n.target.startswith("__"):
            first = n.args[0] if n.args else None
            if isinstance(first, torch.fx.Node) and first not in region:
                return None  # writes in place into a tensor from outside the branch
    if not any(n.op in ("call_module", "get_attr", "call_function", "call_method") for n in region):
        return None
    return region


def _param_count(gm: torch.fx.GraphModule, region) -> int:
    seen = set()
    total = 0
    for n in region:
        tensors = []
        if n.op == "call_module":
            tensors = list(gm.get_submodule(n.target).parameters())
        elif n.op == "get_attr":
            t = tensor_at(gm, n.target)
            tensors = [t] if isinstance(t, torch.nn.Parameter) else []
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel()
    return total
