"""finalize(keep_classes=True): the pruned model as the user's own classes, checked like the GraphModule.

The captured graph calls the user's own modules, and finalize slices their tensors. Here a
copy of the user's model (the same classes, the same tree) takes those tensors by their
names, each module that has a handler takes its resized attributes (``out_channels``,
``num_features``, ...), and module attributes that produced a channel count finalize changed
in the graph follow it:

    graph:   view(x, B, 2, 58, H, W) -> view(x, B, 2, 29, H, W)     made in module stage2.0
    model:   stage2.0.branch_width == 58                             -> 29

Once the copy passes its check, head counts and the model's config follow its layers
(:mod:`fxprune.core.finalize.follow_config`), where every layer agrees.

What cannot follow refuses, never half-done: a value the graph rewrote that no single
attribute of its module holds (a constant in the code, or an attribute that would need two
values), a scale finalize had to keep as a multiply, a removed residual branch. Either way
the copy is checked against the masked model like the GraphModule; if it differs, an
:class:`~fxprune.errors.FxPruneError` names the sizes it could not update and their source
lines. The GraphModule (``keep_classes=False``, the default) is exact for every model.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import torch
import torch.fx
import torch.nn as nn

from fxprune.core.copies import copy_module
from fxprune.core.finalize.follow_config import follow_config
from fxprune.core.finalize.share import drop_fxprune_hooks
from fxprune.core.finalize.verify import verify
from fxprune.core.ir import SAME_LAYOUT
from fxprune.core.prepare.trace import trace
from fxprune.core.rules import module_handler
from fxprune.core.tensors import owner_of
from fxprune.errors import FxPruneError, source_line

_HINT = "finalize(pm) (keep_classes=False, the default) returns a GraphModule that is exact for this model"


def into_user_classes(prepared, finalized: torch.fx.GraphModule, state, plan, changes: list,
                      threshold: float) -> nn.Module:
    """A pruned copy of the user's model, in its own classes, checked against the masked model.

    Args:
        prepared: the prepared model.
        finalized: finalize's GraphModule (its tensors are taken, not copied).
        state, plan: the prepared state and finalize's plan.
        changes: the :class:`~fxprune.core.finalize.resize.SizeChange` s finalize made.
        threshold: finalize's threshold.

    Raises:
        FxPruneError: the user's classes cannot hold this pruned model (the message says what).
    """
    _refuse_what_classes_cannot_hold(finalized, state, plan)
    failure = None
    for reading in ("channels", "integers"):  # which integers of a call are the ones its module's attributes made
        model = copy_module(state.model)
        _take_tensors(model, finalized)
        _take_sizes(model, finalized)
        unresolved = _follow_attributes(model, changes, reading)
        drop_fxprune_hooks(model)
        try:
            model.fxprune_equivalence_error = verify(prepared, model, state, threshold, plan)
            follow_config(model, lambda m: verify(prepared, m, state, threshold, plan))
            return model
        except Exception as e:  # a forward that breaks on the new sizes, or a result that differs
            failure = failure or (e, unresolved)
    error, unresolved = failure
    culprits = _with_sources(unresolved or [c for c in changes if c.changed], state)
    raise FxPruneError(f"{type(state.model).__name__} cannot be returned as its own classes: "
                       f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                       + _describe(culprits), hint=_HINT) from error


def _refuse_what_classes_cannot_hold(finalized, state, plan) -> None:
    if state.model is None:
        raise FxPruneError("keep_classes needs a model prepared by this version of fxprune", hint=_HINT)
    if plan.dead_branches:
        removed = ", ".join(sorted(plan.dead_branches))
        raise FxPruneError(f"keep_classes cannot return removed residual branches ({removed}) in the model's own "
                           "classes", hint=f"keep the gates above the threshold, or use {_HINT}")
    kept = [n.name for n in finalized.graph.nodes if SAME_LAYOUT in n.meta]
    if kept:
        raise FxPruneError(f"keep_classes: {len(kept)} mask or gate value(s) could not be folded into a layer's "
                           f"weights and stay as multiplies in the graph (at {', '.join(kept[:3])})",
                           hint=f"set the surviving mask values to 1 before finalize, or use {_HINT}")


def _take_tensors(model: nn.Module, finalized: nn.Module) -> None:
    """Every parameter and buffer of ``model`` that the finalized graph holds, by name, becomes that one."""
    for path, module in model.named_modules():
        for store in (module._parameters, module._buffers):
            for attr, tensor in list(store.items()):
                if tensor is None:
                    continue
                try:
                    owner, name = owner_of(finalized, f"{path}.{attr}" if path else attr)
                    store[attr] = getattr(owner, name)
                except AttributeError:
                    pass  # only the user's code reads it (the graph keeps a constant): as it was


def _take_sizes(model: nn.Module, finalized: nn.Module) -> None:
    """Modules with a handler take the size attributes their counterpart in the graph was resized to."""
    for path, module in model.named_modules():
        try:
            twin = finalized.get_submodule(path) if path else None
        except AttributeError:
            continue
        if twin is None or type(twin) is not type(module) or module_handler(module) is None:
            continue
        for key, value in vars(twin).items():
            if not key.startswith("_") and key != "training" and not isinstance(value, (torch.Tensor, nn.Module)):
                setattr(module, key, value)


def _follow_attributes(model: nn.Module, changes: list, reading: str) -> list:
    """Set each integer attribute of the calling module that held a rewritten size to the new size (a
    depthwise convolution's ``in_channels``, ``out_channels`` and ``groups`` alike; the check decides
    whether that was right). An attribute whose value another call of the same module kept (GPT-2's
    ``nf`` is the output width, which stays, though its input width went) is left as it is. Returns
    the changes that no attribute followed.

    ``reading`` says which integers of each call count: ``"channels"``, the channel counts its handler
    named (a head count beside a token count of the same value), or ``"integers"``, all of them (a
    width in a tuple the handler cannot see into, kept elsewhere).
    """
    wanted: dict = defaultdict(set)
    unresolved = []
    for change in changes:
        try:
            if change.module is None:
                raise AttributeError(change.node)  # not the user's code: nothing of theirs to follow it
            module = model.get_submodule(change.module) if change.module else model
        except AttributeError:
            unresolved.append(change)
            continue
        for old, new in getattr(change, reading):
            names = [k for k, v in vars(module).items() if type(v) is int and v == old and not k.startswith("_")]
            for name in names:
                wanted[(change.module, name)].add(new)
            if not names and old != new:
                unresolved.append(change)
    for (path, name), values in wanted.items():
        module = model.get_submodule(path) if path else model
        if len(values) == 1:
            setattr(module, name, next(iter(values)))
        elif getattr(module, name) not in values:
            unresolved.extend(c for c in changes if c.module == path and c.changed)
    return [c for c in unresolved if c.changed]


def _with_sources(changes: list, state) -> list:
    """The changes with the user's source lines, tracing the model again to find them where the capture
    (symbolic tracing, fast without them) did not keep them."""
    if not changes or all(c.source for c in changes) or state.capture != "fx":
        return changes
    try:
        traced = {n.name: n for n in trace(state.model, state.config, stack_traces=True).graph.nodes}
    except Exception:  # the error being raised matters more than its source lines
        return changes
    return [replace(c, source=c.source or source_line(traced[c.node]) or "") if c.node in traced else c
            for c in changes]


def _describe(changes: list) -> str:
    def sizes(c):
        pairs = [(o, n) for o, n in c.integers if o != n]
        if not pairs:
            return f"{_short(c.before)} -> {_short(c.after)}"
        return f"{[o for o, _ in pairs]} -> {[n for _, n in pairs]}"

    lines = [f"\n  a size its code computes, in {c.module or 'the model'} ({c.node}): " + sizes(c)
             + (f"\n    source: {c.source}" if c.source else "") for c in changes[:5]]
    return "".join(lines) + (f"\n  ... and {len(changes) - 5} more" if len(changes) > 5 else "")


def _short(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
