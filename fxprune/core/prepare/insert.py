"""Masks and gates go into the graph: where channels enter an op that mixes them, and before joins.

A mask is applied where its channels enter an op that mixes them (the input of a
convolution, a linear layer, a contraction): there a zero removes the channel's every
contribution, whatever ops (BatchNorm, biases, residual adds) turned its zeros into
something else on the way. A gate scales a branch just before its join:

    before:  bn1 ── relu ── conv2            a ──────────── add
    after:   bn1 ── relu ── mask(g3) ── conv2   f ── *gate(b0) ── add
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx

from fxprune.core.masks import ROLE, ChannelMask, MaskBank
from fxprune.core.tensors import nodes_by_name


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
        index: the :class:`~fxprune.core.prepare.group.ChannelIndex`.

    Returns:
        Mask module name -> its site, for every site that holds prunable channels.
    """
    bank: MaskBank = gm.fxprune
    by_name = nodes_by_name(gm.graph)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    sizes = np.array([g.size for g in index.groups], dtype=np.int64)
    current: dict = {}
    inserted = {}
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
        inserted[name] = site
    return inserted


def insert_gates(gm: torch.fx.GraphModule, branches: list) -> None:
    """Put ``f * gate`` between each branch's output and its join."""
    by_name = nodes_by_name(gm.graph)
    for branch in branches:
        out, join = by_name[branch.output], by_name[branch.join]
        with gm.graph.inserting_after(out):
            gate = gm.graph.get_attr(f"fxprune.gates.{branch.name}")
        with gm.graph.inserting_after(gate):
            gated = gm.graph.call_function(operator.mul, (out, gate))
        gated.meta[ROLE] = {"role": "gate", "branch": branch.name}
        join.replace_input_with(out, gated)
