"""Element-wise ops: activations, dropout, arithmetic with broadcasting.

Two rules cover them all. ``unary`` ops keep their input's layout. ``broadcast`` ops tie
the channels of all tensor operands index by index along aligned dimensions (numpy's
right-aligned broadcasting); an operand broadcast from size one along a dimension
cannot lose that index, so its atom there is frozen.

    x [N, C, H, W] * s [N, C, 1, 1]   ->  x[c] and s[c] are one channel (squeeze-excitation)
    x [N, C, H, W] + y [N, C, H, W]   ->  x[c] and y[c] are one channel (residual add)
"""

from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from fxprune.core import functional
from fxprune.core.atoms import empty_dim, has_atoms
from fxprune.core.rules.context import RuleContext
from fxprune.core.rules.registry import Handler, aten, register, rule

_UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, torchvision.ops.StochasticDepth,
)
_UNARY_FUNCTIONS = (
    F.relu, F.relu_, F.relu6, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.leaky_relu, F.sigmoid, F.tanh, F.softplus, F.softsign,
    F.logsigmoid, F.threshold, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, F.feature_alpha_dropout, F.hardshrink, F.softshrink, F.tanhshrink,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.sqrt,
    torch.rsqrt, torch.abs, torch.neg, torch.sign, torch.erf, torch.square, torch.reciprocal,
    torch.sin, torch.cos, torch.floor, torch.ceil, torch.round, torch.clone, torch.detach,
    torch.dropout, torch.nan_to_num, operator.neg, operator.pos, operator.abs,
    torchvision.ops.stochastic_depth,
)
_UNARY_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "log", "sqrt", "rsqrt",
    "abs", "neg", "sign", "erf", "square", "reciprocal", "floor", "ceil", "round", "clone",
    "detach", "contiguous", "float", "double", "half", "bfloat16", "to", "type", "type_as",
    "cpu", "cuda", "requires_grad_", "hardtanh_", "nan_to_num", "sin", "cos",
)
_BROADCAST_FUNCTIONS = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, operator.pow, torch.add, torch.sub, torch.subtract,
    torch.mul, torch.multiply, torch.div, torch.divide, torch.true_divide, torch.where,
    torch.maximum, torch.minimum, torch.clamp, torch.clip, torch.pow, torch.lerp,
    torch.addcmul, torch.addcdiv, torch.masked_fill, functional.add_attention_mask,
)
_BROADCAST_METHODS = (
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "clamp", "clamp_",
    "clip", "masked_fill", "masked_fill_", "maximum", "minimum", "lerp", "addcmul", "where",
)


@register(*_UNARY_MODULES, *_UNARY_FUNCTIONS, *_UNARY_METHODS)
class Unary(Handler):
    """One data input; channels pass through untouched."""

    def flow(self, ctx: RuleContext):
        lay = ctx.layout(0, "input")
        if lay is None or not isinstance(ctx.out, torch.Tensor):
            return ctx.empty_out()
        if tuple(ctx.out.shape) != tuple(d.shape[0] for d in lay):
            return ctx.barrier("changes the shape of its input")
        return lay


@register(nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
          nn.Mish)
class CheapUnary(Unary):
    """A cheap activation module: on a stand-in, its output is a stand-in."""

    def keeps_shape_of(self, module, x) -> bool:
        return True


@register(nn.ReLU)
class ReLU(CheapUnary):
    """``relu(s * x) == s * relu(x)`` for ``s > 0``: a gate passes through."""

    def passes_scale(self, value: float) -> bool:
        return value > 0


@register(torchvision.ops.StochasticDepth, F.dropout, torchvision.ops.stochastic_depth, "contiguous")
class ScaleFree(Unary):
    """Ops that commute with scaling: a gate passes through."""

    def passes_scale(self, value: float) -> bool:
        return True


