"""Folding surviving mask and gate values into neighbouring weights.

A mask scales the channels entering a layer that mixes them, so its values fold into
that layer's input columns; a gate scales a branch's output, so it folds into the last
layer of the branch that is linear in its output (a BatchNorm's affine, a convolution's
weight and bias, a layer-scale parameter). Where no such weight exists the scale stays
as a plain constant multiply, never as an fxprune module:

    mask(x) ── conv         ->  x ── conv'    (conv'.weight[:, c] = conv.weight[:, c] * m[c])
    bn ── *gate ── add      ->  bn' ── add    (bn'.weight = g * bn.weight, bn'.bias = g * bn.bias)

Where the layer feeds a BatchNorm, the masks' common scale ``s`` (their largest surviving
magnitude) goes into the BatchNorm's statistics instead of the layer's weight:

    mask(x) ── conv ── bn   ->  x ── conv' ── bn'   conv'.weight[:, c] = conv.weight[:, c] * m[c] / s
                                                    conv'.bias = conv.bias / s
                                                    bn'.running_mean = mean / s, running_var = var / s**2,
                                                    bn'.eps = eps / s**2

Both are exact, in eval and in train mode (batch statistics scale the same way). The
second matters for what comes after finalize: l1 shrinks whole groups of masks together
(a conv followed by BatchNorm does not see the common scale), and a weight shrunk by
``s`` in front of BatchNorm trains with its learning rate effectively multiplied by
``1 / s**2`` when the pruned model is fine-tuned.
"""

from __future__ import annotations

import operator
from typing import Callable, Optional

import torch
import torch.fx
import torch.nn as nn

from fxprune.core.drafts import erase_dead_getattrs
from fxprune.core.ir import SAME_LAYOUT
from fxprune.core.masks import role
from fxprune.core.rules import module_handler, node_handler
from fxprune.core.tensors import owner_of, rescale, tensor_at


def fold_masks_and_gates(gm: torch.fx.GraphModule, state, plan) -> None:
    """Fold every surviving mask and gate value into weights; remove the fxprune nodes."""
    calls = module_calls(gm)
    bank = gm.fxprune
    for node in reversed(list(gm.graph.nodes)):  # downstream first: a chained mask then folds into a layer
        kind = role(node)
        if kind == "mask":
            _fold_mask(gm, node, state, plan, bank, calls)
        elif kind == "gate":
            _fold_gate(gm, node, bank, calls)
    erase_dead_getattrs(gm)


def _fold_mask(gm, node, state, plan, bank, calls) -> None:
    info = node.meta["fxprune"]
    site = state.sites[info["site"]]
    cids = state.index.node_layouts[site.source][site.dim]
    source = node.args[0]
    with torch.no_grad():
        vector = bank.sites[info["site"]].scale(*[tensor_at(gm, a.target) for a in node.args[1:]])
    keep = plan.keep(cids)
    survivors = vector[torch.as_tensor(keep, device=vector.device)]
    if bool((survivors == 1).all()):
        node.replace_all_uses_with(source)
    elif source.op == "get_attr":
        module, attr = owner_of(gm, source.target)
        shape = [1] * getattr(module, attr).dim()
        shape[site.dim] = -1
        rescale(module, attr, vector.view(shape))
        node.replace_all_uses_with(source)
    elif all(can_fold_into(gm, u, calls) for u in node.users):
        common = float(survivors.abs().max())  # below 1, no surviving mask is 1: those columns stay bit-identical
        for u in node.users:
            handler, layer = node_handler(gm, u)
            norm = norm_after(gm, u, calls) if 0.0 < common < 1.0 else None
            if norm is not None:
                handler.fold_input(layer, vector / common)
                _divide_output(layer, norm, common)
            else:
                handler.fold_input(layer, vector)
        node.replace_all_uses_with(source)
    else:
        ndim = len(state.shapes[site.source])
        shape = [1] * ndim
        shape[site.dim] = -1
        constant_multiply(gm, node, source, survivors.detach().clone().view(shape), f"folded_scale_{info['site']}",
                          like=site.source)
    gm.graph.erase_node(node)


