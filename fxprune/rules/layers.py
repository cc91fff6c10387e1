"""Layers with weights: convolutions, linear layers, normalisations, embeddings.

A layer's parameters are where channels are born: the rows of a weight (its
filters) are fresh atoms, and the layer's output channels *are* those atoms. Its input
channels are tied to the weight's input dimension and consumed there (a mask goes on
the input). Grouped convolutions split both sides into groups x channels-per-group:

    conv(groups=G): in  c = g*K + k  ->  (group g) and (weight column k)
                    out o = g*J + j  ->  (group g) and (filter j of the group)

so a whole group can go (depthwise: the input channel and its filters together), or
the same position in every group.
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn
import torch.nn.functional as F

from ..channels import empty_dim, product
from .registry import RuleContext, rule

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@rule(*_CONVS, *_CONV_TRANSPOSED)
def conv_module(ctx: RuleContext):
    m = ctx.module
    transposed = isinstance(m, _CONV_TRANSPOSED)
    roles = {1: "out", 0: "in"} if transposed else {0: "out", 1: "in"}
    x = ctx.layout(0)
    tie = {0: x[1]} if transposed else ({1: x[1]} if m.groups == 1 else None)
    w = ctx.param("weight", roles=roles, tie=tie)
    b = ctx.param("bias", roles={0: "out"}, tie={0: w[1] if transposed else w[0]})
    # keyed by identity: data_ptr() would make prepare's copy-on-write weight copy itself
    return conv_flow(ctx, w, b, m.groups, transposed, key=(id(m.weight), "groups"))


@rule(F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
def conv_function(ctx: RuleContext):
    transposed = ctx.node.target in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
    w = ctx.param_arg(1, "weight", {1: "out", 0: "in"} if transposed else {0: "out", 1: "in"})
    b = ctx.param_arg(2, "bias", {0: "out"})
    groups = ctx.arg(6, "groups", 1)
    return conv_flow(ctx, w, b, groups, transposed, key=(ctx.arg_node(1, "weight"), "groups"))


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


@rule(nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear, nn.Bilinear)
def linear_module(ctx: RuleContext):
    if isinstance(ctx.module, nn.Bilinear):
        return ctx.barrier("nn.Bilinear mixes two inputs")
    w = ctx.param("weight", roles={0: "out", 1: "in"}, tie={1: ctx.layout(0)[-1]})
    b = ctx.param("bias", roles={0: "out"}, tie={0: w[0]})
    return linear_flow(ctx, w, b)


@rule(F.linear)
def linear_function(ctx: RuleContext):
    w = ctx.param_arg(1, "weight", {0: "out", 1: "in"})
    return linear_flow(ctx, w, ctx.param_arg(2, "bias", {0: "out"}))


def linear_flow(ctx: RuleContext, w, b):
    x = ctx.layout(0, "input")
    ctx.unify(x[-1], w[1])
    if b is not None:
        ctx.unify(b[0], w[0])
    ctx.consume(0, -1, "input")
    return tuple(x[:-1]) + (w[0],)


@rule(*_BATCH_NORMS)
def batch_norm_module(ctx: RuleContext):
    x = ctx.layout(0)
    for name in ("weight", "bias", "running_mean", "running_var"):
        ctx.param(name, roles={0: "channel"}, tie={0: x[1]})
    return x


@rule(F.batch_norm, F.instance_norm)
def batch_norm_function(ctx: RuleContext):
    x = ctx.layout(0, "input")
    for i, name in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
        p = ctx.layout(i, name)
        if p is not None and len(p) == 1:
            ctx.unify(x[1], p[0])
    return x


@rule(nn.LayerNorm, F.layer_norm, nn.RMSNorm, F.rms_norm)
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


@rule(nn.GroupNorm, F.group_norm, nn.LocalResponseNorm, F.local_response_norm, F.normalize)
def channel_mixing_norm(ctx: RuleContext):
    """GroupNorm, local response norm and F.normalize mix channels: they are frozen."""
    x = ctx.layout(0, "input")
    if isinstance(ctx.module, nn.GroupNorm):
        for name in ("weight", "bias"):
            ctx.param(name, roles={0: "channel"}, tie={0: x[1]})
    if ctx.node.target is F.normalize:
        dim = ctx.arg(2, "dim", 1)
        ctx.freeze(x[dim], "F.normalize divides by the norm over these channels")
    elif ctx.node.target is F.group_norm:
        ctx.freeze(x[1], "GroupNorm normalises across these channels")
    else:
        ctx.freeze(x[1], f"{type(ctx.module).__name__ if ctx.module else 'it'} normalises across these channels")
    return x


@rule(nn.Embedding)
def embedding(ctx: RuleContext):
    w = ctx.param("weight", roles={1: "out"})
    ctx.freeze(w[0], "embedding rows are looked up by index")
    ids = ctx.layout(0)
    return tuple(ids) + (w[1],)