@register(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
class CheapScaleFree(CheapUnary):
    """Identity and dropout modules: cheap, and a gate passes through."""

    def passes_scale(self, value: float) -> bool:
        return True


@rule(*_BROADCAST_FUNCTIONS, *_BROADCAST_METHODS)
def broadcast(ctx: RuleContext):
    """Every tensor operand is tied to the output along right-aligned dimensions."""
    if not isinstance(ctx.out, torch.Tensor):
        return ctx.empty_out()
    return broadcast_layout(ctx, [(v, lay) for _, _, v, lay in ctx.tensor_args()], ctx.out.shape)


def broadcast_layout(ctx: RuleContext, operands, out_shape):
    """The output layout of a broadcasting op over ``(value, layout)`` operands."""
    nd = len(out_shape)
    dims = []
    for b in range(nd):
        contributions = []
        for value, lay in operands:
            a = b - (nd - value.dim())
            if a < 0:
                continue
            if value.shape[a] == out_shape[b]:
                contributions.append(lay[a])
            elif has_atoms(lay[a]):
                ctx.freeze(lay[a], "broadcast from size one")
        if not contributions:
            dims.append(empty_dim(out_shape[b]))
            continue
        first = max(contributions, key=lambda d: d.shape[1])
        for other in contributions:
            ctx.unify(first, other)
        dims.append(first)
    return tuple(dims)


@rule(nn.PReLU)
def prelu(ctx: RuleContext):
    """PReLU with one slope per channel ties the slopes to channel dimension 1."""
    lay = ctx.layout(0)
    if ctx.module.weight.numel() > 1:
        ctx.param("weight", roles={0: "channel"}, tie={0: lay[1]})
    return lay


# -- what torch.export records -------------------------------------------------------------

register(*aten(
    "silu.default", "silu_.default", "gelu.default", "gelu_.default", "sigmoid.default", "sigmoid_.default",
    "tanh.default", "tanh_.default", "hardswish.default", "hardswish_.default", "hardsigmoid.default",
    "hardsigmoid_.default", "hardtanh.default", "hardtanh_.default", "leaky_relu.default", "leaky_relu_.default",
    "elu.default", "elu_.default", "mish.default", "mish_.default", "softplus.default", "neg.default",
    "rsqrt.default", "sqrt.default", "exp.default", "log.default", "sin.default", "cos.default", "abs.default",
    "erf.default", "sign.default", "reciprocal.default", "square.default", "floor.default", "ceil.default",
    "round.default", "pow.Tensor_Scalar", "clamp.default", "clamp_min.default", "clamp_max.default",
    "nan_to_num.default", "to.dtype", "to.dtype_layout", "to.device", "to.other", "_to_copy.default",
    "type_as.default", "zeros_like.default", "ones_like.default", "empty_like.default", "full_like.default",
    "rand_like.default", "randn_like.default", "relu6.default", "log_sigmoid.default",
))(Unary)
register(*aten("relu.default", "relu_.default"))(ReLU)
register(*aten("dropout.default", "feature_dropout.default", "feature_dropout_.default", "alpha_dropout.default",
               "feature_alpha_dropout.default", "clone.default", "contiguous.default", "alias.default",
               "detach.default", "detach_.default", "lift_fresh_copy.default"))(ScaleFree)
rule(*aten(
    "add.Tensor", "add_.Tensor", "add.Scalar", "sub.Tensor", "sub_.Tensor", "sub.Scalar", "rsub.Scalar",
    "rsub.Tensor", "mul.Tensor", "mul_.Tensor", "mul.Scalar", "div.Tensor", "div_.Tensor", "div.Scalar",
    "div.Tensor_mode", "where.self", "maximum.default", "minimum.default", "masked_fill.Scalar",
    "masked_fill.Tensor", "masked_fill_.Scalar", "clamp.Tensor", "lerp.Scalar", "addcmul.default",
    "addcdiv.default", "pow.Tensor_Tensor", "eq.Scalar", "eq.Tensor", "ne.Scalar", "ne.Tensor", "lt.Scalar",
    "lt.Tensor", "le.Scalar", "le.Tensor", "gt.Scalar", "gt.Tensor", "ge.Scalar", "ge.Tensor",
    "logical_and.default", "logical_or.default", "logical_not.default", "__and__.Tensor", "__or__.Tensor",
    "bitwise_and.Tensor", "bitwise_or.Tensor", "bitwise_not.default",
))(broadcast)


@register(*aten("arange.default", "arange.start", "arange.start_step", "linspace.default", "full.default",
                "zeros.default", "ones.default", "empty.memory_format", "new_zeros.default", "new_ones.default",
                "new_full.default", "new_empty.default", "scalar_tensor.default"))
class Creation(Handler):
    """A new tensor of given sizes: it reads only its input's dtype and device, never its channels."""

    def flow(self, ctx: RuleContext):
        return ctx.empty_out()
