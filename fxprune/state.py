"""What prepare hands to finalize: one small dataclass kept on the prepared GraphModule."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import PruneConfig
from .errors import NotPreparedError

ATTR = "fxprune_state"


@dataclass
class PruneState:
    """Everything finalize and the methods need, recorded by prepare.

    Args:
        index: channels, groups and every layout in channel ids (:class:`~fxprune.groups.ChannelIndex`).
        sites: the mask sites (:class:`~fxprune.rules.MaskSite`) that got a mask, by mask module name.
        branches: the removable branches (:class:`~fxprune.branches.Branch`).
        example_inputs: the inputs prepare traced with; finalize checks itself on them.
        config: the :class:`~fxprune.config.PruneConfig` used.
        barriers: ops whose channels were frozen, and why.
        shapes: node name -> output shape(s) before pruning.
        approximate: nodes pruned approximately (LayerNorms, with ``approximate_norms``).
    """

    index: object
    sites: dict
    branches: list
    example_inputs: tuple
    config: PruneConfig
    barriers: list = field(default_factory=list)
    shapes: dict = field(default_factory=dict)
    approximate: list = field(default_factory=list)


def state_of(model) -> PruneState:
    """The PruneState of a prepared model.

    Raises:
        NotPreparedError: ``model`` was not produced by :func:`fxprune.prepare`.
    """
    state = getattr(model, ATTR, None) if isinstance(model, torch.fx.GraphModule) else None
    if not isinstance(state, PruneState):
        raise NotPreparedError(
            f"expected a model returned by fxprune.prepare, got {type(model).__name__}",
            hint="call fxprune.prepare(model) first and pass its result")
    return state
