"""Looking inside a prepared model: its groups, its layers, its channel-dependency graph.

Example:
    >>> pm = fxprune.prepare(torchvision.models.resnet18())       # doctest: +SKIP
    >>> print(fxprune.report.group_table(pm)[:3])                 # doctest: +SKIP
    >>> G = fxprune.dependency_graph(pm)                          # doctest: +SKIP
    >>> G.has_edge(("param", "layer1.0.conv1.weight", 0, 5), ("channel", "g1", 5))   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
from tabulate import tabulate

from fxprune.core.channel_cost import group_macs
from fxprune.core.ir import state_of


def channel_groups(pm) -> list:
    """The :class:`~fxprune.core.ir.ChannelGroup` s of a prepared model, in order."""
    return list(state_of(pm).index.groups)


def branches(pm) -> list:
    """The removable residual branches (:class:`~fxprune.core.ir.Branch`) of a prepared model."""
    return list(state_of(pm).branches)


@dataclass
class LayerRow:
    """One weight's output channels: how many, how many can be pruned, and why the others cannot."""

    layer: str
    channels: int
    prunable: int
    frozen: dict

    @property
    def reaches_output(self) -> bool:
        return any("output" in reason for reason in self.frozen)


def layer_rows(pm) -> list:
    """A :class:`LayerRow` for every weight dimension that produces channels (filters, rows).

    Only weights (two or more dimensions) are listed; a bias follows its weight.
    """
    rows = []
    for record in state_of(pm).index.params:
        if len(record.shape) < 2:
            continue  # biases follow their weight
        for d, role in record.roles.items():
            if role != "out":
                continue
            cids = record.layout[d]
            prunable = int((cids >= 0).any(axis=1).sum()) if cids.shape[1] else 0
            rows.append(LayerRow(record.name, record.shape[d], prunable,
                                 dict(record.frozen.get(d, {}))))
    return rows


def prunable_share(pm, exclude_output: bool = True) -> float:
    """Share of all output channels of weights (conv and linear filters) that can be pruned.

    Args:
        exclude_output: leave out layers whose channels reach the model's output (the classifier).
    """
    rows = [r for r in layer_rows(pm) if not (exclude_output and r.reaches_output)]
    total = sum(r.channels for r in rows)
    return sum(r.prunable for r in rows) / total if total else 0.0


def group_table(pm, tablefmt: str = "simple") -> str:
    """The channel groups as a table: size, producers, consumers and share of MACs."""
    state = state_of(pm)
    macs = group_macs(pm)
    total = sum(macs.values()) or 1.0
    rows = []
    for g in state.index.groups:
        rows.append([g.name, g.size, _names(g.producers), _names(g.consumers), f"{100 * macs[g.name] / total:.1f}%"])
    return tabulate(rows, headers=["group", "channels", "producers", "consumers", "MACs share"], tablefmt=tablefmt)


def frozen_table(pm, tablefmt: str = "simple") -> str:
    """Layers with channels that cannot be pruned, and why."""
    rows = []
    for r in layer_rows(pm):
        if r.prunable < r.channels:
            reasons = "; ".join(f"{n} {why}" for why, n in r.frozen.items())
            rows.append([r.layer, r.channels, r.prunable, reasons])
    barriers = [[b.node, b.op, b.reason] for b in state_of(pm).barriers]
    out = tabulate(rows, headers=["layer", "channels", "prunable", "why frozen"], tablefmt=tablefmt)
    if barriers:
        out += "\n\n" + tabulate(barriers, headers=["barrier node", "op", "reason"], tablefmt=tablefmt)
    return out


def _names(members, limit: int = 3) -> str:
    names = [str(m.name) for m in members]
    extra = f" +{len(names) - limit}" if len(names) > limit else ""
    return ", ".join(names[:limit]) + extra


def dependency_graph(pm) -> nx.Graph:
    """The channel-dependency graph of a prepared model.

    Nodes are tensor channels ``("param", name, dim, index)`` / ``("node", name, dim,
    index)`` and pruning units ``("channel", group, position)``. Every tensor channel is
    joined to the units it depends on; two tensor channels joined to the same unit are
    removed together. Frozen tensor channels have no edges.
    """
    state = state_of(pm)
    index = state.index
    G = nx.Graph()
    for g in index.groups:
        G.add_nodes_from((("channel", g.name, int(p)), {"group": g.name}) for p in range(g.size))
    unit = {cid: ("channel", index.groups[index.group_of[cid]].name, int(index.position[cid]))
            for cid in range(index.group_of.size)}

    def add(kind, name, layout):
        for d, cids in enumerate(layout):
            if not hasattr(cids, "shape") or cids.shape[1] == 0:
                continue
            for i, row in enumerate(cids.tolist()):
                for cid in row:
                    if cid >= 0:
                        G.add_edge((kind, name, d, i), unit[cid])

    for record in index.params:
        add("param", record.name, record.layout)
    for name, lay in index.node_layouts.items():
        if isinstance(lay, tuple) and lay and all(hasattr(d, "shape") for d in lay):
            add("node", name, lay)
    return G


def summary(pm) -> dict:
    """Counts for a prepared model: groups, channels, branches, barriers, prunable share; how it was captured."""
    state = state_of(pm)
    return {
        "capture": state.capture,
        "dynamic": dict(state.dynamic),
        "groups": len(state.index.groups),
        "channels": int(sum(g.size for g in state.index.groups)),
        "branches": len(state.branches),
        "barriers": len(state.barriers),
        "prunable_share": prunable_share(pm),
        "frozen": dict(state.index.frozen),
    }
