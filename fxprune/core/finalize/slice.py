"""Slicing parameters and buffers, and updating the attributes of the modules that own them.

Every parameter whose dimensions carry channels is cut down to the indices that survive
(``index_select`` per dimension) and put back on every module that held it, so tied
weights stay tied. Then each owning module's size attributes are recomputed from its new
tensors by its handler (``resize_module``, :mod:`fxprune.core.rules`).

Example:
    >>> slice_params(gm, state, plan)          # doctest: +SKIP
    >>> gm.layer1[0].conv1.out_channels                      # doctest: +SKIP
    32
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from fxprune.core.rules import module_handler


def slice_params(gm: torch.fx.GraphModule, state, plan) -> set:
    """Slice every recorded parameter to its surviving indices and resize the modules holding them.

    Args:
        gm: the model being finalized.
        state: the prepared model's :class:`~fxprune.core.ir.PruneState`; its index holds the
            :class:`~fxprune.core.ir.ParamRecord` s, with layouts in channel ids.
        plan: the :class:`~fxprune.core.ir.Plan`.

    Returns:
        The paths of the modules whose tensors changed.
    """
    touched = set()
    used = _used_paths(gm)
    modules = dict(gm.named_modules(remove_duplicate=False))
    for record in state.index.params:
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
    in_channels = _in_channels(gm, state, plan, touched)
    for path in touched:
        handler = module_handler(modules[path])
        if handler is not None:
            handler.resize_module(modules[path], in_channels.get(path))
    return touched


def _in_channels(gm, state, plan, paths: set) -> dict:
    """Module path -> its new number of input channels (dimension 1 of what it is called on), for ``paths``."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in paths and node.args and isinstance(node.args[0], torch.fx.Node):
            layout = state.index.node_layouts.get(node.args[0].name)
            if isinstance(layout, tuple) and len(layout) > 1 and isinstance(layout[1], np.ndarray):
                out[node.target] = plan.new_size(layout[1])
    return out


def _used_paths(gm) -> set:
    """Module paths and attribute targets the graph still calls or reads."""
    return {n.target for n in gm.graph.nodes if n.op in ("call_module", "get_attr")}


def _is_used(owner: str, attr: str, used: set) -> bool:
    return owner in used or (f"{owner}.{attr}" if owner else attr) in used or any(
        u.startswith(owner + ".") for u in used if owner)
