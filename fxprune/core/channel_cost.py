"""What each channel costs: the multiply-accumulates its weights take part in.

An estimate for ranking and budgeting (exact counts come from :func:`fxprune.count`):
a weight of a convolution or linear layer used at ``P`` output positions costs
``weight.numel() * P`` MACs, and each index of each of its dimensions carries an equal
share of that. A channel's cost is the sum over every weight slice it would remove.

Example:
    >>> macs = channel_macs(pm)                   # doctest: +SKIP
    >>> group_macs(pm)["g0"]                      # doctest: +SKIP
    115605504.0
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx

from fxprune.core.ir import is_tensor_shape, state_of
from fxprune.core.rules import node_handler
from fxprune.core.tensors import owner_and_attribute


def weight_positions(pm) -> dict:
    """(owner path, attribute) -> output positions at which that weight is applied, summed over calls.

    Each node's handler says which weights it applies at how many positions
    (:meth:`~fxprune.core.rules.Handler.weight_positions`).
    """
    state = state_of(pm)
    positions: dict = {}
    for node in pm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        shape = state.shapes.get(node.name)
        if not is_tensor_shape(shape) or not shape:
            continue
        handler, module = node_handler(pm, node)
        if handler is None:
            continue
        for key, count in handler.weight_positions(node, module, shape).items():
            if isinstance(key, torch.fx.Node):
                key = _param_node(key)
                if key.op != "get_attr":
                    continue
                key = owner_and_attribute(key.target)
            positions[key] = positions.get(key, 0) + count
    return positions


def _param_node(node: torch.fx.Node) -> torch.fx.Node:
    """Follow chunk/getitem back to the get_attr a weight slice comes from."""
    while node.op != "get_attr" and node.args and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return node


def channel_macs(pm) -> np.ndarray:
    """Estimated MACs each channel (by channel id) takes part in."""
    state = state_of(pm)
    index = state.index
    macs = np.zeros(index.group_of.size, dtype=np.float64)
    positions = weight_positions(pm)
    for record in index.params:
        pos = sum(positions.get(ref, 0) for ref in record.refs)
        if not pos:
            continue
        total = float(np.prod(record.shape)) * pos
        for d, cids in enumerate(record.layout):
            if cids.shape[1] == 0 or record.shape[d] == 0:
                continue
            share = total / record.shape[d]
            for j in range(cids.shape[1]):
                ok = cids[:, j] >= 0
                np.add.at(macs, cids[ok, j], share)
    return macs


def mean_channel_macs(macs: np.ndarray) -> float:
    """The mean estimated MACs of the channels that cost any (1.0 where none does).

    The unit that the methods rank and weight costs in: a channel of relative cost 1.0
    is an average one, whatever the model's size.
    """
    paying = macs > 0
    return float(macs[paying].mean()) if paying.any() else 1.0


def relative_channel_macs(pm, floor: float = 0.0) -> np.ndarray:
    """Each channel's estimated MACs in units of :func:`mean_channel_macs`, at least ``floor``.

    ``floor`` keeps channels that cost nothing from dividing by zero where the result is a
    divisor or a penalty weight.
    """
    macs = channel_macs(pm)
    return np.maximum(macs / mean_channel_macs(macs), floor)


def group_macs(pm) -> dict:
    """group name -> estimated MACs its channels take part in."""
    state = state_of(pm)
    macs = channel_macs(pm)
    return {g.name: float(macs[state.index.group_of == i].sum()) for i, g in enumerate(state.index.groups)}


def branch_macs(pm) -> dict:
    """branch name -> estimated MACs of the weights inside the branch."""
    state = state_of(pm)
    positions = weight_positions(pm)
    shapes = {}
    for record in state.index.params:
        for ref in record.refs:
            shapes[ref] = record.shape
    by_name = {n.name: n for n in pm.graph.nodes}
    out = {}
    for b in state.branches:
        total = 0.0
        for name in b.nodes:
            node = by_name.get(name)
            if node is not None and node.op == "call_module":
                w = getattr(pm.get_submodule(node.target), "weight", None)
                pos = positions.get((node.target, "weight"), 0)
                if isinstance(w, torch.Tensor) and pos:
                    total += float(w.numel()) * pos / max(1, _calls(pm, node.target))
        out[b.name] = total
    return out


def _calls(pm, target: str) -> int:
    return sum(1 for n in pm.graph.nodes if n.op == "call_module" and n.target == target)
