"""Products of activations: matmul, einsum, scaled dot-product attention, Swin's window attention.

A contraction consumes the contracted channels of both operands, so they are tied and a
mask goes on the first operand only (masking both would square it). Batch dimensions
(attention heads among them) are tied across operands and kept; the free dimensions
pass to the output:

    q [B, H, L, D] @ k^T [B, H, D, S] -> [B, H, L, S]   D of q and k: one channel, consumed
                                                          H of q, k and the scores: one head
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models import swin_transformer

from fxprune.core import functional
from fxprune.core.atoms import empty_dim, product
from fxprune.core.rules.context import RuleContext
from fxprune.core.rules.elementwise import broadcast_layout
from fxprune.core.rules.registry import Handler, aten, register


class _Shape:
    """A stand-in with only ``shape`` and ``dim()``, for broadcasting batch dimensions."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def dim(self):
        return len(self.shape)


@register(operator.matmul, torch.matmul, torch.bmm, torch.mm, "matmul", "bmm", "mm", "__matmul__",
          *aten("matmul.default", "bmm.default", "mm.default"))
class MatMul(Handler):
    """Matrix products of activations (and weights read by the graph)."""

    heavy = True

    def flow(self, ctx: RuleContext):
        return matmul(ctx)


def matmul(ctx: RuleContext):
    a, b = ctx.layout(0), ctx.layout(1)
    va, vb = ctx.arg(0), ctx.arg(1)
    if a is None or b is None:
        return ctx.barrier("matmul with a non-tensor operand")
    return matmul_layout(ctx, a, b, va.shape, vb.shape, ctx.out.shape)


def matmul_layout(ctx: RuleContext, a, b, sa, sb, out_shape, first: int = 0):
    """The layout of ``a @ b``, where ``a`` is argument ``first`` of the node and ``b`` the next one.

    A weight of the model read by the graph (``x @ W``, GPT-2's ``addmm(bias, x, W)``) gets
    the roles of a linear layer's: its rows read the channels, its columns make new ones.
    """
    ctx.param_arg(first + 1, None, {len(sb) - 2: "in", len(sb) - 1: "out"} if len(sb) > 1 else {0: "in"})
    if len(sa) == 1 and len(sb) == 1:
        ctx.unify(a[0], b[0])
        ctx.consume(first, 0)
        return ()
    if len(sa) == 1:
        ctx.unify(a[0], b[-2])
        ctx.consume(first, 0)
        return tuple(b[:-2]) + (b[-1],)
    ctx.unify(a[-1], b[-2] if len(sb) > 1 else b[0])
    ctx.consume(first, -1)
    if len(sb) == 1:
        return tuple(a[:-1])
    batch = broadcast_layout(ctx, [(_Shape(sa[:-2]), a[:-2]), (_Shape(sb[:-2]), b[:-2])], tuple(out_shape[:-2]))
    return tuple(batch) + (a[-2], b[-1])


@register(torch.addmm, torch.baddbmm, torch.addbmm, "addmm", "baddbmm", *aten("addmm.default", "baddbmm.default"))
class AddMatMul(Handler):
    """``bias + a @ b`` in one call."""

    heavy = True

    def flow(self, ctx: RuleContext):
        return add_matmul(ctx)


def add_matmul(ctx: RuleContext):
    bias, m1, m2 = ctx.layout(0), ctx.layout(1), ctx.layout(2)
    v1, v2 = ctx.arg(1), ctx.arg(2)
    if ctx.op == "addbmm":
        return ctx.barrier("addbmm sums over the batch")
    prod = matmul_layout(ctx, m1, m2, v1.shape, v2.shape, ctx.out.shape, first=1)
    ctx.param_arg(0, None, {len(bias) - 1: "out"} if bias else {})
    return broadcast_layout(ctx, [(ctx.out, prod), (ctx.arg(0), bias)], ctx.out.shape)


