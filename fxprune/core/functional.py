"""Plain torch functions that finalized graphs may call where a library op had to be generalised.

Swin's fused window attention (``torchvision.models.swin_transformer.shifted_window_attention``)
assumes ``num_heads * head_dim == channels``. Once heads or value channels are pruned
that no longer holds, so finalize swaps in :func:`window_attention`, which takes the
head dimensions explicitly and otherwise computes exactly the same thing.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor


def window_attention(
    input: Tensor,
    qkv_weight: Tensor,
    proj_weight: Tensor,
    relative_position_bias: Tensor,
    window_size: list,
    num_heads: int,
    shift_size: list,
    attention_dropout: float = 0.0,
    dropout: float = 0.0,
    qkv_bias: Optional[Tensor] = None,
    proj_bias: Optional[Tensor] = None,
    logit_scale: Optional[Tensor] = None,
    training: bool = True,
    *,
    qk_head_dim: int,
    v_head_dim: int,
) -> Tensor:
    """Shifted-window multi-head attention with explicit head dimensions.

    Args:
        input: ``[B, H, W, C]``.
        qkv_weight: ``[num_heads * (2 * qk_head_dim + v_head_dim), C]``, rows ordered q, k, v,
            each head by head.
        proj_weight: ``[C_out, num_heads * v_head_dim]``.
        qk_head_dim, v_head_dim: channels per head of queries/keys and of values.
        The other arguments are those of torchvision's ``shifted_window_attention``.

    Returns:
        ``[B, H, W, C_out]``.
    """
    B, H, W, C = input.shape
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_H, pad_W, _ = x.shape
    shift_size = list(shift_size)
    if window_size[0] >= pad_H:
        shift_size[0] = 0
    if window_size[1] >= pad_W:
        shift_size[1] = 0
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
    x = x.view(B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)
    qk = num_heads * qk_head_dim
    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = qkv_bias.clone()
        qkv_bias[qk: 2 * qk].zero_()
    qkv = F.linear(x, qkv_weight, qkv_bias)
    n, t = x.size(0), x.size(1)
    q = qkv[..., :qk].reshape(n, t, num_heads, qk_head_dim).transpose(1, 2)
    k = qkv[..., qk: 2 * qk].reshape(n, t, num_heads, qk_head_dim).transpose(1, 2)
    v = qkv[..., 2 * qk:].reshape(n, t, num_heads, v_head_dim).transpose(1, 2)
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logit_scale = torch.clamp(logit_scale, max=math.log(100.0)).exp()
        attn = attn * logit_scale
    else:
        q = q * qk_head_dim ** -0.5
        attn = q.matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias
    if sum(shift_size) > 0:
        attn_mask = x.new_zeros((pad_H, pad_W))
        h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
        w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
        count = 0
        for h in h_slices:
            for w in w_slices:
                attn_mask[h[0]: h[1], w[0]: w[1]] = count
                count += 1
        attn_mask = attn_mask.view(pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1])
        attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window_size[0] * window_size[1])
        attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
        attn = attn.view(n // num_windows, num_windows, num_heads, t, t)
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, t, t)
    attn = F.softmax(attn, dim=-1)
    attn = F.dropout(attn, p=attention_dropout, training=training)
    x = attn.matmul(v).transpose(1, 2).reshape(n, t, num_heads * v_head_dim)
    x = F.linear(x, proj_weight, proj_bias)
    x = F.dropout(x, p=dropout, training=training)
    c_out = x.shape[-1]
    x = x.view(B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], c_out)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, c_out)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


torch.fx.wrap("window_attention")


def attention_mask(attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor], batch: int, heads: int):
    """``nn.MultiheadAttention``'s two masks merged into one mask in SDPA's convention.

    Boolean masks mark what is *excluded* in nn.MultiheadAttention and what *takes part*
    in ``scaled_dot_product_attention``; float masks are added to the scores in both.

    Returns:
        A boolean (True: attend) or float (additive) mask broadcastable to ``[B, H, L, S]``.
    """
    masks = []
    if attn_mask is not None:
        m = attn_mask.view(batch, heads, *attn_mask.shape[-2:]) if attn_mask.dim() == 3 else attn_mask
        masks.append(m.logical_not() if m.dtype == torch.bool else m)
    if key_padding_mask is not None:
        k = key_padding_mask.view(batch, 1, 1, -1)
        masks.append(k.logical_not() if k.dtype == torch.bool else k)
    if len(masks) == 1:
        return masks[0]
    a, b = masks
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b
    if a.dtype == torch.bool:
        a, b = b, a
    return a + torch.zeros_like(b, dtype=a.dtype).masked_fill(b.logical_not(), float("-inf")) \
        if b.dtype == torch.bool else a + b


def add_attention_mask(scores: Tensor, mask: Tensor) -> Tensor:
    """Apply a mask from :func:`attention_mask` to attention scores."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask.logical_not(), float("-inf"))
    return scores + mask
