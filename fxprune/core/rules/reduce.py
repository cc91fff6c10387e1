"""Ops that combine elements along some dimensions and leave the others alone.

Pooling and resampling combine the spatial dimensions; reductions and softmax combine
the dimensions they are given. The other dimensions keep their layout. Along a
combined dimension channels cannot be removed without changing the result (a mean's
denominator, a softmax's normaliser), so their atoms are frozen; a plain sum is the
exception: it is linear, so a mask on its input removes a channel exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxprune.core.atoms import empty_dim
from fxprune.core.rules.context import RuleContext
from fxprune.core.rules.registry import aten, rule

_POOL_MODULES = {
    1: (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d),
    2: (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
        nn.FractionalMaxPool2d, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d),
    3: (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d, nn.LPPool3d,
        nn.FractionalMaxPool3d),
}
_POOL_FUNCTIONS = {
    1: (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d, F.lp_pool1d),
    2: (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.lp_pool2d),
    3: (F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d, F.lp_pool3d),
}


def _spatial_rule(n_spatial: int):
    def spatial(ctx: RuleContext):
        x = ctx.layout(0, "input")
        out = ctx.out[0] if isinstance(ctx.out, tuple) else ctx.out  # max-pool may return indices
        if x is None or not isinstance(out, torch.Tensor) or out.dim() != len(x):
            return ctx.barrier("changes the rank of its input")
        k = len(x) - n_spatial
        ctx.freeze(list(x[k:]), "pooling combines these positions")
        lay = tuple(x[:k]) + tuple(empty_dim(s) for s in out.shape[k:])
        return (lay, lay) if isinstance(ctx.out, tuple) else lay

    return spatial


for _n in (1, 2, 3):
    rule(*_POOL_MODULES[_n], *_POOL_FUNCTIONS[_n])(_spatial_rule(_n))


@rule(nn.Upsample, F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear)
def resample(ctx: RuleContext):
    x = ctx.layout(0, "input")
    return _spatial_rule(len(x) - 2)(ctx)


def _dims(dim, ndim):
    if dim is None:
        return list(range(ndim))
    if isinstance(dim, int):
        return [dim % ndim]
    return [d % ndim for d in dim]


_REDUCTIONS = {
    torch.sum: True, torch.mean: False, torch.amax: False, torch.amin: False,
    torch.max: False, torch.min: False, torch.std: False, torch.var: False, torch.norm: False,
    torch.logsumexp: False, torch.prod: False, torch.nansum: True, torch.nanmean: False,
    "sum": True, "mean": False, "amax": False, "amin": False, "max": False, "min": False,
    "std": False, "var": False, "norm": False, "logsumexp": False, "prod": False,
    "nansum": True, "nanmean": False,
}


_REDUCTIONS.update({op: linear for name, linear in (
    ("sum.dim_IntList", True), ("sum.default", True), ("mean.dim", False), ("mean.default", False),
    ("amax.default", False), ("amin.default", False), ("max.dim", False), ("min.dim", False),
    ("logsumexp.default", False), ("prod.dim_int", False), ("nansum.default", True),
) for op in aten(name)})


@rule(*_REDUCTIONS)
def reduction(ctx: RuleContext):
    """A reduction over some dimensions; ``max``/``min`` with a dim also return indices."""
    x = ctx.layout(0, "input")
    if x is None:
        return ctx.empty_out()
    dim = ctx.arg(1, "dim")
    if isinstance(dim, torch.Tensor) or (ctx.op in ("max", "min")
                                         and dim is not None and not isinstance(dim, int)):
        return ctx.barrier("element-wise max or min of two tensors is not a reduction")
    keepdim = bool(ctx.arg(2, "keepdim", False)) if not isinstance(ctx.arg(2), torch.dtype) else False
    if ctx.op == "norm":
        dim = ctx.arg(2, "dim")
        keepdim = bool(ctx.arg(3, "keepdim", False))
    reduced = _dims(dim, len(x))
    linear = _REDUCTIONS[ctx.node.target]
    for d in reduced:
        if linear:
            ctx.consume(0, d, "input")
        else:
            ctx.freeze(x[d], "a reduction over these channels depends on how many there are")
    lay = tuple(empty_dim(1) if d in reduced else x[d] for d in range(len(x)) if keepdim or d not in reduced)
    out = ctx.out
    if isinstance(out, tuple):  # (values, indices)
        return (lay, lay)
    return lay


@rule(F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax, torch.cumsum,
      torch.cumprod, nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d,
      "softmax", "log_softmax", "cumsum", "cumprod")
def along_one_dim(ctx: RuleContext):
    """Softmax-like ops keep every dimension but normalise along one."""
    x = ctx.layout(0, "input")
    if ctx.module is not None:
        dim = getattr(ctx.module, "dim", -3 if isinstance(ctx.module, nn.Softmax2d) else None)
    else:
        dim = ctx.arg(1, "dim")
    if dim is None:
        return ctx.barrier("softmax without an explicit dim")
    ctx.freeze(x[dim % len(x)], "normalised along these channels")
    return x


@rule(nn.GLU, F.glu)
def glu(ctx: RuleContext):
    """GLU halves a dimension; its two halves are tied channel by channel."""
    x = ctx.layout(0, "input")
    dim = (ctx.module.dim if ctx.module is not None else ctx.arg(1, "dim", -1)) % len(x)
    half = x[dim].shape[0] // 2
    ctx.unify(x[dim][:half], x[dim][half:])
    return tuple(x[d] if d != dim else x[dim][:half] for d in range(len(x)))


# -- what torch.export records -------------------------------------------------------------

for _n in (1, 2, 3):
    rule(*aten(f"max_pool{_n}d.default", f"avg_pool{_n}d.default", f"adaptive_avg_pool{_n}d.default",
               f"adaptive_max_pool{_n}d.default", f"max_pool{_n}d_with_indices.default",
               f"_adaptive_avg_pool{_n}d.default", f"lp_pool{_n}d.default"))(_spatial_rule(_n))
rule(*aten("upsample_nearest1d.vec", "upsample_nearest2d.vec", "upsample_nearest3d.vec", "upsample_bilinear2d.vec",
           "upsample_bicubic2d.vec", "upsample_linear1d.vec", "upsample_trilinear3d.vec", "grid_sampler.default",
           ))(resample)
rule(*aten("softmax.int", "_softmax.default", "log_softmax.int", "_log_softmax.default", "cumsum.default",
           "cumprod.default"))(along_one_dim)
rule(*aten("glu.default"))(glu)