@register(torch.einsum, torch.functional.einsum, *aten("einsum.default"))
class Einsum(Handler):
    """Products written as einsum equations."""

    heavy = True

    def flow(self, ctx: RuleContext):
        return einsum(ctx)


def einsum(ctx: RuleContext):
    """Letters kept in the output are tied across operands; the others are contracted."""
    equation = ctx.arg(0).replace(" ", "")
    operands = ctx.tensor_args()
    if "->" not in equation or "." in equation:
        return ctx.barrier("einsum without an explicit output or with an ellipsis")
    inputs, output = equation.split("->")
    letters_in = inputs.split(",")
    if len(letters_in) != len(operands):
        return ctx.barrier("einsum operands do not match the equation")
    by_letter: dict[str, list] = {}
    for (_, node, value, lay), letters in zip(operands, letters_in):
        if len(set(letters)) != len(letters):
            return ctx.barrier("einsum takes a diagonal")
        for d, letter in enumerate(letters):
            by_letter.setdefault(letter, []).append((node, d, lay[d], value.shape[d]))
    out_dims = []
    for letter in output:
        out_dims.append(_tie_letter(ctx, by_letter.get(letter, []), ctx.out.shape[len(out_dims)]))
    for letter, uses in by_letter.items():
        if letter in output:
            continue
        tied = _tie_letter(ctx, uses, max(u[3] for u in uses))
        if tied is not None:
            node, d = uses[0][0], uses[0][1]
            if isinstance(node, torch.fx.Node):
                ctx.flow.add_site(node, d, ctx.node)
    return tuple(out_dims)


def _tie_letter(ctx, uses, size):
    full = [lay for _, _, lay, s in uses if s == size]
    for _, _, lay, s in uses:
        if s != size:
            ctx.freeze(lay, "broadcast in an einsum")
    if not full:
        return empty_dim(size)
    for other in full[1:]:
        ctx.unify(full[0], other)
    return full[0]


@register(F.scaled_dot_product_attention, *aten("scaled_dot_product_attention.default"))
class ScaledDotProductAttention(Handler):
    """``F.scaled_dot_product_attention``."""

    heavy = True

    def flow(self, ctx: RuleContext):
        return scaled_dot_product_attention(ctx)

    def resize_node(self, gm, node, sizes) -> None:
        """A query whose head-dims lost channels keeps the scale it had: ``1 / sqrt(old head-dim)``."""
        q = node.args[0]
        old, new = sizes.old(q.name), sizes.new(q.name)
        if old[-1] == new[-1]:
            return
        if len(node.args) > _SCALE:
            if node.args[_SCALE] is None:
                node.args = node.args[:_SCALE] + (1.0 / math.sqrt(old[-1]),) + node.args[_SCALE + 1:]
        elif node.kwargs.get("scale") is None:
            node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(old[-1])}

_SCALE = 6  # the position of ``scale`` in (query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def scaled_dot_product_attention(ctx: RuleContext):
    """q and k share their last dimension (consumed on q); v's last dimension passes through."""
    q, k, v = ctx.layout(0, "query"), ctx.layout(1, "key"), ctx.layout(2, "value")
    vq, vk, vv = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    ctx.unify(q[-1], k[-1])
    ctx.consume(0, -1, "query")
    ctx.unify(k[-2], v[-2])
    ctx.freeze([k[-2]], "softmax runs over the keys")
    batch = broadcast_layout(
        ctx, [(_Shape(vq.shape[:-2]), q[:-2]), (_Shape(vk.shape[:-2]), k[:-2]), (_Shape(vv.shape[:-2]), v[:-2])],
        tuple(ctx.out.shape[:-2]))
    mask = ctx.layout(3, "attn_mask")
    if mask is not None:
        vm = ctx.arg(3, "attn_mask")
        ctx.freeze(list(mask), "an attention mask is not pruned")
        if vm.dim() >= 2 and vm.shape[-2] == q[-2].shape[0]:
            ctx.unify(mask[-2], q[-2])
    return tuple(batch) + (q[-2], v[-1])


