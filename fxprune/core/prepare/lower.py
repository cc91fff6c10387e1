"""Lowering opaque modules into plain ops that fxprune's rules understand.

``nn.MultiheadAttention`` packs its projections, its head split and its attention into
one call. It is rewritten into the ops it computes, so that heads and head-dims become
ordinary channels (a linear layer's outputs split by a reshape) and the embedding is tied
to the stream around it. The parameters stay where they were, under the same names, in
a plain container module; the lowered graph reads them with ``get_attr``:

    mha(q, k, v)  ->  linear(q, Wq) ── reshape(B, L, H, D) ── transpose ─┐
                      linear(k, Wk) ── ...                               sdpa ── reshape ── linear(., Wo)
                      linear(v, Wv) ── ...                              ─┘
"""

from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from fxprune.core import functional


def lower_modules(gm: torch.fx.GraphModule) -> None:
    """Replace every supported ``nn.MultiheadAttention`` call by the ops it computes.

    Edits ``gm.graph``; the caller recompiles ``gm`` when its edits are done.
    """
    lowered = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if type(module) is nn.MultiheadAttention and _supported(module, node):
            _lower_attention(gm, node, module)
            lowered[node.target] = module
    for path, module in lowered.items():
        gm.add_submodule(path, _holder(module))


_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
         "is_causal")


def _call_args(node: torch.fx.Node) -> dict:
    args = dict(zip(_ARGS, node.args))
    args.update(node.kwargs)
    defaults = {"key_padding_mask": None, "need_weights": True, "attn_mask": None, "average_attn_weights": True,
                "is_causal": False}
    return {**defaults, **args}


def _supported(m: nn.MultiheadAttention, node: torch.fx.Node) -> bool:
    args = _call_args(node)
    return (m.bias_k is None and not m.add_zero_attn and not args["is_causal"]
            and isinstance(args["need_weights"], bool)
            and all(_index_of(u) is not None for u in node.users))


def _lower_attention(gm: torch.fx.GraphModule, node: torch.fx.Node, m: nn.MultiheadAttention) -> None:
    args = _call_args(node)
    g = gm.graph
    p = node.target
    heads, head_dim = m.num_heads, m.head_dim
    weights_used = args["need_weights"] and any(_index_of(u) == 1 and u.users for u in node.users)
    with g.inserting_before(node):
        q_in, k_in, v_in = (_batch_first(g, args[k], m.batch_first) for k in ("query", "key", "value"))
        if m._qkv_same_embed_dim:
            w = g.call_method("chunk", (g.get_attr(f"{p}.in_proj_weight"), 3))
            weights = [g.call_function(operator.getitem, (w, i)) for i in range(3)]
        else:
            weights = [g.get_attr(f"{p}.{n}_proj_weight") for n in "qkv"]
        biases = [None] * 3
        if m.in_proj_bias is not None:
            b = g.call_method("chunk", (g.get_attr(f"{p}.in_proj_bias"), 3))
            biases = [g.call_function(operator.getitem, (b, i)) for i in range(3)]
        batch = g.call_method("size", (q_in, 0))
        lengths = [g.call_method("size", (t, 1)) for t in (q_in, k_in, v_in)]
        q, k, v = (_heads(g, g.call_function(F.linear, (t, w, b)), batch, n, heads, head_dim)
                   for t, w, b, n in zip((q_in, k_in, v_in), weights, biases, lengths))
        mask = None
        if args["attn_mask"] is not None or args["key_padding_mask"] is not None:
            masks = (args["attn_mask"], args["key_padding_mask"], batch, heads)
            mask = g.call_function(functional.attention_mask, masks)
        scale = head_dim ** -0.5
        attn_weights = None
        if m.dropout == 0.0 and not weights_used:
            out = g.call_function(F.scaled_dot_product_attention, (q, k, v),
                                  {"attn_mask": mask, "dropout_p": 0.0, "scale": scale})
        else:
            scores = g.call_function(torch.matmul, (q, g.call_method("transpose", (k, -2, -1))))
            scores = g.call_function(operator.mul, (scores, scale))
            if mask is not None:
                scores = g.call_function(functional.add_attention_mask, (scores, mask))
            attn = g.call_function(F.softmax, (scores,), {"dim": -1})
            drop_path = f"{p.replace('.', '_')}_attention_dropout"
            gm.add_submodule(drop_path, nn.Dropout(m.dropout))
            out = g.call_function(torch.matmul, (g.call_module(drop_path, (attn,)), v))
            if weights_used:
                attn_weights = g.call_method("mean", (attn, 1)) if args["average_attn_weights"] else attn
        out = g.call_method("transpose", (out, 1, 2))
        out = g.call_method("reshape", (out, batch, lengths[0], heads * head_dim))
        out = g.call_function(F.linear, (out, g.get_attr(f"{p}.out_proj.weight"),
                                          g.get_attr(f"{p}.out_proj.bias") if m.out_proj.bias is not None else None))
        if not m.batch_first:
            out = g.call_method("transpose", (out, 0, 1))
    for user in list(node.users):
        index = _index_of(user)
        if index == 0:
            user.replace_all_uses_with(out)
            g.erase_node(user)
        elif index == 1:
            if attn_weights is not None:
                user.replace_all_uses_with(attn_weights)
            g.erase_node(user) if not user.users else None
    if not node.users:
        g.erase_node(node)


def _index_of(user: torch.fx.Node):
    if user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int):
        return user.args[1]
    return None


def _batch_first(g, t, batch_first: bool):
    return t if batch_first else g.call_method("transpose", (t, 0, 1))


def _heads(g, t, batch, length, heads: int, head_dim: int):
    t = g.call_method("reshape", (t, batch, length, heads, head_dim))
    return g.call_method("transpose", (t, 1, 2))


def _holder(m: nn.MultiheadAttention) -> nn.Module:
    """A plain module holding an attention module's tensors under the same names."""
    holder = nn.Module()
    for name, p in m.named_parameters(recurse=False):
        holder.register_parameter(name, p)
    out = nn.Module()
    out.weight = m.out_proj.weight
    if m.out_proj.bias is not None:
        out.bias = m.out_proj.bias
    holder.out_proj = out
    return holder
