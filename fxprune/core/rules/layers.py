"""Layers with weights: convolutions, linear layers, embeddings.

A layer's parameters are where channels are born: the rows of a weight (its
filters) are fresh atoms, and the layer's output channels *are* those atoms. Its input
channels are tied to the weight's input dimension and consumed there (a mask goes on
the input). Grouped convolutions split both sides into groups x channels-per-group:

    conv(groups=G): in  c = g*K + k  ->  (group g) and (weight column k)
                    out o = g*J + j  ->  (group g) and (filter j of the group)

so a whole group can go (depthwise: the input channel and its filters together), or
the same position in every group.

Each handler also says how finalize resizes the layer, how a mask on its input folds
into its weight, how a gate folds into its output, and how many MACs its weight costs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from fxprune.core.atoms import empty_dim, product
from fxprune.core.rules.context import RuleContext, op_name
from fxprune.core.rules.registry import Handler, aten, register, rule
from fxprune.core.tensors import rescale

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class WeightedLayer(Handler):
    """What convolutions and linear layers share: heavy, a fresh output, a gate folds into weight and bias."""

    heavy = True
    fresh_output = True
    folds_input = True

    def scale_output(self, module: nn.Module, value: float) -> bool:
        return scale_weight_and_bias(module, value)

    def weight_positions(self, node, module, out_shape) -> dict:
        channels = out_shape[-1] if isinstance(module, nn.Linear) else out_shape[1]
        return {(node.target, "weight"): _numel(out_shape) // max(1, channels)}


@register(*_CONVS)
class Conv(WeightedLayer):
    """``nn.Conv1d/2d/3d``, grouped and depthwise included."""

    def flow(self, ctx: RuleContext):
        m = ctx.module
        x = ctx.layout(0)
        w = ctx.param("weight", roles={0: "out", 1: "in"}, tie={1: x[1]} if m.groups == 1 else None)
        b = ctx.param("bias", roles={0: "out"}, tie={0: w[0]})
        # keyed by identity: data_ptr() would make prepare's copy-on-write weight copy itself
        return conv_flow(ctx, w, b, m.groups, False, key=(id(m.weight), "groups"))

    def stand_in(self, module, args, kwargs):
        if type(module) in _CONVS and len(args) == 1 and not kwargs:
            return _zeros_like_conv(args[0], module)
        return None

    def resize_module(self, m, in_channels):
        m.out_channels = m.weight.shape[0]
        if in_channels is None:
            in_channels = m.weight.shape[1] * m.groups
        m.groups = max(1, in_channels // m.weight.shape[1])
        m.in_channels = in_channels

    def fold_input(self, m, scale):
        w = m.weight
        groups, per_in = m.groups, w.shape[1]
        factor = scale.view(groups, per_in)[:, None, :].expand(groups, w.shape[0] // groups, per_in)
        rescale(m, "weight", factor.reshape(w.shape[0], per_in, *([1] * (w.dim() - 2))))


@register(*_CONV_TRANSPOSED)
class ConvTransposed(WeightedLayer):
    """``nn.ConvTranspose1d/2d/3d`` (grouped ones are frozen)."""

    def flow(self, ctx: RuleContext):
        m = ctx.module
        x = ctx.layout(0)
        w = ctx.param("weight", roles={1: "out", 0: "in"}, tie={0: x[1]})
        b = ctx.param("bias", roles={0: "out"}, tie={0: w[1]})
        return conv_flow(ctx, w, b, m.groups, True, key=(id(m.weight), "groups"))

    def resize_module(self, m, in_channels):
        m.in_channels = m.weight.shape[0]
        m.out_channels = m.weight.shape[1] * m.groups

    def fold_input(self, m, scale):
        rescale(m, "weight", scale.view(-1, *([1] * (m.weight.dim() - 1))))

    def scale_output(self, module, value):
        return False


@register(F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
class ConvFunction(Handler):
    """``F.conv*`` and ``F.conv_transpose*`` on weights the graph reads."""

    heavy = True

    def flow(self, ctx: RuleContext):
        transposed = ctx.op.startswith("conv_transpose")
        w = ctx.param_arg(1, "weight", {1: "out", 0: "in"} if transposed else {0: "out", 1: "in"})
        b = ctx.param_arg(2, "bias", {0: "out"})
        groups = ctx.arg(6, "groups", 1)
        return conv_flow(ctx, w, b, groups, transposed, key=(ctx.arg_node(1, "weight"), "groups"))

    def resize_node(self, gm, node, sizes) -> None:
        """A grouped convolution's ``groups`` follows its input: new input channels over columns per group."""
        groups_at = 6 if not op_name(node.target).startswith("conv_transpose") else None
        if groups_at is None or len(node.args) <= groups_at or node.args[groups_at] == 1:
            return
        x, w = node.args[0], node.args[1]
        if isinstance(x, torch.fx.Node) and isinstance(w, torch.fx.Node):
            groups = sizes.new(x.name)[1] // max(1, sizes.new(w.name)[1])
            node.args = node.args[:groups_at] + (groups,) + node.args[groups_at + 1:]

    def weight_positions(self, node, module, out_shape):
        if op_name(node.target).startswith("conv_transpose"):
            return {}
        return _functional_weight(node, _numel(out_shape) // max(1, out_shape[1]))


def conv_flow(ctx: RuleContext, w, b, groups: int, transposed: bool, key):
    """Tie input, weight, bias and output of a (possibly grouped) convolution."""
    x = ctx.layout(0, "input")
    rest = tuple(empty_dim(s) for s in ctx.out.shape[2:])
    if transposed:  # weight [C_in, C_out / groups, ...]
        if groups > 1:
            ctx.freeze([x[1], w[0], w[1]], "grouped transposed convolutions are not pruned")
            return (x[0], empty_dim(ctx.out.shape[1])) + rest
        ctx.unify(x[1], w[0])
        w_out = w[1]
    else:
        w_out, w_in = w[0], w[1]
        if groups > 1:
            group = ctx.memo(key, lambda: _split_groups(ctx, w_out, groups))
            per_in = w_in.shape[0]
            expected = product([np.repeat(group, per_in, axis=0), np.tile(w_in, (groups, 1))])
            ctx.unify(x[1], expected if expected is not None else empty_dim(x[1].shape[0]))
        else:
            ctx.unify(x[1], w_in)
    if b is not None:
        ctx.unify(b[0], w_out)
    ctx.consume(0, 1, "input")
    return (x[0], w_out) + rest


def _split_groups(ctx: RuleContext, w_out: np.ndarray, groups: int) -> np.ndarray:
    """Refine a grouped conv's filters into (group, filter-in-group); returns the group atoms."""
    per = w_out.shape[0] // groups
    if per == 1:  # one filter per group (depthwise): the groups are the filters
        return w_out
    group = ctx.new_space(groups, "groups")
    within = ctx.new_space(per, "per-group")
    rows_g = np.repeat(group, per, axis=0)
    rows_j = np.tile(within, (groups, 1))
    if ctx.atoms.can_refine(w_out):
        ctx.atoms.refine(w_out, [rows_g, rows_j])
    else:
        ctx.unify(w_out, product([rows_g, rows_j]))
    return group



@register(nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)
class Linear(WeightedLayer):
    """``nn.Linear``: channels on the last dimension."""

    def flow(self, ctx: RuleContext):
        w = ctx.param("weight", roles={0: "out", 1: "in"}, tie={1: ctx.layout(0)[-1]})
        b = ctx.param("bias", roles={0: "out"}, tie={0: w[0]})
        return linear_flow(ctx, w, b)

    def stand_in(self, module, args, kwargs):
        if len(args) == 1 and not kwargs:  # meta's addmm is slow
            return _zeros_like_linear(args[0], module.weight)
        return None

    def resize_module(self, m, in_channels):
        m.out_features, m.in_features = m.weight.shape

    def fold_input(self, m, scale):
        rescale(m, "weight", scale.view(1, -1))


@register(F.linear)
class LinearFunction(Handler):
    """``F.linear`` on a weight the graph reads."""

    heavy = True

    def flow(self, ctx: RuleContext):
        w = ctx.param_arg(1, "weight", {0: "out", 1: "in"})
        return linear_flow(ctx, w, ctx.param_arg(2, "bias", {0: "out"}))

    def stand_in(self, module, args, kwargs):
        if len(args) >= 2 and not kwargs:
            return _zeros_like_linear(args[0], args[1])
        return None

    def weight_positions(self, node, module, out_shape):
        return _functional_weight(node, _numel(out_shape) // max(1, out_shape[-1]))


def linear_flow(ctx: RuleContext, w, b):
    x = ctx.layout(0, "input")
    ctx.unify(x[-1], w[1])
    if b is not None:
        ctx.unify(b[0], w[0])
    ctx.consume(0, -1, "input")
    return tuple(x[:-1]) + (w[0],)



@rule(nn.Bilinear)
def bilinear(ctx: RuleContext):
    return ctx.barrier("nn.Bilinear mixes two inputs")


@register(nn.Embedding)
class Embedding(Handler):
    """``nn.Embedding``: its columns are channels; its rows are looked up by index and kept."""

    def flow(self, ctx: RuleContext):
        w = ctx.param("weight", roles={1: "out"})
        ctx.freeze(w[0], "embedding rows are looked up by index")
        ids = ctx.layout(0)
        return tuple(ids) + (w[1],)

    def resize_module(self, m, in_channels):
        m.num_embeddings, m.embedding_dim = m.weight.shape


def scale_weight_and_bias(m: nn.Module, value: float) -> bool:
    """Multiply a layer's output by ``value`` through its weight and bias (False without a weight)."""
    if getattr(m, "weight", None) is None:
        return False
    rescale(m, "weight", value)
    if getattr(m, "bias", None) is not None:
        rescale(m, "bias", value)
    return True


def _numel(shape) -> int:
    return int(np.prod(shape))


def _functional_weight(node, positions: int) -> dict:
    w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    return {w: positions} if isinstance(w, torch.fx.Node) else {}


def _zeros_like_linear(x, weight):
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor) or x.dim() < 1 \
            or weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        return None  # let the op itself say what is wrong
    return torch.zeros(*x.shape[:-1], weight.shape[0], dtype=torch.result_type(x, weight), device=x.device)


def _zeros_like_conv(x, conv: nn.modules.conv._ConvNd):
    """Zeros of the shape a (not transposed) convolution's output has; None where ``x`` does not fit it."""
    n = len(conv.kernel_size)
    if not isinstance(x, torch.Tensor) or x.dim() not in (n + 1, n + 2) or x.shape[-n - 1] != conv.in_channels \
            or x.dtype != conv.weight.dtype or x.device != conv.weight.device:
        return None
    if conv.padding == "same":
        spatial = x.shape[-n:]
    else:
        padding = (0,) * n if conv.padding == "valid" else conv.padding
        spatial = [(size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
                   zip(x.shape[-n:], padding, conv.dilation, conv.kernel_size, conv.stride)]
    if any(size <= 0 for size in spatial):
        return None
    return torch.zeros(*x.shape[:-n - 1], conv.out_channels, *spatial, dtype=x.dtype, device=x.device)


# -- what torch.export records -------------------------------------------------------------

register(*aten("conv1d.default", "conv2d.default", "conv3d.default", "conv_transpose1d.default",
               "conv_transpose2d.input", "conv_transpose3d.input"))(ConvFunction)
register(*aten("linear.default"))(LinearFunction)


@register(*aten("embedding.default"), F.embedding)
class EmbeddingFunction(Handler):
    """``F.embedding(ids, weight)`` and ``aten.embedding(weight, ids)``: the weight's columns are channels."""

    def flow(self, ctx: RuleContext):
        w_at, ids_at = (0, 1) if ctx.node.target is not F.embedding else (1, 0)
        w = ctx.param_arg(w_at, "weight", {1: "out"})
        if w is None:
            return ctx.barrier("an embedding table that is not a tensor of the model")
        ctx.freeze(w[0], "embedding rows are looked up by index")
        return tuple(ctx.layout(ids_at, "input")) + (w[1],)
