"""Capture with ``torch.export``: models that symbolic tracing cannot follow.

``torch.export.export(strict=False)`` runs the model's Python once and records the ATen ops
it calls, so control flow on values, third-party tracers' blind spots and models called
with keywords are no obstacle. Its graph is a torch.fx graph: everything after capture is
the same pass. Three things differ from symbolic tracing, and are dealt with here:

- Dimensions: the batch dimension of every tensor input (and the sequence dimension of
  token inputs, integer tensors of rank 2) is exported dynamic, so the pruned model takes
  other batch sizes and lengths. An example batch of one is repeated to two for the
  export (torch.export specialises sizes 0 and 1). Where dynamic sizes cannot be kept,
  fewer dimensions are tried, and the capture records which stayed dynamic.
- Modules: the graph calls ATen ops on weights, not modules; :mod:`.lift` calls the
  modules again where whole module calls can be recognised.
- Modes: the graph bakes in eval mode; the ``training`` arguments of batch norm and
  dropout are tied to the module's own flag (:func:`~.trace.dynamic_training_flags`).

Example:
    >>> gm, dims = capture_with_export(model, (), {"input_ids": ids}, PruneConfig())   # doctest: +SKIP
    >>> dims                                                                         # doctest: +SKIP
    {'input_ids': [0, 1], 'attention_mask': [0, 1]}
"""

from __future__ import annotations

import inspect
import io
import logging
import traceback
from contextlib import contextmanager, redirect_stderr
from typing import Any, Optional

import torch
import torch.fx
import torch.nn as nn
from torch.export import Dim
from torch.utils import _pytree as pytree

from fxprune.config import PruneConfig
from fxprune.core.copies import copy_module
from fxprune.core.drafts import Draft, draft_over
from fxprune.core.tensors import eval_mode
from fxprune.errors import TraceError

_TORCH_FILES = ("/torch/", "/torchvision/", "/transformers/", "/timm/", "/ultralytics/")
RECORDED = "export_recorded"  # the draft's holder of what export recorded beside the model's own tensors


def capture_with_export(model: nn.Module, args: tuple, kwargs: dict, config: PruneConfig) -> tuple:
    """Copy ``model`` and capture it with ``torch.export.export(strict=False)``.

    Returns:
        ``(draft, dynamic, root)``: a :class:`~fxprune.core.drafts.Draft` whose modules are the
        copy's own, which input dimensions stayed dynamic (input name -> dims), and the copy.

    Raises:
        TraceError: torch.export could not capture the model; the message names the
            construct (a data-dependent size, and where) and what to do.
    """
    root = copy_module(model)
    probe = copy_module(model)  # what export runs: its Python may store tracing values on the modules
    modes = {name: m.training for name, m in root.named_modules()}
    export_args, export_kwargs = at_least_two(args), at_least_two(kwargs)
    program = None
    with eval_mode(probe), _quiet():
        error = None
        for dynamic_shapes in dynamic_shape_choices(probe, export_args, export_kwargs, config):
            try:
                program = torch.export.export(probe, export_args, export_kwargs, dynamic_shapes=dynamic_shapes,
                                              strict=False)
                break
            except Exception as e:  # the next candidate keeps fewer dimensions dynamic
                error = e
                if not _about_dynamic_sizes(e):
                    break
        if program is None:
            raise _export_error(model, error) from error
    draft = _draft(root, program)
    dynamic = dynamic_dimensions(draft.graph)
    for name, m in draft.named_modules():
        m.training = modes.get(name, model.training)
    return draft, dynamic, root


def _draft(root: nn.Module, program) -> Draft:
    """The exported graph over the copy's own modules (the unlifted module's are plain containers).

    The graph reads the model's parameters and buffers by their names, which ``root`` has;
    any other tensor it reads (constants export lifted out of the code, tensors the model
    keeps as plain attributes) is the value export recorded. torch.export's check of the input
    sizes stays: an input of a size the graph did not keep dynamic is refused, not computed
    along the branch the example took.
    """
    unlifted = program.module()
    graph = unlifted.graph
    recorded = nn.Module()  # what export recorded beside the model's own tensors; the model itself keeps as it was
    own = {name for name, _ in root.named_parameters(remove_duplicate=False)} | \
        {name for name, _ in root.named_buffers(remove_duplicate=False)}
    for node in graph.nodes:
        if node.op == "call_module" and not hasattr(root, node.target):  # torch.export's checks of input sizes
            recorded.add_module(node.target, unlifted.get_submodule(node.target))
            node.target = f"{RECORDED}.{node.target}"
        elif node.op == "get_attr" and node.target not in own:
            value = _attribute(unlifted, node.target)
            name = f"c{len(recorded._buffers) + len(recorded._modules)}"
            while hasattr(recorded, name):
                name += "_"
            if isinstance(value, torch.Tensor):
                recorded.register_buffer(name, value, persistent=False)
            else:
                setattr(recorded, name, value)
            node.target = f"{RECORDED}.{name}"
    return draft_over(root, graph, {RECORDED: recorded})


