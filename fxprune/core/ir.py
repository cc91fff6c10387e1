"""The types that flow between fxprune's stages, and the state a prepared model carries.

    prepare:  propagate ─► ParamRecord, MaskSite, Barrier ─► group ─► ChannelIndex (ChannelGroup, TensorDim)
              branches ─► Branch                     all of it ─► PruneState (on the prepared model)
    finalize: decide ─► Plan ─► remove_branches, fold, slice, resize, in_place, verify

A *layout* (:data:`Layout`) is one ``[size, k]`` int64 array per tensor dimension whose row
``i`` lists the atoms (during propagation) or channel ids (after grouping) that index ``i``
depends on; see :mod:`fxprune.core.atoms`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from fxprune.config import PruneConfig
from fxprune.core.atoms import Layout
from fxprune.errors import NotPreparedError

# -- what propagation records ---------------------------------------------------------------


@dataclass
class ParamRecord:
    """A parameter or buffer whose dimensions carry atoms.

    Args:
        refs: every ``(owner module path, attribute name)`` that holds this tensor.
        layout: one dimension layout per tensor dimension.
        roles: per dimension, ``"out"`` (it produces channels: filters), ``"in"`` (it
            consumes them) or ``"channel"`` (per-channel scale, shift or statistic).
        shape: the tensor's shape when prepared.
        frozen: per dimension with a role, reason -> number of indices frozen for it.
    """

    refs: list
    layout: Layout
    roles: dict = field(default_factory=dict)
    shape: tuple = ()
    frozen: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The tensor's dotted name by its first holder (``layer1.0.conv1.weight``)."""
        return ".".join(p for p in self.refs[0] if p)


@dataclass
class MaskSite:
    """Where a channel mask goes: dimension ``dim`` of the output of node ``source``,
    read by the ops named in ``consumers``, which mix those channels."""

    source: str
    dim: int
    consumers: list = field(default_factory=list)


@dataclass
class Barrier:
    """An op whose channels fxprune froze, and why."""

    node: str
    op: str
    reason: str


# -- channels and groups --------------------------------------------------------------------


@dataclass
class TensorDim:
    """One dimension of one tensor: a node's output (``kind="node"``) or a parameter."""

    kind: str
    name: str
    dim: int
    role: Optional[str] = None

    def __str__(self) -> str:
        role = f" ({self.role})" if self.role else ""
        return f"{self.name}:{self.dim}{role}"


@dataclass
class ChannelGroup:
    """Channels that appear in exactly the same tensor dimensions and share one mask.

    Args:
        name: the mask's name, ``g<k>``.
        size: number of channels.
        members: the tensor dimensions holding these channels.
    """

    name: str
    size: int
    members: list = field(default_factory=list)

    @property
    def producers(self) -> list:
        """Parameter dimensions that create these channels (filters, rows of a weight)."""
        return [m for m in self.members if m.kind == "param" and m.role == "out"]

    @property
    def consumers(self) -> list:
        """Parameter dimensions that read these channels (input columns of a weight)."""
        return [m for m in self.members if m.kind == "param" and m.role == "in"]


@dataclass
class ChannelIndex:
    """Every channel, its group, and every layout rewritten in channel ids.

    Args:
        groups: the channel groups.
        group_of: channel id -> group index.
        position: channel id -> index inside its group's mask.
        node_layouts: node name -> layouts (pytree) whose rows list channel ids.
        params: parameter records whose layouts list channel ids.
        frozen: reason -> number of atoms frozen for it.
    """

    groups: list
    group_of: np.ndarray
    position: np.ndarray
    node_layouts: dict
    params: list
    frozen: dict

    def group_channels(self) -> list:
        """Per group, its channel ids in ascending order (position order)."""
        order = np.argsort(self.group_of, kind="stable")
        bounds = np.searchsorted(self.group_of[order], np.arange(len(self.groups) + 1))
        return [order[bounds[g]:bounds[g + 1]] for g in range(len(self.groups))]


# -- residual branches ----------------------------------------------------------------------


@dataclass
class Branch:
    """A removable residual branch.

    Args:
        name: the gate's name, ``b<k>``.
        join: the add (or sub) node joining the branch to the trunk.
        output: the branch's last node (the operand of the join).
        nodes: every node of the branch, in graph order.
        params: number of parameter elements the branch holds.
    """

    name: str
    join: str
    output: str
    nodes: list
    params: int


