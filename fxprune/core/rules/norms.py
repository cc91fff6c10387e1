"""Normalisations: batch and instance norms, layer and RMS norms, group norms.

A batch norm normalises each channel on its own: its per-channel parameters and
statistics are tied to the channel and removed with it. A layer norm normalises over
the channels, so removing one changes the others: they are frozen (unless the
configuration allows approximate pruning). Group norms and their kind mix channels
across groups: frozen.

A batch norm in front of which a mask's common scale ``s`` is divided out absorbs it
exactly in its statistics (see :mod:`fxprune.core.finalize.fold`).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from fxprune.core.rules.context import RuleContext
from fxprune.core.rules.layers import scale_weight_and_bias
from fxprune.core.rules.registry import Handler, aten, register, rule
from fxprune.core.tensors import rescale

_BATCH_NORM_DIMS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}


class PerChannelNorm(Handler):
    """Per-channel parameters and statistics on dimension 1, tied to the channel."""

    def flow(self, ctx: RuleContext):
        x = ctx.layout(0)
        for name in ("weight", "bias", "running_mean", "running_var"):
            ctx.param(name, roles={0: "channel"}, tie={0: x[1]})
        return x

    def resize_module(self, m, in_channels):
        t = m.weight if m.weight is not None else m.running_mean
        m.num_features = t.shape[0]


register(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)(PerChannelNorm)


@register(nn.SyncBatchNorm)
class SyncBatchNorm(PerChannelNorm):
    fresh_output = True


@register(*_BATCH_NORM_DIMS)
class BatchNorm(SyncBatchNorm):
    """``nn.BatchNorm1d/2d/3d``: cheap, shape-keeping, and able to absorb scales."""

    absorbs_scale = True

    def keeps_shape_of(self, module, x) -> bool:
        return x.dim() in _BATCH_NORM_DIMS[type(module)] and x.shape[1] == module.num_features

    def scale_output(self, module, value):
        return scale_weight_and_bias(module, value)

    def absorb_input_scale(self, norm, scale):
        if norm.running_mean is not None:
            rescale(norm, "running_mean", 1.0 / scale)
            rescale(norm, "running_var", 1.0 / scale**2)
        norm.eps = norm.eps / scale**2


@rule(F.batch_norm, F.instance_norm)
def batch_norm_function(ctx: RuleContext):
    x = ctx.layout(0, "input")
    for i, name in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
        p = ctx.layout(i, name)
        if p is not None and len(p) == 1:
            ctx.unify(x[1], p[0])
    return x


@register(nn.LayerNorm, nn.RMSNorm)
class LayerNorm(Handler):
    """``nn.LayerNorm`` and ``nn.RMSNorm``."""

    fresh_output = True

    def flow(self, ctx: RuleContext):
        return layer_norm(ctx)

    def resize_module(self, m, in_channels):
        if m.weight is not None:
            m.normalized_shape = tuple(m.weight.shape)

    def scale_output(self, module, value):
        return isinstance(module, nn.LayerNorm) and scale_weight_and_bias(module, value)


@rule(F.layer_norm, F.rms_norm)
def layer_norm(ctx: RuleContext):
    """Normalises over the last dimensions: removing a channel changes the others.

    Those channels are frozen, unless the configuration allows approximate pruning of
    normalisations; then they are tied to the affine parameters like a BatchNorm.
    """
    x = ctx.layout(0, "input")
    if ctx.module is not None:
        shape = ctx.module.normalized_shape
        tie = {i: d for i, d in enumerate(x[-len(shape):])}
        params = [ctx.param("weight", roles={i: "channel" for i in tie}, tie=tie),
                  ctx.param("bias", roles={i: "channel" for i in tie}, tie=tie)]
    else:
        shape = ctx.arg(1, "normalized_shape")
        params = [ctx.layout(2, "weight"), ctx.layout(3, "bias")]
    n = len(shape) if isinstance(shape, (tuple, list)) else 1
    norm_dims = x[-n:]
    for p in params:
        if p is not None:
            for a, d in zip(p, norm_dims):
                ctx.unify(a, d)
    if not ctx.flow.config.approximate_norms:
        ctx.freeze(list(norm_dims), "a LayerNorm normalises over these channels")
    else:
        ctx.flow.note_approximate(ctx.node, norm_dims)
    return x


@register(nn.GroupNorm)
class GroupNorm(Handler):
    """``nn.GroupNorm``: frozen channels, but a gate still folds into its affine."""

    fresh_output = True

    def flow(self, ctx: RuleContext):
        return channel_mixing_norm(ctx)

    def resize_module(self, m, in_channels):
        m.num_channels = m.weight.shape[0]

    def scale_output(self, module, value):
        return scale_weight_and_bias(module, value)


@rule(F.group_norm, nn.LocalResponseNorm, F.local_response_norm, F.normalize)
def channel_mixing_norm(ctx: RuleContext):
    """GroupNorm, local response norm and F.normalize mix channels: they are frozen."""
    x = ctx.layout(0, "input")
    if isinstance(ctx.module, nn.GroupNorm):
        for name in ("weight", "bias"):
            ctx.param(name, roles={0: "channel"}, tie={0: x[1]})
    if ctx.node.target is F.normalize:
        dim = ctx.arg(2, "dim", 1)
        ctx.freeze(x[dim], "F.normalize divides by the norm over these channels")
    elif ctx.op == "group_norm":
        ctx.freeze(x[1], "GroupNorm normalises across these channels")
    else:
        ctx.freeze(x[1], f"{type(ctx.module).__name__ if ctx.module else 'it'} normalises across these channels")
    return x


# -- what torch.export records -------------------------------------------------------------

@rule(*aten("batch_norm.default", "instance_norm.default"))
def aten_batch_norm(ctx: RuleContext):
    """``aten.batch_norm(input, weight, bias, running_mean, running_var, ...)`` (and instance norm):
    every per-channel tensor is tied to dimension 1."""
    x = ctx.layout(0, "input")
    for i in range(1, 5):
        p = ctx.param_arg(i, None, {0: "channel"})
        if p is not None and len(p) == 1:
            ctx.unify(x[1], p[0])
    return x


rule(*aten("layer_norm.default", "rms_norm.default"))(layer_norm)
rule(*aten("group_norm.default"))(channel_mixing_norm)
