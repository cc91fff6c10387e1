"""ATen calls go back to the modules they came from (graphs captured by torch.export).

torch.export records the ATen ops a module's forward ran (``aten.conv2d(x, w, b)`` on the
weights of ``layer1.0.conv1``), and marks each with the stack of modules that called it
(``node.meta["nn_module_stack"]``). Where the ops of one module call form a region with
one input and one output, reading no weights but the module's own, and the module has a
handler and a forward of one argument, the region becomes ``call_module`` again:

    w = get_attr layer1.0.conv1.weight
    y = aten.conv2d(x, w, None, ...)        ->     y = call_module layer1.0.conv1 (x)

So the captured model keeps its modules: handlers see module calls as with symbolic
tracing, batch norm and dropout follow ``train()`` and ``eval()`` again, and the finalized
model holds the user's layers. Regions that do not qualify (a module called with several
inputs, one without a handler) keep their ATen ops, which have handlers of their own.

Example:
    >>> lift_modules(draft)                 # doctest: +SKIP
    41
"""

from __future__ import annotations

import inspect

import torch
import torch.fx
import torch.nn as nn

from fxprune.core.drafts import erase_dead_getattrs
from fxprune.core.rules import module_handler
from fxprune.core.tensors import tensor_at

STACK = "nn_module_stack"


def lift_modules(gm: torch.fx.GraphModule) -> int:
    """Replace every recognised module call by ``call_module``; returns how many were replaced.

    Edits ``gm.graph``; the caller recompiles.
    """
    lifted = 0
    for key, run in _module_runs(gm.graph):
        path = run[0].meta[STACK][key][0]
        module = _submodule(gm, path)
        if module is None or module_handler(module) is None or not _takes_one_input(module):
            continue
        region = _single_entry_exit(gm, run, module)
        if region is None:
            continue
        source, out = region
        with gm.graph.inserting_before(out):
            call = gm.graph.call_module(path, (source,))
        call.meta.update(out.meta)
        out.replace_all_uses_with(call)
        for node in reversed(run):
            if not node.users:
                gm.graph.erase_node(node)
        lifted += 1
    erase_dead_getattrs(gm)
    return lifted


def _module_runs(graph: torch.fx.Graph) -> list:
    """``(stack key, [nodes])`` for each run of consecutive calls whose innermost module call is the same."""
    runs = []
    for node in graph.nodes:
        stack = node.meta.get(STACK) if node.op == "call_function" else None
        key = next(reversed(stack)) if stack else None
        if key is None:
            continue
        if runs and runs[-1][0] == key and runs[-1][1][-1].next is node:
            runs[-1][1].append(node)
        else:
            runs.append((key, [node]))
    return runs


def _submodule(gm: torch.fx.GraphModule, path: str):
    try:
        return gm.get_submodule(path) if path else None
    except AttributeError:
        return None


def _takes_one_input(module: nn.Module) -> bool:
    """Whether the module's forward takes exactly one argument: then the region's one input is all it
    was called with (a further argument, even one with a default, may have been passed and baked in)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) == 1 and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _single_entry_exit(gm: torch.fx.GraphModule, run: list, module: nn.Module):
    """``(input node, output node)`` if the run reads one value from outside besides the module's own
    tensors, and only its last tensor is read outside it; else None."""
    inside = set(run)
    own = {id(t) for t in list(module.parameters()) + list(module.buffers())}
    sources = []
    for node in run:
        for arg in node.all_input_nodes:
            if arg in inside:
                continue
            if arg.op == "get_attr":
                if id(tensor_at(gm, arg.target)) not in own:
                    return None
            elif arg not in sources:
                sources.append(arg)
    outputs = [n for n in run if any(u not in inside for u in n.users)]
    if len(sources) != 1 or len(outputs) != 1 or not isinstance(outputs[0].meta.get("val"), torch.Tensor):
        return None
    return sources[0], outputs[0]
