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
import torchvision

from .masks import role

_MODULE_CONSUMERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose1d, nn.ConvTranspose2d,
                     nn.ConvTranspose3d)
_PASS_THROUGH_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                         torchvision.ops.StochasticDepth)
_PASS_THROUGH_FUNCTIONS = {torchvision.ops.stochastic_depth, torch.nn.functional.dropout}
_PASS_THROUGH_METHODS = {"contiguous", "permute", "transpose", "reshape", "view", "flatten"}


def can_fold_into(gm: torch.fx.GraphModule, consumer: torch.fx.Node, calls: dict) -> bool:
    """Whether a mask's consumer is a layer, called once, whose untied input columns can absorb it."""
    return (consumer.op == "call_module" and calls.get(consumer.target, 0) == 1
            and isinstance(gm.get_submodule(consumer.target), _MODULE_CONSUMERS)
            and not _tied(gm, gm.get_submodule(consumer.target).weight))


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def norm_after(gm: torch.fx.GraphModule, layer: torch.fx.Node, calls: dict) -> Optional[nn.Module]:
    """The BatchNorm, called once, that is the only user of ``layer``'s output; else None."""
    if len(layer.users) != 1:
        return None
    user = next(iter(layer.users))
    if user.op != "call_module" or calls.get(user.target, 0) != 1:
        return None
    m = gm.get_submodule(user.target)
    return m if isinstance(m, _BATCH_NORMS) else None


def fold_scale_into_norm(gm: torch.fx.GraphModule, consumer: torch.fx.Node, norm: nn.Module, scale: float) -> None:
    """Divide ``consumer``'s output by ``scale`` and make ``norm`` undo it (see the module's doc)."""
    m = gm.get_submodule(consumer.target)
    if m.bias is not None:
        rescale(m, "bias", 1.0 / scale)
    if norm.running_mean is not None:
        rescale(norm, "running_mean", 1.0 / scale)
        rescale(norm, "running_var", 1.0 / scale**2)
    norm.eps = norm.eps / scale**2


def _tied(gm: torch.fx.GraphModule, tensor: torch.Tensor) -> bool:
    return sum(1 for m in gm.modules() for p in m._parameters.values() if p is tensor) > 1


def rescale(owner: nn.Module, attr: str, factor) -> None:
    """Replace ``owner.attr`` by ``owner.attr * factor``, as a new tensor.

    finalize's copy of the model shares its tensors with the prepared model until they are
    replaced, so a fold must never write into one.
    """
    old = getattr(owner, attr)
    new = old.detach() * (factor.to(old.dtype) if isinstance(factor, torch.Tensor) else factor)
    if isinstance(old, nn.Parameter):
        setattr(owner, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        owner._buffers[attr] = new


def fold_into_consumer(gm: torch.fx.GraphModule, consumer: torch.fx.Node, vector: torch.Tensor) -> None:
    """Scale a layer's input columns by ``vector`` (over its input channels)."""
    m = gm.get_submodule(consumer.target)
    w = m.weight
    if isinstance(m, nn.Linear):
        factor = vector.view(1, -1)
    elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        factor = vector.view(-1, *([1] * (w.dim() - 1)))
    else:
        groups, per_in = m.groups, w.shape[1]
        factor = vector.view(groups, per_in)[:, None, :].expand(groups, w.shape[0] // groups, per_in)
        factor = factor.reshape(w.shape[0], per_in, *([1] * (w.dim() - 2)))
    rescale(m, "weight", factor)


def fold_gate(gm: torch.fx.GraphModule, out: torch.fx.Node, value: float, calls: dict) -> bool:
    """Scale the output of a branch by ``value`` inside its last linear layer. False if none."""
    node = out
    while True:
        if len(node.users) != 1 and node is not out:
            return False
        target = _scaler(gm, node, calls)
        if target is not None:
            target(value)
            return True
        nxt = _pass_through_input(gm, node, value)
        if nxt is None:
            return False
        node = nxt


def _scaler(gm, node: torch.fx.Node, calls: dict) -> Optional[Callable[[float], None]]:
    if node.op == "call_module" and calls.get(node.target, 0) == 1:
        m = gm.get_submodule(node.target)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
                          nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)):
            if getattr(m, "weight", None) is None:
                return None

            def scale(value, m=m):
                rescale(m, "weight", value)
                if getattr(m, "bias", None) is not None:
                    rescale(m, "bias", value)

            return scale
    if node.op == "call_function" and node.target in (operator.mul, torch.mul):
        for arg in node.args:
            if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and len(arg.users) == 1:
                owner, _, attr = arg.target.rpartition(".")
                module = gm.get_submodule(owner) if owner else gm
                return lambda value, m=module, a=attr: rescale(m, a, value)
    return None


def _pass_through_input(gm, node: torch.fx.Node, value: float) -> Optional[torch.fx.Node]:
    first = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), _PASS_THROUGH_MODULES):
        return first
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), (nn.ReLU, nn.ReLU6)) and value > 0:
        return first if isinstance(gm.get_submodule(node.target), nn.ReLU) else None
    if node.op == "call_function" and node.target in _PASS_THROUGH_FUNCTIONS:
        return first
    if node.op == "call_method" and node.target in _PASS_THROUGH_METHODS:
        return first
    if node.op == "call_function" and node.target in (torch.permute, torch.transpose, torch.flatten, torch.reshape):
        return first
    return None


def module_calls(gm: torch.fx.GraphModule) -> dict:
    """How many call_module nodes call each module path (a fold needs exactly one)."""
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    return calls


def constant_multiply(gm: torch.fx.GraphModule, node: torch.fx.Node, source: torch.fx.Node, scale: torch.Tensor,
                      name: str) -> None:
    """Replace a mask or gate node by ``source * constant`` with the constant as a plain buffer."""
    gm.register_buffer(name, scale)
    with gm.graph.inserting_before(node):
        const = gm.graph.get_attr(name)
        mul = gm.graph.call_function(operator.mul, (source, const))
    node.replace_all_uses_with(mul)


def is_fxprune(node: torch.fx.Node) -> bool:
    return role(node) is not None
