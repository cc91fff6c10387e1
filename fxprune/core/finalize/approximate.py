"""Which outputs finalize's check may only approximate (``approximate_norms``).

With ``PruneConfig(approximate_norms=True)`` a LayerNorm's normalised channels can be
pruned; removing one changes the mean and variance the norm divides by, so every value
computed from that norm's output is close to the masked model's, not equal. Only norms
that actually lost channels count (nothing changes where the plan kept all of theirs,
or removed the branch holding the norm whole), and only the outputs computed from one
of them are relaxed: the check holds every other output to the usual tolerance.

Example:
    >>> lossy = lossy_norms(pm, state_of(pm), threshold=0.0)     # doctest: +SKIP
    >>> relaxed_outputs(pm.graph, lossy)                          # doctest: +SKIP
    [True, False]
"""

from __future__ import annotations

import torch.fx
from torch.utils import _pytree as pytree

from fxprune.core.finalize.decide import decide
from fxprune.core.tensors import nodes_by_name


def lossy_norms(pm, state, threshold: float, plan=None) -> list:
    """Names of the normalisations pruned approximately that lose at least one normalised channel."""
    if not state.approximate:
        return []
    plan = plan if plan is not None else decide(pm, state, threshold, validate=False)
    lossy = []
    for name, dims in state.approximate.items():
        layout = state.index.node_layouts.get(name)
        if name in plan.removed_nodes or not isinstance(layout, tuple):
            continue
        if any(plan.new_size(cids) < cids.shape[0] for cids in layout[len(layout) - dims:]):
            lossy.append(name)
    return lossy


def relaxed_outputs(graph: torch.fx.Graph, lossy: list) -> list:
    """Per leaf of the graph's output (in pytree order), whether it is computed from a node in ``lossy``."""
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    leaves = pytree.tree_leaves(output.args[0])
    if not lossy:
        return [False] * len(leaves)
    nodes = nodes_by_name(graph)
    tainted = {nodes[name] for name in lossy if name in nodes}
    for node in graph.nodes:  # graph order: every input before its users
        if node not in tainted and any(a in tainted for a in node.all_input_nodes):
            tainted.add(node)
    return [isinstance(leaf, torch.fx.Node) and leaf in tainted for leaf in leaves]
