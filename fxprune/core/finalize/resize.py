"""Channel counts baked into the graph get their new sizes.

Channel counts can hide in the graph as constants: ``x.view(B, 12, 64, N)``,
``torch.split(x, [32, 32], 1)``, ``x[:, :16]``, a ``num_heads`` argument. After slicing,
each such node is given its new sizes by its handler's ``resize_node``
(:mod:`fxprune.core.rules`), computed from the node's layouts, which say which indices
of each dimension survive:

    view(x, B, 2, 58, H, W)     ->  view(x, B, 2, 29, H, W)       58 channels per half -> 29
"""

from __future__ import annotations

from typing import Optional

import torch.fx

from fxprune.core.ir import SAME_LAYOUT
from fxprune.core.rules import target_handler


class Sizes:
    """Old and new sizes of node outputs, from the prepared shapes and the plan."""

    def __init__(self, state, plan, gm: Optional[torch.fx.GraphModule] = None):
        self.state, self.plan = state, plan
        # nodes finalize put in place of a mask or gate (x * scale) stand for the prepared node they scale
        self.aliases = {n.name: n.meta[SAME_LAYOUT] for n in gm.graph.nodes if SAME_LAYOUT in n.meta} if gm else {}

    def layout(self, name: str):
        return self.state.index.node_layouts.get(self.aliases.get(name, name))

    def old(self, name: str):
        return self.state.shapes.get(self.aliases.get(name, name))

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


def rewrite_sizes(gm: torch.fx.GraphModule, state, plan) -> None:
    """Give every node with baked channel counts its new sizes."""
    sizes = Sizes(state, plan, gm)
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method") or node.name not in state.shapes:
            continue
        handler = target_handler(node.op, node.target)
        if handler is not None:
            handler.resize_node(gm, node, sizes)
