"""Weight slices tied to channels: what a channel would take with it if removed.

Every parameter dimension that carries channels yields a :class:`Slice`; index ``i`` of
that dimension belongs to the channels listed in row ``i`` of its layout. Methods
measure channels on these slices (the l1 norm of a filter, the energy of an out-in
group) and act on them (a group-lasso proximal step) without knowing the layers.

Example:
    >>> for s in tied_slices(pm, roles=("out",)):                  # doctest: +SKIP
    ...     print(s.name, s.dim, s.tensor.shape)
    conv1.weight 0 torch.Size([64, 3, 7, 7])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fxprune.core.ir import state_of

ROLES = ("out", "in", "channel")


@dataclass
class Slice:
    """One channel-carrying dimension of one parameter of a prepared model.

    Args:
        name: ``owner.attribute`` of the parameter.
        tensor: the live parameter or buffer.
        dim: the dimension.
        role: ``"out"`` (filters producing the channels), ``"in"`` (weights reading
            them) or ``"channel"`` (per-channel scales, shifts and statistics).
        rows: ``[k]`` index tensors; ``rows[j]`` are the indices whose ``j``-th channel is
            ``channels[j]`` (most dimensions have ``k == 1``).
        channels: ``[k]`` channel-id tensors aligned with ``rows``.
    """

    name: str
    tensor: torch.Tensor
    dim: int
    role: str
    rows: list
    channels: list

    def per_index(self, values: torch.Tensor) -> torch.Tensor:
        """Reduce a tensor shaped like the parameter to one value per index of ``dim`` (by sum)."""
        others = [d for d in range(values.dim()) if d != self.dim]
        return values.sum(dim=others) if others else values

    def scatter(self, per_index: torch.Tensor, size: int) -> torch.Tensor:
        """Add per-index values into a per-channel vector of length ``size``."""
        out = per_index.new_zeros(size)
        for rows, channels in zip(self.rows, self.channels):
            out = out.index_add(0, channels.to(out.device), per_index[rows.to(out.device)])
        return out


def tied_slices(pm, roles=ROLES) -> list:
    """Every :class:`Slice` of a prepared model whose role is in ``roles``."""
    index = state_of(pm).index
    out = []
    modules = dict(pm.named_modules(remove_duplicate=False))
    for record in index.params:
        owner, attr = record.refs[0]
        tensor = getattr(modules[owner], attr)
        for d, cids in enumerate(record.layout):
            role = record.roles.get(d)
            if role not in roles or cids.shape[1] == 0:
                continue
            rows, channels = [], []
            for j in range(cids.shape[1]):
                ok = np.flatnonzero(cids[:, j] >= 0)
                if ok.size:
                    rows.append(torch.from_numpy(ok))
                    channels.append(torch.from_numpy(cids[ok, j].copy()))
            if rows:
                out.append(Slice(record.name, tensor, d, role, rows, channels))
    return out

