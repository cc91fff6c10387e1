"""Head counts and the model's config follow the pruned layers (Hugging Face conventions).

A Hugging Face model keeps its sizes three times: in its layers (a projection's
``out_features``), in attributes of its attention and MLP modules (``num_heads``,
``intermediate_size``; some read by ``forward``, some only by other methods), and in one
config object shared by all layers, which ``type(model)(config)`` and ``from_pretrained``
build from. After finalize's copy in the user's classes has passed its check, the sizes are
read off the layers by these conventions (duck-typed; transformers is not imported):

    attention   q_proj + head_dim (Llama, Mistral, ViT)   heads = q_proj.out_features / head_dim,
                                                          key-value heads = k_proj.out_features / head_dim
                query + attention_head_size (BERT)        heads = query.out_features / attention_head_size
                c_attn + head_dim (GPT-2)                 heads = c_attn.nf / 3 / head_dim
    MLP         up_proj, fc1, c_fc, or dense beside intermediate_act_fn: the hidden width

The modules' own count attributes take these values, and the model is checked again; if they
change what it computes, they are all put back. A config entry (``num_attention_heads``,
``num_key_value_heads``, ``head_dim``, ``intermediate_size``, GPT-2's ``n_inner``, ``hidden_size``)
takes its value where every layer agrees and where the class's constructor, built from the
config on the meta device (no memory), then makes more of the model's parameter shapes right
than before: GPT-2's constructor derives its head width from ``n_embd / n_head``, so fewer heads
cannot be said in its config, and ``n_head`` stays. Entries that stay as they were are listed
in ``model.fxprune_config_differs`` (entry -> the values per layer); where any stays,
``type(model)(model.config)`` does not build this model, and :func:`fxprune.export.load_widths`
rebuilds it instead.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
import torch.nn as nn

_COUNTS = {"heads": ("num_heads", "num_attention_heads"), "kv_heads": ("num_key_value_heads",),
           "groups": ("num_key_value_groups",), "all_head_size": ("all_head_size",),
           "intermediate": ("intermediate_size",)}
_CONFIG = {"heads": "num_attention_heads", "kv_heads": "num_key_value_heads", "head_dim": "head_dim"}


def follow_config(model: nn.Module, check: Callable[[nn.Module], object]) -> None:
    """Set the count attributes and config entries of ``model`` (a checked copy in the user's classes)
    from its layers, then ``check(model)`` again; on failure every value is restored."""
    found = [(m, sizes) for m in model.modules() if (sizes := _sizes(m))]
    if not found:
        return
    config = getattr(model, "config", None)
    before = [(m, dict(vars(m))) for m, _ in found]
    for module, sizes in found:
        for kind, value in sizes.items():
            for attr in _COUNTS.get(kind, ()):
                if type(getattr(module, attr, None)) is int:
                    setattr(module, attr, value)
    try:
        check(model)
    except Exception:  # the values are only a convenience: the model as checked stands
        for module, attrs in before:
            vars(module).update(attrs)
        return
    if config is not None:
        differs = _follow(config, _entries(found, model), model)
        if differs:
            model.fxprune_config_differs = differs


def _follow(config, entries: dict, model: nn.Module) -> dict:
    """Each entry that all layers agree on, and that brings the config's model closer to ``model``,
    goes into ``config``; returns the entries that stay as they were, with their values per layer."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = _wrong_shapes(type(model), config, shapes)
    differs = {}
    for key, values in entries.items():
        if not hasattr(config, key) or getattr(config, key) == values[0] and len(set(values)) == 1:
            continue
        if len(set(values)) > 1 or wrong is None:
            differs[key] = values
            continue
        old = getattr(config, key)
        setattr(config, key, values[0])
        now = _wrong_shapes(type(model), config, shapes)
        if now is not None and now < wrong:
            wrong = now
        else:
            setattr(config, key, old)
            differs[key] = values
    return differs


def _wrong_shapes(cls, config, shapes: dict) -> Optional[frozenset]:
    """The parameters whose shape ``cls(config)`` builds differently from ``shapes`` (None: it cannot be built)."""
    try:
        with torch.device("meta"):
            built = cls(copy.deepcopy(config))
    except Exception:  # not a class built from its config alone
        return None
    made = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    return frozenset(k for k in set(made) | set(shapes) if made.get(k) != shapes.get(k))


def _entries(found: list, model: nn.Module) -> dict:
    """Config entry -> its value in each layer that says it."""
    per_kind: dict = {}
    for _, sizes in found:
        for kind, value in sizes.items():
            per_kind.setdefault(kind, []).append(value)
    entries = {_CONFIG[k]: v for k, v in per_kind.items() if k in _CONFIG}
    if "intermediate" in per_kind:
        entries["n_inner" if hasattr(model.config, "n_inner") else "intermediate_size"] = per_kind["intermediate"]
    embeddings = getattr(model, "get_input_embeddings", None)
    embedding = embeddings() if callable(embeddings) else None
    if isinstance(embedding, nn.Embedding):
        entries["hidden_size"] = [embedding.embedding_dim]
    return entries


def _sizes(m: nn.Module) -> dict:
    """The sizes ``m``'s layers now have, by the conventions above ({} for other modules)."""
    head_dim = _int(m, "head_dim")
    sizes = {}
    if isinstance(getattr(m, "q_proj", None), nn.Linear) and head_dim:
        sizes = {"heads": m.q_proj.out_features // head_dim, "head_dim": head_dim}
        if isinstance(getattr(m, "k_proj", None), nn.Linear):
            sizes["kv_heads"] = m.k_proj.out_features // head_dim
            sizes["groups"] = max(1, sizes["heads"] // max(1, sizes["kv_heads"]))
    elif isinstance(getattr(m, "query", None), nn.Linear) and _int(m, "attention_head_size"):
        sizes = {"heads": m.query.out_features // m.attention_head_size, "all_head_size": m.query.out_features}
    elif _int(getattr(m, "c_attn", None), "nf") and head_dim:
        sizes = {"heads": m.c_attn.nf // 3 // head_dim, "head_dim": head_dim}
    width = _hidden_width(m)
    if width:
        sizes["intermediate"] = width
    return sizes


def _hidden_width(m: nn.Module) -> Optional[int]:
    for name in ("up_proj", "fc1"):
        layer = getattr(m, name, None)
        if isinstance(layer, nn.Linear):
            return layer.out_features
    if _int(getattr(m, "c_fc", None), "nf"):
        return m.c_fc.nf
    if hasattr(m, "intermediate_act_fn") and isinstance(getattr(m, "dense", None), nn.Linear):
        return m.dense.out_features
    return None


def _int(obj, attr: str) -> Optional[int]:
    value = getattr(obj, attr, None) if obj is not None else None
    return value if type(value) is int and value > 0 else None