def _fold_gate(gm, node, bank, calls) -> None:
    branch = node.meta["fxprune"]["branch"]
    value = float(bank.gates[branch].detach())
    source = node.args[0]
    if value != 1.0 and not fold_gate(gm, source, value, calls):
        with gm.graph.inserting_before(node):
            scaled = gm.graph.call_function(operator.mul, (source, value))
        scaled.meta[SAME_LAYOUT] = source.meta.get(SAME_LAYOUT, source.name)
        node.replace_all_uses_with(scaled)
    else:
        node.replace_all_uses_with(source)
    gm.graph.erase_node(node)


def can_fold_into(gm: torch.fx.GraphModule, consumer: torch.fx.Node, calls: dict) -> bool:
    """Whether a mask's consumer is a layer, called once, whose untied input columns can absorb it."""
    if consumer.op != "call_module" or calls.get(consumer.target, 0) != 1:
        return False
    handler, layer = node_handler(gm, consumer)
    return handler is not None and handler.folds_input and not _tied(gm, layer.weight)


def norm_after(gm: torch.fx.GraphModule, layer: torch.fx.Node, calls: dict) -> Optional[nn.Module]:
    """The module, called once and the only user of ``layer``'s output, that can absorb a scale of
    its input (a BatchNorm); else None."""
    if len(layer.users) != 1:
        return None
    user = next(iter(layer.users))
    if user.op != "call_module" or calls.get(user.target, 0) != 1:
        return None
    handler, norm = node_handler(gm, user)
    return norm if handler is not None and handler.absorbs_scale else None


def _divide_output(layer: nn.Module, norm: nn.Module, scale: float) -> None:
    """Divide ``layer``'s output by ``scale`` (its weight already is) and make ``norm`` undo it."""
    if getattr(layer, "bias", None) is not None:
        rescale(layer, "bias", 1.0 / scale)
    module_handler(norm).absorb_input_scale(norm, scale)


def _tied(gm: torch.fx.GraphModule, tensor: torch.Tensor) -> bool:
    return sum(1 for m in gm.modules() for p in m._parameters.values() if p is tensor) > 1


def fold_gate(gm: torch.fx.GraphModule, out: torch.fx.Node, value: float, calls: dict) -> bool:
    """Scale the output of a branch by ``value`` inside its last linear layer. False if none."""
    node = out
    while True:
        if len(node.users) != 1 and node is not out:
            return False
        target = _scaler(gm, node, calls)
        if target is not None:
            return target(value)
        handler, _ = node_handler(gm, node) if node.op in ("call_module", "call_function", "call_method") \
            else (None, None)
        first = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        if handler is None or first is None or not handler.passes_scale(value):
            return False
        node = first


def _scaler(gm, node: torch.fx.Node, calls: dict) -> Optional[Callable[[float], bool]]:
    """What multiplies ``node``'s output by a scalar inside weights: its layer, or a layer-scale parameter."""
    if node.op == "call_module" and calls.get(node.target, 0) == 1:
        handler, m = node_handler(gm, node)
        if handler is not None and getattr(m, "weight", None) is not None:
            return lambda value: handler.scale_output(m, value)
    if node.op == "call_function" and node.target in (operator.mul, torch.mul):
        for arg in node.args:
            if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and len(arg.users) == 1:
                module, attr = owner_of(gm, arg.target)
                return lambda value: rescale(module, attr, value) or True
    return None


def module_calls(gm: torch.fx.GraphModule) -> dict:
    """How many call_module nodes call each module path (a fold needs exactly one)."""
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    return calls


def constant_multiply(gm: torch.fx.GraphModule, node: torch.fx.Node, source: torch.fx.Node, scale: torch.Tensor,
                      name: str, like: str) -> None:
    """Replace a mask or gate node by ``source * constant`` with the constant as a plain buffer; the
    product has the layout of the prepared node ``like``."""
    gm.register_buffer(name, scale)
    with gm.graph.inserting_before(node):
        const = gm.graph.get_attr(name)
        mul = gm.graph.call_function(operator.mul, (source, const))
    mul.meta[SAME_LAYOUT] = like
    node.replace_all_uses_with(mul)
