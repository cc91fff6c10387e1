"""Capture: a copy of the model as a graph, by symbolic tracing or by torch.export.

``PruneConfig(capture=...)`` chooses: ``"fx"`` traces symbolically (:mod:`.trace`), ``"export"``
captures with ``torch.export`` and lifts module calls back (:mod:`.export`, :mod:`.lift`),
``"auto"`` (the default) traces and falls back to torch.export where tracing fails. The
prepared model records which one it used (``pm.fxprune_state.capture``).

Example:
    >>> captured = capture(model, (x,), {}, PruneConfig())        # doctest: +SKIP
    >>> captured.how, captured.dynamic                             # doctest: +SKIP
    ('fx', {})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from torch.fx import _pytree as fx_pytree
from torch.utils import _pytree as pytree

from fxprune.config import PruneConfig
from fxprune.core.copies import copy_module
from fxprune.core.ir import ExampleInputs
from fxprune.core.prepare.export import capture_with_export
from fxprune.core.prepare.lift import lift_modules
from fxprune.core.prepare.trace import dynamic_training_flags, trace
from fxprune.errors import FxPruneError, TraceError

CAPTURES = ("auto", "fx", "export")


@dataclass
class Captured:
    """A captured model: its graph over a copy of the model's modules, and how it was captured.

    Args:
        gm: a :class:`~fxprune.core.drafts.Draft`.
        how: ``"fx"`` or ``"export"``.
        model: the copy of the user's model the graph's modules belong to (its classes, its tree).
        dynamic: input name -> the dimensions the graph keeps symbolic (torch.export only).
        fx_error: why symbolic tracing failed, where ``auto`` fell back to torch.export.
    """

    gm: torch.fx.GraphModule
    how: str
    model: nn.Module
    dynamic: dict = field(default_factory=dict)
    fx_error: str = ""


def capture(model: nn.Module, args: tuple, kwargs: dict, config: PruneConfig) -> Captured:
    """Capture a copy of ``model`` as the configuration says.

    Raises:
        TraceError: no allowed capture could take the model; with ``auto``, the message says
            why each failed.
        FxPruneError: an unknown ``capture``.
    """
    if config.capture not in CAPTURES:
        raise FxPruneError(f"PruneConfig(capture={config.capture!r}) is not one of {', '.join(CAPTURES)}",
                           hint='use "auto" (trace, else torch.export), "fx" or "export"')
    if not isinstance(model, nn.Module):
        raise FxPruneError(f"prepare expects an nn.Module, got {type(model).__name__}",
                           hint="pass the model itself, for example torchvision.models.resnet18()")
    if config.capture != "export":
        try:
            root = copy_module(model)
            return Captured(trace(model, config, root=root), "fx", root)
        except TraceError as e:
            if config.capture == "fx":
                raise
            fx_error = e
    try:
        gm, dynamic, root = capture_with_export(model, args, kwargs, config)
    except TraceError as e:
        if config.capture == "export":
            raise
        summary = "\n    ".join(e.message.splitlines())
        raise TraceError(f"{fx_error.message}\n  torch.export could not capture it either: {summary}",
                         hint=f"{fx_error.hint} With torch.export: {e.hint}") from e
    lift_modules(gm)  # first: a training flag read from the module would not be one of the module's tensors
    dynamic_training_flags(gm.graph)
    return Captured(gm, "export", root, dynamic, fx_error.message if config.capture == "auto" else "")


def placeholder_values(gm: torch.fx.GraphModule, args: tuple, kwargs: dict) -> list:
    """The values of ``gm``'s placeholders when it is called as ``gm(*args, **kwargs)``."""
    codegen = gm.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is not None and info.in_spec is not None:
        return fx_pytree.tree_flatten_spec((list(args), dict(kwargs)), info.in_spec)
    values = []
    for i, node in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        name = node.target.lstrip("*")
        if i < len(args):
            values.append(args[i])
        elif name in kwargs:
            values.append(kwargs[name])
        elif node.args:
            values.append(node.args[0])  # the parameter's default
        else:
            raise FxPruneError(f"no example value for the model's input {name!r}",
                               hint=f"pass it in example_inputs, for example {{{name!r}: ...}}")
    return values


def example_inputs_for(model: nn.Module, example_inputs: Any = None) -> ExampleInputs:
    """The example inputs (detached copies), inferred for image models when not given.

    An image model's input is inferred from its first convolution: one image of
    ``in_channels`` x 224 x 224.

    Raises:
        FxPruneError: no inputs were given and the model has no convolution to infer from.
    """
    if example_inputs is not None:
        example = ExampleInputs.of(example_inputs)
        detached = pytree.tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t,
                                   (example.args, example.kwargs))
        return ExampleInputs(*detached)
    param = next((p for p in model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else "cpu"
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return ExampleInputs((torch.randn(1, m.in_channels, 224, 224, dtype=dtype, device=device),))
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv3d, nn.Embedding, nn.MultiheadAttention)):
            break
    raise FxPruneError(
        f"cannot infer an example input for {type(model).__name__}: its first layer is not a 2-d convolution",
        hint="pass example_inputs to prepare, for example prepare(model, torch.randn(1, 16))")
