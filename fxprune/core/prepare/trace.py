"""Capture by symbolic tracing with torch.fx: leaf-module policy, clear errors, training flags.

The caller's model is deep-copied before tracing (its tensors copy-on-write, see
:mod:`fxprune.core.copies`), so nothing fxprune does later (inserting masks, training
them, slicing weights) can reach it.

Example:
    >>> gm = trace(torchvision.models.resnet18(), PruneConfig())   # doctest: +SKIP
"""

from __future__ import annotations

import os
import traceback
from typing import Optional

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models import swin_transformer

from fxprune.config import PruneConfig
from fxprune.core.copies import copy_module
from fxprune.core.drafts import Draft
from fxprune.core.prepare.in_place import InPlaceProxy
from fxprune.core.rules.registry import is_registered_module
from fxprune.errors import FxPruneError, TraceError

_TORCH_DIR = os.path.dirname(torch.__file__)

# call_function targets whose ``training`` argument tracing bakes in, and its position.
_aten = torch.ops.aten
_TRAINING_ARGUMENT = {
    F.dropout: 2, F.dropout1d: 2, F.dropout2d: 2, F.dropout3d: 2, F.alpha_dropout: 2,
    F.feature_alpha_dropout: 2, torchvision.ops.stochastic_depth: 3,
    swin_transformer.shifted_window_attention: 12,
    # what torch.export records for calls it could not lift back into their modules
    _aten.batch_norm.default: 5, _aten.dropout.default: 2, _aten.feature_dropout.default: 2,
    _aten.alpha_dropout.default: 2, _aten.feature_alpha_dropout.default: 2,
}


class PruneTracer(torch.fx.Tracer):
    """A symbolic tracer that honours the configured leaf modules and, when asked, records source lines."""

    def __init__(self, leaf_modules=(), stack_traces: bool = False):
        super().__init__()
        self.record_stack_traces = stack_traces  # a traceback per node: most of tracing's time
        self.leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
        self.leaf_names = {m for m in leaf_modules if isinstance(m, str)}
        self.failed_in: Optional[str] = None
        self.failed_class: Optional[str] = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or (self.leaf_types and isinstance(m, self.leaf_types)) \
                or is_registered_module(m):
            return True
        return super().is_leaf_module(m, qualname)

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        return InPlaceProxy(node, self)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_of_module(m) or type(m).__name__
                self.failed_class = type(m).__name__
            raise


def trace(model: nn.Module, config: PruneConfig, stack_traces: bool = False,
          root: Optional[nn.Module] = None) -> torch.fx.GraphModule:
    """Deep-copy ``model`` and trace it into a :class:`~fxprune.core.drafts.Draft` (a GraphModule without code yet).

    Args:
        model: the user's model; not changed.
        config: leaf modules and concrete args.
        stack_traces: record each node's source lines (see :func:`with_source_line`).
        root: the copy of ``model`` to trace (made here when not given); the draft's modules are its.

    Raises:
        TraceError: torch.fx could not follow the model; the message names the op, the
            user's source line and how to proceed.
    """
    if not isinstance(model, nn.Module):
        raise FxPruneError(f"prepare expects an nn.Module, got {type(model).__name__}",
                           hint="pass the model itself, for example torchvision.models.resnet18()")
    root = root if root is not None else copy_module(model)
    modes = {name: m.training for name, m in root.named_modules()}
    root.eval()
    tracer = PruneTracer(config.leaf_modules, stack_traces)
    try:
        graph = tracer.trace(root, concrete_args=config.concrete_args)
    except Exception as e:
        raise _trace_error(model, tracer, e) from e
    dynamic_training_flags(graph)
    gm = Draft(tracer.root, graph, root.__class__.__name__)
    for name, m in gm.named_modules():
        m.training = modes.get(name, model.training)
    for name, m in root.named_modules():
        m.training = modes[name]
    return gm


def with_source_line(error: FxPruneError, model: nn.Module, config: PruneConfig) -> FxPruneError:
    """The same error, its node's source line added.

    Tracing without stack traces is several times faster, so prepare traces without them
    and only an error that names a node pays for a second trace that records them (node
    names are the same in both traces).
    """
    if error.node is None or error.node.meta.get("stack_trace"):
        return error
    traced = {n.name: n for n in trace(model, config, stack_traces=True).graph.nodes}
    same = traced.get(error.node.name)
    if same is None or not same.stack_trace:
        return error
    error.node.meta["stack_trace"] = same.stack_trace
    return type(error)(error.message, node=error.node, hint=error.hint)


def dynamic_training_flags(graph: torch.fx.Graph) -> None:
    """Make ``training=`` arguments baked in by tracing follow ``gm.train()`` / ``gm.eval()``.

    Tracing reads ``self.training`` once (the model is traced in eval mode), so a functional
    dropout or stochastic depth would be off for good. Their ``training`` argument is
    replaced by a read of the GraphModule's own flag.
    """
    flag = None
    for node in list(graph.nodes):
        position = _TRAINING_ARGUMENT.get(node.target) if node.op == "call_function" else None
        if position is None:
            continue
        value = node.args[position] if len(node.args) > position else node.kwargs.get("training")
        if value is not False:
            continue
        if flag is None:
            with graph.inserting_before(next(iter(graph.nodes))):
                flag = graph.create_node("get_attr", "training")
            for placeholder in [n for n in graph.nodes if n.op == "placeholder"]:
                flag.prepend(placeholder)
        if len(node.args) > position:
            args = list(node.args)
            args[position] = flag
            node.args = tuple(args)
        else:
            node.kwargs = {**node.kwargs, "training": flag}


def _trace_error(model: nn.Module, tracer: PruneTracer, error: Exception) -> TraceError:
    frame = _user_frame(error)
    where = f"\n  source: {frame.filename}:{frame.lineno}: {frame.line}" if frame else ""
    inside = f"\n  inside module: {tracer.failed_in} ({tracer.failed_class})" if tracer.failed_in else ""
    failed_in = f'"{tracer.failed_in}"' if tracer.failed_in else "..."
    leaf = f"PruneConfig(leaf_modules=[{failed_in}])"
    handler = f"fxprune.register_handler({tracer.failed_class})" if tracer.failed_class else "fxprune.register_handler"
    return TraceError(
        f"torch.fx could not trace {type(model).__name__}: {type(error).__name__}: {error}".strip() + where + inside,
        hint=f"declare the module that holds this code a leaf ({leaf}); it then becomes a frozen "
             f"boundary whose channels are kept. To prune its channels too, register a handler for its class "
             f"({handler}). Or pass concrete_args in the PruneConfig to fix the Python values the control flow "
             "depends on.")


def _user_frame(error: Exception):
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        if not frame.filename.startswith(_TORCH_DIR) and "fxprune" not in frame.filename:
            return frame
    return None
