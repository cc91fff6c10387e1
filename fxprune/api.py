"""prepare and finalize: short pipelines that name the stages.

Example:
    >>> pm = fxprune.prepare(torchvision.models.resnet18())          # doctest: +SKIP
    >>> fxprune.prune_by_importance(pm, 0.5)                           # doctest: +SKIP
    >>> small = fxprune.finalize(pm)                                   # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
import torch.fx
import torch.nn as nn

from . import copies, verify
from .branches import find_branches
from .config import PruneConfig
from .decide import decide
from .draft import copy_as_draft, release
from .errors import FxPruneError
from .flow import ChannelFlow
from .groups import resolve
from .lower import lower_modules
from .masks import MaskBank, insert_gates, insert_masks
from .rewrite import fold_masks_and_gates, remove_branches, restore_in_place, rewrite_sizes
from .slicing import slice_params
from .state import ATTR, PruneState, state_of
from .trace import check_in_place, example_inputs_for, trace, with_source_line


def prepare(model: nn.Module, example_inputs: Any = None, config: Optional[PruneConfig] = None) -> torch.fx.GraphModule:
    """Trace ``model``, find its coupled channels and insert masks and gates (all 1).

    The result computes exactly what ``model`` computes. Setting entries of
    ``pm.fxprune.masks[...]`` or ``pm.fxprune.gates[...]`` to zero switches channels or
    branches off; :func:`finalize` then removes them for real. ``model`` is not changed.

    Args:
        model: any torch.fx-traceable module.
        example_inputs: a tensor or tuple of tensors; inferred for image models when omitted.
        config: a :class:`PruneConfig`.

    Returns:
        A ``torch.fx.GraphModule`` with a ``fxprune`` submodule holding masks and gates.
    """
    config = config or PruneConfig()
    example_inputs = tuple(t.detach().clone() if isinstance(t, torch.Tensor) else t
                           for t in example_inputs_for(model, example_inputs))
    gm = trace(model, config)
    lower_modules(gm)
    try:
        flow = _propagate(gm, config, example_inputs)
        check_in_place(gm, flow.shapes)
    except FxPruneError as e:
        raise with_source_line(e, model, config) from None
    index = resolve(flow)
    branches = find_branches(gm, flow.shapes, config.min_branch_params) if config.gate_branches else []
    dtype, device = _dtype_device(gm)
    gm.add_submodule("fxprune", MaskBank([g.size for g in index.groups], [b.name for b in branches], dtype, device))
    inserted = insert_masks(gm, list(flow.sites.values()), index)
    insert_gates(gm, branches)
    gm = release(gm)
    sites = dict(zip(inserted, [s for s in flow.sites.values() if _has_channels(index, s)]))
    setattr(gm, ATTR, PruneState(index, sites, branches, example_inputs, config, flow.barriers,
                                 flow.shapes, flow.approximate))
    return gm


def _propagate(gm, config: PruneConfig, example_inputs) -> ChannelFlow:
    """Shape and channel propagation: heavy ops shape-only, or every op for real if that fails."""
    try:
        return ChannelFlow(gm, config).propagate(*example_inputs)
    except FxPruneError:
        raise
    except Exception:  # zeros where the model needed its own activations: run it for real
        return ChannelFlow(gm, config).propagate(*example_inputs, shape_only=False)


def _has_channels(index, site) -> bool:
    cids = index.node_layouts[site.source][site.dim]
    return cids.shape[1] > 0 and bool((cids >= 0).any())


def _dtype_device(gm: nn.Module):
    for p in gm.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    return torch.float32, torch.device("cpu")


def finalize(prepared: torch.fx.GraphModule, threshold: float = 0.0, check: bool = True) -> torch.fx.GraphModule:
    """Remove masked-out channels and gated-off branches for real.

    Channels whose mask magnitude is ``<= threshold`` and branches whose gate is, are
    removed; the other mask and gate values are folded into neighbouring weights. The
    result is a plain GraphModule with smaller tensors and no fxprune modules; it
    computes exactly what ``prepared`` computes with those masks and gates at zero,
    which finalize checks on the example inputs unless ``check=False``. ``prepared``
    is left as it was.

    Args:
        prepared: a model returned by :func:`prepare`.
        threshold: the magnitude at or below which a mask entry or gate counts as zero.
        check: compare the result with the masked model and raise if they differ.

    Returns:
        The pruned ``torch.fx.GraphModule``; ``finalized.fxprune_report`` holds the
        equivalence error measured (None if unchecked).
    """
    state = state_of(prepared)
    plan = decide(prepared, state, threshold)
    gm = _copy_sharing_tensors(prepared, state)
    remove_branches(gm, state, plan)
    fold_masks_and_gates(gm, state, plan)
    slice_params(gm, state.index.params, plan, _conv_inputs(gm, state, plan))
    rewrite_sizes(gm, state, plan)
    _detach_fxprune(gm)
    _unshare(gm, prepared)
    restore_in_place(gm, state)
    gm = release(gm)
    error = None
    if check and state.approximate:  # LayerNorms pruned on request: close, not equal
        error = verify.equivalence_error(prepared, gm, state.example_inputs, threshold)
        warnings.warn(f"approximate_norms: the finalized model differs from the masked model by {error:.3g} "
                      f"(relative) because {len(state.approximate)} normalisation(s) lost channels")
    elif check:
        dtype, _ = _dtype_device(prepared)
        error = verify.check(prepared, gm, state.example_inputs, threshold, dtype)
    gm.fxprune_equivalence_error = error
    return gm


def _copy_sharing_tensors(prepared: torch.fx.GraphModule, state: PruneState) -> torch.fx.GraphModule:
    """A copy of the prepared model's modules and graph that still shares its tensors and state.

    Slicing and folding replace tensors instead of writing into them; :func:`_unshare` then
    copies whatever is still shared, so each tensor is copied at most once.
    """
    memo = {id(state): state}
    for t in list(prepared.parameters()) + list(prepared.buffers()):
        memo[id(t)] = t
    return copy_as_draft(prepared, memo)


def _unshare(gm: torch.nn.Module, prepared: torch.nn.Module) -> None:
    """Give ``gm`` its own (copy-on-write) copy of every tensor it still shares with ``prepared``."""
    shared = {id(t) for t in list(prepared.parameters()) + list(prepared.buffers())}
    done: dict = {}
    for m in gm.modules():
        for store in (m._parameters, m._buffers):
            for name, t in store.items():
                if t is not None and id(t) in shared:
                    if id(t) not in done:
                        done[id(t)] = copies.clone_like(t)
                    store[name] = done[id(t)]


def _conv_inputs(gm, state, plan) -> dict:
    """Module path -> new number of input channels, for every convolution (grouped ones need it)."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.modules.conv._ConvNd):
            src = node.args[0]
            lay = state.index.node_layouts.get(src.name) if isinstance(src, torch.fx.Node) else None
            if lay is not None:
                out[node.target] = plan.new_size(lay[1])
    return out


def _detach_fxprune(gm: torch.fx.GraphModule) -> None:
    for m in gm.modules():  # hooks fxprune's methods put on the prepared model (feature taps)
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for key in [k for k, h in hooks.items() if getattr(h, "__fxprune__", False)]:
                del hooks[key]
    if any(not n.users and n.op not in ("placeholder", "output") for n in gm.graph.nodes):
        gm.graph.eliminate_dead_code()  # lints and asks every node whether it is impure: only when there is dead code
    gm.delete_submodule("fxprune")
    if hasattr(gm, ATTR):
        delattr(gm, ATTR)
    gm.delete_all_unused_submodules()