@register(swin_transformer.shifted_window_attention)
class SwinWindowAttention(Handler):
    """torchvision's fused shifted-window attention; swapped for one with explicit head dims once pruned."""

    def flow(self, ctx: RuleContext):
        return swin_window_attention(ctx)

    def resize_node(self, gm, node, sizes) -> None:
        w_qkv, w_proj = node.args[1], node.args[2]
        old_proj, new_proj = sizes.old(w_proj.name), sizes.new(w_proj.name)
        if old_proj == new_proj:
            return
        num_heads = node.args[5] if len(node.args) > 5 else node.kwargs["num_heads"]
        head_dim = sizes.old(w_qkv.name)[1] // num_heads
        keep_cols = sizes.keep(w_proj.name, 1)
        heads = sorted({int(c) // head_dim for c in keep_cols})
        v_dim = keep_cols.size // len(heads)
        args = list(node.args)
        if len(args) > 5:
            args[5] = len(heads)
        else:
            node.kwargs = {**node.kwargs, "num_heads": len(heads)}
        node.target = functional.window_attention
        node.args = tuple(args)
        node.kwargs = {**node.kwargs, "qk_head_dim": head_dim, "v_head_dim": v_dim}


def swin_window_attention(ctx: RuleContext):
    """Swin's fused window attention: heads and value head-dims can go.

    The query/key head-dims stay (Swin V2 normalises over them). Masks go on the
    columns of the output projection, which see every head and value channel.
    """
    x = ctx.layout(0, "input")
    w_qkv = ctx.param_arg(1, "qkv_weight", {0: "out", 1: "in"})
    w_proj = ctx.param_arg(2, "proj_weight", {0: "out", 1: "in"})
    num_heads = ctx.arg(5, "num_heads")
    channels = x[-1].shape[0]
    head_dim = channels // num_heads
    ctx.unify(x[-1], w_qkv[1])
    ctx.consume(0, -1, "input")
    key = (ctx.arg_node(1, "qkv_weight"), "heads")
    heads, dqk, dv = ctx.memo(key, lambda: (ctx.new_space(num_heads, "heads"), ctx.new_space(head_dim, "qk-dims"),
                                            ctx.new_space(head_dim, "v-dims")))
    ctx.freeze(dqk, "Swin's query/key head-dims set the attention scale")
    per_part = product([np.repeat(heads, head_dim, axis=0), np.tile(dqk, (num_heads, 1))])
    v_rows = product([np.repeat(heads, head_dim, axis=0), np.tile(dv, (num_heads, 1))])
    rows = np.concatenate([_pad(per_part), _pad(per_part), _pad(v_rows)], axis=0)
    if ctx.atoms.can_refine(w_qkv[0]):
        ctx.atoms.refine(w_qkv[0], [rows])
    else:
        ctx.unify(w_qkv[0], rows)
    ctx.unify(w_proj[1], v_rows)
    ctx.consume(2, 1, "proj_weight")
    for index, name, dim_self in ((9, "qkv_bias", w_qkv[0]), (10, "proj_bias", w_proj[0])):
        bias = ctx.param_arg(index, name, {0: "out"})
        if bias is not None:
            ctx.unify(bias[0], dim_self)
    bias = ctx.layout(3, "relative_position_bias")
    if bias is not None:
        ctx.unify(bias[1], heads)
        ctx.freeze([bias[0], bias[2], bias[3]], "relative positions are not pruned")
    scale = ctx.layout(11, "logit_scale")
    if scale is not None:
        ctx.unify(scale[0], heads)
    return tuple(x[:-1]) + (w_proj[0],)


def _pad(dim):
    return dim if dim.shape[1] == 2 else np.concatenate([dim, np.full((dim.shape[0], 2 - dim.shape[1]), -1)], axis=1)
