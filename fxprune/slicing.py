"""Slicing parameters and buffers, and updating the attributes of the modules that own them.

Every parameter whose dimensions carry channels is cut down to the indices that survive
(``index_select`` per dimension) and put back on every module that held it, so tied
weights stay tied. Then each owning module's size attributes are recomputed from its new
tensors by a small table keyed on module type.

Example:
    >>> slice_params(gm, state.index.params, plan)          # doctest: +SKIP
    >>> gm.layer1[0].conv1.out_channels                      # doctest: +SKIP
    32
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

_ATTRIBUTES: dict[type, Callable] = {}


def attributes(*types):
    """Register how a module type recomputes its size attributes after slicing."""

    def register(fn):
        for t in types:
            _ATTRIBUTES[t] = fn
        return fn

    return register


def slice_params(gm: nn.Module, params: list, plan, in_channels: dict) -> set:
    """Slice every recorded parameter to its surviving indices.

    Args:
        gm: the model being finalized.
        params: :class:`~fxprune.rules.ParamRecord` s with layouts in channel ids.
        plan: the :class:`~fxprune.decide.Plan`.
        in_channels: module path -> new number of input channels (for grouped convs).

    Returns:
        The paths of the modules whose tensors changed.
    """
    touched = set()
    used = _used_paths(gm)
    modules = dict(gm.named_modules(remove_duplicate=False))
    for record in params:
        if not any(_is_used(owner, attr, used) for owner, attr in record.refs):
            continue  # only a removed branch held it
        keeps = [plan.keep(d) for d in record.layout]
        if all(k.size == n for k, n in zip(keeps, record.shape)):
            continue
        owner, attr = record.refs[0]
        old = getattr(modules[owner], attr)
        new = old.detach()
        for d, keep in enumerate(keeps):
            if keep.size != new.shape[d]:
                new = new.index_select(d, torch.as_tensor(keep, device=new.device))
        new = new.contiguous()
        replacement = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
        for owner, attr in record.refs:
            module = modules[owner]
            if isinstance(replacement, nn.Parameter) or attr not in module._buffers:
                setattr(module, attr, replacement)
            else:
                module._buffers[attr] = replacement
            touched.add(owner)
    for path in touched:
        module = modules[path]
        fn = _ATTRIBUTES.get(type(module)) or next(
            (f for t, f in _ATTRIBUTES.items() if isinstance(module, t)), None)
        if fn is not None:
            fn(module, in_channels.get(path))
    return touched


def _used_paths(gm) -> set:
    """Module paths and attribute targets the graph still calls or reads."""
    return {n.target for n in gm.graph.nodes if n.op in ("call_module", "get_attr")}


def _is_used(owner: str, attr: str, used: set) -> bool:
    return owner in used or (f"{owner}.{attr}" if owner else attr) in used or any(
        u.startswith(owner + ".") for u in used if owner)


@attributes(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(m, in_channels):
    m.out_channels = m.weight.shape[0]
    if in_channels is None:
        in_channels = m.weight.shape[1] * m.groups
    m.groups = max(1, in_channels // m.weight.shape[1])
    m.in_channels = in_channels


@attributes(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transposed(m, in_channels):
    m.in_channels = m.weight.shape[0]
    m.out_channels = m.weight.shape[1] * m.groups


@attributes(nn.Linear)
def _linear(m, in_channels):
    m.out_features, m.in_features = m.weight.shape


@attributes(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
            nn.InstanceNorm2d, nn.InstanceNorm3d)
def _batch_norm(m, in_channels):
    t = m.weight if m.weight is not None else m.running_mean
    m.num_features = t.shape[0]


@attributes(nn.LayerNorm)
def _layer_norm(m, in_channels):
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


@attributes(nn.GroupNorm)
def _group_norm(m, in_channels):
    m.num_channels = m.weight.shape[0]


@attributes(nn.PReLU)
def _prelu(m, in_channels):
    m.num_parameters = m.weight.numel()


@attributes(nn.Embedding)
def _embedding(m, in_channels):
    m.num_embeddings, m.embedding_dim = m.weight.shape
