"""The mask and gate modules a prepared model holds, and how its nodes say what they are.

One mask vector per channel group and one scalar gate per removable branch live in a
:class:`MaskBank`, registered on the prepared model as ``fxprune``; each mask site is a
:class:`ChannelMask` that scales one dimension of one tensor by its channels' masks
(:mod:`fxprune.core.prepare.insert` puts them into the graph).

Example:
    >>> pm = fxprune.prepare(model)                      # doctest: +SKIP
    >>> pm.fxprune.masks["g0"].data[:4] = 0              # prune four channels of group 0
"""

from __future__ import annotations

from collections import OrderedDict

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
