"""Mask and gate modules, and where they go in the graph.

One mask vector per channel group and one scalar gate per removable branch live in a
:class:`MaskBank`, registered on the prepared model as ``fxprune``. A mask is applied
where its channels enter an op that mixes them (the input of a convolution, a linear
layer, a contraction): there a zero removes the channel's every contribution, whatever
ops (BatchNorm, biases, residual adds) turned its zeros into something else on the way.
A gate scales a branch just before its join:

    before:  bn1 ── relu ── conv2            a ──────────── add
    after:   bn1 ── relu ── mask(g3) ── conv2   f ── *gate(b0) ── add

Example:
    >>> pm = fxprune.prepare(model)                      # doctest: +SKIP
    >>> pm.fxprune.masks["g0"].data[:4] = 0              # prune four channels of group 0
"""

from __future__ import annotations

import operator
from collections import OrderedDict

import numpy as np
import torch
import torch.fx
import torch.nn as nn

ROLE = "fxprune"


class MaskBank(nn.Module):
    """Holds every channel mask (``masks.g<k>``) and branch gate (``gates.b<k>``); all start at 1."""

    def __init__(self, group_sizes: list, gate_names: list, dtype: torch.dtype, device):
        super().__init__()
        # OrderedDict: a plain dict would be sorted by name (g0, g1, g10, g2, ...)
        self.masks = nn.ParameterDict(OrderedDict(
            (f"g{i}", nn.Parameter(torch.ones(n, dtype=dtype, device=device))) for i, n in enumerate(group_sizes)))
        self.gates = nn.ParameterDict(OrderedDict(
            (name, nn.Parameter(torch.ones((), dtype=dtype, device=device))) for name in gate_names))
        self.sites = nn.ModuleDict()


class ChannelMask(nn.Module):
    """Scales dimension ``dim`` of its input by its channels' mask values.

    Index ``i`` of that dimension is scaled by the product of the mask entries of the
    channels it depends on (usually one; two for a head-dim of a head).

    Args:
        dim: the dimension scaled.
        index: ``[size, k]`` positions into the concatenation of the mask vectors passed
            to ``forward`` followed by a single 1 (padding points at that 1).
    """

    def __init__(self, dim: int, index: torch.Tensor):
        super().__init__()
        self.dim = dim
        self.register_buffer("index", index, persistent=False)

    def scale(self, *masks: torch.Tensor) -> torch.Tensor:
        """The factor each index of the masked dimension is multiplied by."""
        vector = torch.cat([*masks, torch.ones(1, dtype=masks[0].dtype, device=masks[0].device)])
        return vector[self.index].prod(dim=-1) if self.index.shape[1] > 1 else vector[self.index[:, 0]]

    def forward(self, x: torch.Tensor, *masks: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.dim] = -1
        return x * self.scale(*masks).to(x.dtype).view(shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.index.shape[0]}"


def site_index(cids: np.ndarray, group_of: np.ndarray, position: np.ndarray, sizes: np.ndarray):
    """The groups a site reads and its ``ChannelMask`` index over their concatenated masks.

    Args:
        cids: the site's dimension layout in channel ids (``[size, k]``, -1 padded).
        group_of: channel id -> group; position: channel id -> index in the group's mask.
        sizes: group -> its number of channels.

    Returns:
        ``(group indices, index [size, k] as a LongTensor)``.
    """
    ok = cids >= 0
    read = group_of[cids[ok]]
    groups = np.unique(read)
    offsets = np.zeros(sizes.size, dtype=np.int64)
    offsets[groups] = np.cumsum(sizes[groups]) - sizes[groups]  # where each group's mask starts
    flat = np.full(cids.shape, int(sizes[groups].sum()), dtype=np.int64)  # that index: the trailing 1
    flat[ok] = offsets[read] + position[cids[ok]]
    return groups.tolist(), torch.from_numpy(flat)


def insert_masks(gm: torch.fx.GraphModule, sites: list, index) -> list:
    """Insert a ``ChannelMask`` for each site between its source and its consumers.

    Args:
        gm: the traced model, which already holds the ``fxprune`` MaskBank.
        sites: the flow's ``MaskSite``s.
        index: the :class:`~fxprune.groups.ChannelIndex`.

    Returns:
        The names of the inserted mask modules, one per site that holds prunable channels.
    """
    bank: MaskBank = gm.fxprune
    by_name = {n.name: n for n in gm.graph.nodes}
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    sizes = np.array([g.size for g in index.groups], dtype=np.int64)
    current: dict = {}
    inserted = []
    for site in sites:
        cids = index.node_layouts[site.source][site.dim]
        if cids.shape[1] == 0 or not (cids >= 0).any():
            continue
        groups, flat = site_index(cids, index.group_of, index.position, sizes)
        name = f"s{len(bank.sites)}"
        bank.sites[name] = ChannelMask(site.dim, flat.to(bank.masks["g0"].device))
        source = by_name[site.source]
        consumers = [by_name[c] for c in site.consumers]
        # a consumer may already read this source through another mask (two masked dimensions): chain
        by_input: dict = {}
        for c in consumers:
            by_input.setdefault(current.get((c.name, site.source), source), []).append(c)
        for reads, users in by_input.items():
            first = min(users, key=order.__getitem__)
            with gm.graph.inserting_before(first):  # just before the first reader: after any in-place update
                # create_node: get_attr() and call_module() would look each target up, which we just made
                getters = [gm.graph.create_node("get_attr", f"fxprune.masks.g{g}") for g in groups]
                masked = gm.graph.create_node("call_module", f"fxprune.sites.{name}", (reads, *getters))
            masked.meta[ROLE] = {"role": "mask", "site": name, "source": site.source, "dim": site.dim,
                                 "groups": groups}
            order[masked] = order[first] - 0.5
            for user in users:
                user.replace_input_with(reads, masked)
                current[(user.name, site.source)] = masked
        inserted.append(name)
    return inserted


def insert_gates(gm: torch.fx.GraphModule, branches: list) -> None:
    """Put ``f * gate`` between each branch's output and its join."""
    by_name = {n.name: n for n in gm.graph.nodes}
    for branch in branches:
        out, join = by_name[branch.output], by_name[branch.join]
        with gm.graph.inserting_after(out):
            gate = gm.graph.get_attr(f"fxprune.gates.{branch.name}")
        with gm.graph.inserting_after(gate):
            gated = gm.graph.call_function(operator.mul, (out, gate))
        gated.meta[ROLE] = {"role": "gate", "branch": branch.name}
        join.replace_input_with(out, gated)


def role(node: torch.fx.Node):
    """What fxprune inserted this node as: ``"mask"``, ``"gate"`` or None."""
    info = node.meta.get(ROLE)
    return info.get("role") if isinstance(info, dict) else None


def mask_parameters(pm) -> list:
    """The channel masks of a prepared model, one vector per group."""
    return list(pm.fxprune.masks.values())


def gate_parameters(pm) -> list:
    """The branch gates of a prepared model, one scalar per removable branch."""
    return list(pm.fxprune.gates.values())


def weight_parameters(pm) -> list:
    """Every parameter of a prepared model except masks and gates: what the weight optimiser trains."""
    bank = {id(p) for p in pm.fxprune.parameters()}
    return [p for p in pm.parameters() if id(p) not in bank]