# -- what finalize carries out --------------------------------------------------------------


@dataclass
class Plan:
    """The decision finalize carries out.

    Args:
        alive: channel id -> kept.
        group_alive: group name -> bool array over its channels.
        dead_branches: names of the branches removed.
        removed_nodes: names of every node inside a removed branch.
    """

    alive: np.ndarray
    group_alive: dict
    dead_branches: set
    removed_nodes: set

    def keep(self, cids: np.ndarray) -> np.ndarray:
        """Indices of a dimension that survive: every channel they depend on is kept."""
        if cids.shape[1] == 0:
            return np.arange(cids.shape[0])
        if cids.shape[1] == 1:  # most dimensions: one channel per index
            c = cids[:, 0]
            ok = c < 0
            ok[~ok] = self.alive[c[~ok]]
            return np.flatnonzero(ok)
        ok = np.all((cids < 0) | self.alive[np.clip(cids, 0, None)], axis=1)
        return np.flatnonzero(ok)

    def new_size(self, cids: np.ndarray) -> int:
        return int(self.keep(cids).size)


# -- nodes finalize adds --------------------------------------------------------------------

#: ``node.meta`` key of a node finalize inserts in place of a mask or gate (``x * scale``): the name of
#: the prepared node whose output it has the shape and layout of, for the stages after it
SAME_LAYOUT = "fxprune_same_layout_as"


# -- the state a prepared model carries -----------------------------------------------------

ATTR = "fxprune_state"


@dataclass
class PruneState:
    """Everything finalize and the methods need, recorded by prepare.

    Args:
        index: channels, groups and every layout in channel ids (:class:`ChannelIndex`).
        sites: the mask sites (:class:`MaskSite`) that got a mask, by mask module name.
        branches: the removable branches (:class:`Branch`).
        example_inputs: the positional inputs prepare captured with; finalize checks itself on them.
        config: the :class:`~fxprune.config.PruneConfig` used.
        barriers: ops whose channels were frozen, and why.
        shapes: node name -> output shape(s) before pruning.
        approximate: nodes pruned approximately (LayerNorms, with ``approximate_norms``), each with the
            number of trailing dimensions it normalises over.
        example_kwargs: the keyword inputs prepare captured with.
        capture: ``"fx"`` (symbolic tracing) or ``"export"`` (torch.export).
        dynamic: input name -> the dimensions the captured graph keeps symbolic (torch.export).
        model: the copy of the user's model whose modules the graph calls, in the user's classes
            (``finalize(keep_classes=True)`` returns a pruned copy of it).
    """

    index: object
    sites: dict
    branches: list
    example_inputs: tuple
    config: PruneConfig
    barriers: list = field(default_factory=list)
    shapes: dict = field(default_factory=dict)
    approximate: dict = field(default_factory=dict)
    example_kwargs: dict = field(default_factory=dict)
    capture: str = "fx"
    dynamic: dict = field(default_factory=dict)
    model: Optional[torch.nn.Module] = None

    @property
    def example(self) -> "ExampleInputs":
        """The example inputs, positional and keyword."""
        return ExampleInputs(self.example_inputs, self.example_kwargs)


@dataclass
class ExampleInputs:
    """What a model is called with: ``model(*args, **kwargs)``.

    Example:
        >>> ExampleInputs.of({"input_ids": 1}).kwargs
        {'input_ids': 1}
    """

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __call__(self, model):
        """``model(*args, **kwargs)``."""
        return model(*self.args, **self.kwargs)

    @classmethod
    def of(cls, value) -> "ExampleInputs":
        """From a tensor, a tuple or list of positional inputs, a dict of keyword inputs, or an ExampleInputs."""
        if isinstance(value, ExampleInputs):
            return value
        if isinstance(value, dict):
            return cls((), dict(value))
        if isinstance(value, (tuple, list)):
            return cls(tuple(value), {})
        return cls((value,), {})


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


def is_tensor_shape(shape) -> bool:
    """Whether a recorded ``shapes[name]`` is a tensor's (other values record None, or containers of them)."""
    return isinstance(shape, tuple) and all(isinstance(d, int) for d in shape)
