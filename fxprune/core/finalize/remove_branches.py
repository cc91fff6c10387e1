"""Removed residual branches go: each join ``a + g * f`` becomes ``a`` and the branch is erased.

    x ──conv──bn──relu──conv──bn── f ── *g ─┐
    └──────────────────────────────── a ─── add ── y      ->     x ── y   (y is a)

Ops that wrote in place into the join's fresh result would now write into the trunk,
which other nodes may read: they are made out of place.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F

from fxprune.core.drafts import erase_dead_getattrs
from fxprune.core.masks import role
from fxprune.core.prepare.in_place import AUGMENTED
from fxprune.core.tensors import nodes_by_name


def remove_branches(gm: torch.fx.GraphModule, state, plan) -> None:
    """Replace each removed branch's join ``a + g * f`` by ``a`` and erase the branch."""
    by_name = nodes_by_name(gm.graph)
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
    erase_dead_getattrs(gm)


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


def _gate_node(by_name: dict, branch: str) -> str:
    for name, n in by_name.items():
        info = n.meta.get("fxprune")
        if isinstance(info, dict) and info.get("branch") == branch:
            return name
    return ""
