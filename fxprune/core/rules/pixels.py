"""PixelShuffle and PixelUnshuffle: channels traded for pixels, ``r * r`` at a time.

``pixel_shuffle(x, r)`` turns ``[*, C*r*r, H, W]`` into ``[*, C, H*r, W*r]``: output channel
``c`` holds input channels ``c*r*r .. c*r*r + r*r - 1``, one per pixel of each ``r x r``
block. Those ``r*r`` producer channels are tied into one channel, pruned together with
the consumer channel they make up (a producer count that is not a multiple of ``r*r``
could not be shuffled). ``pixel_unshuffle`` is the inverse: input channel ``c`` becomes
output channels ``c*r*r ..``, so its consumers lose ``r*r`` input channels per pruned
producer channel. Nothing is baked into the call but ``r``, which pruning keeps.
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn
import torch.nn.functional as F

from fxprune.core.atoms import empty_dim, has_atoms
from fxprune.core.rules.context import RuleContext
from fxprune.core.rules.registry import Handler, register


def _factor(ctx: RuleContext, name: str) -> int:
    return getattr(ctx.module, name) if ctx.module is not None else ctx.arg(1, name)


def _spatial(ctx: RuleContext, x, out_shape) -> tuple:
    """The last two dimensions of the output: no atoms (a spatial dimension holding any is frozen)."""
    ctx.freeze([d for d in x[-2:] if has_atoms(d)], "pixel (un)shuffle moves these indices across channels")
    return empty_dim(out_shape[-2]), empty_dim(out_shape[-1])


@register(nn.PixelShuffle, F.pixel_shuffle)
class PixelShuffle(Handler):
    def flow(self, ctx: RuleContext):
        x = ctx.layout(0, "input")
        r2 = _factor(ctx, "upscale_factor") ** 2
        channels = x[-3].reshape(-1, r2, x[-3].shape[1])  # [C, r*r, k]
        for j in range(1, r2):
            ctx.unify(channels[:, 0], channels[:, j], "pixel_shuffle moves these channels into one")
        return tuple(x[:-3]) + (np.ascontiguousarray(channels[:, 0]),) + _spatial(ctx, x, ctx.out.shape)


@register(nn.PixelUnshuffle, F.pixel_unshuffle)
class PixelUnshuffle(Handler):
    def flow(self, ctx: RuleContext):
        x = ctx.layout(0, "input")
        r2 = _factor(ctx, "downscale_factor") ** 2
        return tuple(x[:-3]) + (np.repeat(x[-3], r2, axis=0),) + _spatial(ctx, x, ctx.out.shape)