def dynamic_shape_choices(root: nn.Module, args: tuple, kwargs: dict, config: Optional[PruneConfig] = None):
    """The ``dynamic_shapes`` to try in turn: batch and sequence named, then torch.export's own
    choice (``Dim.AUTO``, which keeps what it can), then the batch alone, then none."""
    if config is not None and config.dynamic_shapes is not None:
        yield config.dynamic_shapes
        return
    names = _input_names(root, args, kwargs)
    first = next((v for _, v in names if isinstance(v, torch.Tensor) and v.dim() >= 1), None)
    batch_size = first.shape[0] if first is not None else None
    batch, seq = Dim("batch"), Dim("seq")
    for choice in ("named", "auto", "batch", "static"):
        spec = []
        for _, value in names:
            if not isinstance(value, torch.Tensor):  # a container's tensors keep their sizes
                spec.append(pytree.tree_map(lambda _: None, value))
                continue
            d = {}
            if value.dim() >= 1 and value.shape[0] == batch_size and choice != "static":
                d[0] = Dim.AUTO if choice == "auto" else batch
                if choice in ("named", "auto") and _is_tokens(value):
                    d[1] = Dim.AUTO if choice == "auto" else seq
            spec.append(d or None)
        yield {name: d for (name, _), d in zip(names, spec)}


def _is_tokens(value: torch.Tensor) -> bool:
    """Token ids or masks: integer (or boolean) tensors ``[batch, length]`` of length more than one."""
    return value.dim() == 2 and not value.is_floating_point() and value.shape[1] > 1


def dynamic_dimensions(graph: torch.fx.Graph) -> dict:
    """Input name -> the dimensions of that input whose size the graph keeps symbolic."""
    out = {}
    for node in graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(value, torch.Tensor):
            dims = [d for d, size in enumerate(value.shape) if not isinstance(size, int)]
            if dims:
                out[node.name] = dims
    return out


def _input_names(root: nn.Module, args: tuple, kwargs: dict) -> list:
    """``(forward's parameter name, example value)`` of every input, positional ones first."""
    params = list(inspect.signature(root.forward).parameters)
    return [(params[i] if i < len(params) else f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items())


def at_least_two(values):
    """The inputs with a batch of one repeated to two (torch.export specialises a size of one).

    The batch is the first dimension of the first tensor input; other tensors are repeated
    only where that batch is one and theirs is too.
    """
    tensors = [t for t in pytree.tree_leaves(values) if isinstance(t, torch.Tensor) and t.dim() >= 1]
    if not tensors or tensors[0].shape[0] != 1:
        return values
    return pytree.tree_map(lambda t: torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() >= 1
                           and t.shape[0] == 1 else t, values)


def _about_dynamic_sizes(error: Exception) -> bool:
    """Whether torch.export failed on the dimensions asked to stay dynamic (another choice may work)."""
    text = str(error)
    return "Constraints violated" in text or "specialized" in text or "dynamic_shapes" in text


@contextmanager
def _quiet():
    """torch.export logs, and prints to stderr, each failed attempt's graph; the error fxprune raises
    says what matters."""
    loggers = [logging.getLogger(name) for name in ("torch._dynamo", "torch.export", "torch._export",
                                                    "torch.fx.experimental.symbolic_shapes")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export_error(model: nn.Module, error: Exception) -> TraceError:
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    caused = next((line.strip() for line in text.splitlines() if line.strip().startswith("Caused by")), "")
    frame = _user_frame(error)
    where = f"\n  source: {frame.filename}:{frame.lineno}: {frame.line}" if frame else ""
    data_dependent = "data-dependent" in text or "GuardOnDataDependent" in type(error).__name__
    construct = "a branch or size that depends on tensor values" if data_dependent else "its Python code"
    return TraceError(
        f"torch.export could not capture {type(model).__name__} ({construct}): {type(error).__name__}: {first}"
        + (f"\n  {caused}" if caused else "") + where,
        hint="prune the sub-module that holds the layers (for a detector, its backbone: "
             "fxprune.prepare(model.backbone, ...)), or pass PruneConfig(dynamic_shapes=...) if only the "
             "dynamic sizes failed")


def _user_frame(error: Exception) -> Optional[traceback.FrameSummary]:
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        if not any(part in frame.filename for part in _TORCH_FILES) and "fxprune" not in frame.filename \
                and not frame.filename.startswith("<"):
            return frame
    return None  # the construct is in library code: "Caused by" names its line


def _attribute(root: nn.Module, target: str) -> Any:
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    return value
