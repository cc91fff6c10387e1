"""Channel counts baked into the graph get their new sizes.

Channel counts can hide in the graph as constants: ``x.view(B, 12, 64, N)``,
``torch.split(x, [32, 32], 1)``, ``x[:, :16]``, a ``num_heads`` argument. After slicing,
each such node is given its new sizes by its handler's ``resize_node``
(:mod:`fxprune.core.rules`), computed from the node's layouts, which say which indices
of each dimension survive:

    view(x, B, 2, 58, H, W)     ->  view(x, B, 2, 29, H, W)       58 channels per half -> 29
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.fx
from torch.utils import _pytree as pytree

from fxprune.core.ir import SAME_LAYOUT
from fxprune.core.rules import Handler, target_handler
from fxprune.core.rules.context import op_name
from fxprune.errors import source_line


class Sizes:
    """Old and new sizes of node outputs, from the prepared shapes and the plan."""

    def __init__(self, state, plan, gm: Optional[torch.fx.GraphModule] = None):
        self.state, self.plan = state, plan
        # nodes finalize put in place of a mask or gate (x * scale) stand for the prepared node they scale
        self.aliases = {n.name: n.meta[SAME_LAYOUT] for n in gm.graph.nodes if SAME_LAYOUT in n.meta} if gm else {}
        self.noted: dict = {}  # node name -> [(old, new)]: the channel counts a handler read in its arguments

    def note(self, node: torch.fx.Node, old: int, new: int) -> None:
        """Record that ``node`` was called with the channel count ``old``, which is ``new`` now (it may be
        the same): what code computing that count in the user's model would have to follow."""
        self.noted.setdefault(node.name, []).append((old, new))

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


@dataclass
class SizeChange:
    """A call whose baked sizes finalize could rewrite: what the model's own code would have to follow.

    Args:
        node: the node's name.
        before, after: its arguments (``args`` then ``kwargs``) before and after, as text.
        integers: ``(before, after)`` of every integer of its arguments (kept ones too).
        channels: ``(before, after)`` of the channel counts among them, where its handler said which
            they are (kept ones too); else the integers that changed.
        module: the path of the innermost module whose code made the call ("" for the model's own;
            None where the capture did not say, as for calls fxprune wrote itself).
        source: the user's source line, where the capture kept it.
    """

    node: str
    before: str
    after: str
    integers: list
    channels: list
    module: Optional[str]
    source: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def rewrite_sizes(gm: torch.fx.GraphModule, state, plan) -> list:
    """Give every node with baked channel counts its new sizes; returns a :class:`SizeChange` for every
    node whose handler could resize it, the sizes it kept as well as those it changed."""
    sizes = Sizes(state, plan, gm)
    changes = []
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method") or node.name not in state.shapes:
            continue
        handler = target_handler(node.op, node.target)
        if handler is not None and type(handler).resize_node is not Handler.resize_node:
            before, target = (node.args, dict(node.kwargs)), node.target
            handler.resize_node(gm, node, sizes)
            changes.append(_change(node, before, op_name(target) == "split", sizes.noted.get(node.name)))
    return changes


def _change(node: torch.fx.Node, before, split: bool, noted) -> SizeChange:
    after = (node.args, dict(node.kwargs))
    pairs = []  # every integer of the arguments, before and after
    for was, now in zip(list(before[0]) + list(before[1].values()), list(after[0]) + list(after[1].values())):
        old = [v for v in pytree.tree_leaves(was) if type(v) is int]
        new = [v for v in pytree.tree_leaves(now) if type(v) is int]
        if len(old) == len(new):
            pairs += list(zip(old, new))
        elif split and len(old) == 1 and new and len(set(new)) == 1:  # one split size became several equal ones
            pairs.append((old[0], new[0]))
    stack = node.meta.get("nn_module_stack")
    module = (list(stack.values())[-1][0] if stack else "") if stack is not None else None
    channels = noted if noted is not None else [(o, n) for o, n in pairs if o != n]
    return SizeChange(node.name, repr(before), repr(after), pairs, channels, module, source_line(node) or "")
