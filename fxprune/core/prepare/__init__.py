"""prepare: capture the model, find its coupled channels, insert masks and gates.

Each line of :func:`prepare` is a stage, and each stage is a module of this folder:

    capture.py     capture a copy of the model as a torch.fx graph: by symbolic tracing (trace.py;
                   in_place.py: its ``a += b``) or by torch.export (export.py; lift.py: module calls back)
    lower.py       rewrite opaque modules (nn.MultiheadAttention) into ops with rules
    propagate.py   run the graph once; every op's handler ties, consumes and freezes channel atoms
    group.py       atoms become channels, channels that always go together become groups
    branches.py    residual branches that can be removed whole
    insert.py      one mask per group where its channels are mixed, one gate per branch
    hold.py        with PruneConfig(keep_classes=True): freeze what the user's classes cannot hold, by trial
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx
import torch.nn as nn

from fxprune.config import PruneConfig
from fxprune.core.drafts import release
from fxprune.core.ir import ATTR, PruneState
from fxprune.core.masks import MaskBank
from fxprune.core.prepare.branches import find_branches
from fxprune.core.prepare.capture import capture, example_inputs_for, placeholder_values
from fxprune.core.prepare.group import resolve
from fxprune.core.prepare.hold import freeze_held, hold_for_classes
from fxprune.core.prepare.in_place import check_in_place
from fxprune.core.prepare.insert import insert_gates, insert_masks
from fxprune.core.prepare.lower import lower_modules
from fxprune.core.prepare.propagate import propagate
from fxprune.core.prepare.trace import with_source_line
from fxprune.core.tensors import dtype_and_device
from fxprune.errors import FxPruneError


def prepare(model: nn.Module, example_inputs: Any = None, config: Optional[PruneConfig] = None) -> torch.fx.GraphModule:
    """Capture ``model``, find its coupled channels and insert masks and gates (all 1).

    The result computes exactly what ``model`` computes. Setting entries of
    ``pm.fxprune.masks[...]`` or ``pm.fxprune.gates[...]`` to zero switches channels or
    branches off; :func:`~fxprune.finalize` then removes them for real. ``model`` is not changed.

    Args:
        model: the model; symbolic tracing or torch.export must be able to capture it
            (``config.capture``).
        example_inputs: a tensor, a tuple of positional inputs, a dict of keyword inputs
            (``{"input_ids": ids, "attention_mask": mask}``), or ``(args, kwargs)`` as an
            :class:`~fxprune.core.ir.ExampleInputs`; inferred for image models when omitted.
        config: a :class:`~fxprune.PruneConfig`.

    Returns:
        A ``torch.fx.GraphModule`` with a ``fxprune`` submodule holding masks and gates.

    Example:
        >>> pm = prepare(torchvision.models.resnet18())          # doctest: +SKIP
        >>> pm.fxprune.masks["g0"].shape                          # doctest: +SKIP
        torch.Size([64])
    """
    config = config or PruneConfig()
    example = example_inputs_for(model, example_inputs)
    pm = _prepare(model, example, config, held=[])
    if config.keep_classes:
        pm = hold_for_classes(pm, lambda held: _prepare(model, example, config, held))
    return pm


def _prepare(model: nn.Module, example, config: PruneConfig, held: list) -> torch.fx.GraphModule:
    captured = capture(model, example.args, example.kwargs, config)
    gm = captured.gm
    lower_modules(gm)
    try:
        flow = propagate(gm, config, placeholder_values(gm, example.args, example.kwargs))
        check_in_place(gm, flow.shapes)
    except FxPruneError as e:
        raise (with_source_line(e, model, config) if captured.how == "fx" else e) from None
    freeze_held(flow, held)
    index = resolve(flow)
    gated = config.gate_branches and not config.keep_classes  # the user's classes cannot lose a branch
    branches = find_branches(gm, flow.shapes, config.min_branch_params) if gated else []
    dtype, device = dtype_and_device(gm)
    gm.add_submodule("fxprune", MaskBank([g.size for g in index.groups], [b.name for b in branches], dtype, device))
    sites = insert_masks(gm, list(flow.sites.values()), index)
    insert_gates(gm, branches)
    gm = release(gm)
    setattr(gm, ATTR, PruneState(index, sites, branches, example.args, config, flow.barriers, flow.shapes,
                                 flow.approximate, example.kwargs, captured.how, captured.dynamic,
                                 captured.model))
    return gm
