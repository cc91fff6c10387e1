"""finalize works on a copy of the prepared model that shares its tensors until it is done.

Slicing and folding replace tensors instead of writing into them, so the copy can start
by sharing every tensor with the prepared model (:func:`copy_sharing_tensors`); at the
end :func:`unshare` copies whatever is still shared, so each tensor is copied at most
once, and :func:`detach_fxprune` takes fxprune's own modules, hooks and state off it.
"""

from __future__ import annotations

import torch
import torch.fx

from fxprune.core import copies
from fxprune.core.drafts import copy_as_draft
from fxprune.core.ir import ATTR, PruneState


def copy_sharing_tensors(prepared: torch.fx.GraphModule, state: PruneState) -> torch.fx.GraphModule:
    """A copy of the prepared model's modules and graph that still shares its tensors and state.

    Slicing and folding replace tensors instead of writing into them; :func:`unshare` then
    copies whatever is still shared, so each tensor is copied at most once.
    """
    memo = {id(state): state}
    for t in list(prepared.parameters()) + list(prepared.buffers()):
        memo[id(t)] = t
    return copy_as_draft(prepared, memo)


def unshare(gm: torch.nn.Module, prepared: torch.nn.Module) -> None:
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


def detach_fxprune(gm: torch.fx.GraphModule) -> None:
    """Remove the MaskBank, the prepared state, fxprune's hooks and what no node uses any more."""
    drop_fxprune_hooks(gm)
    if any(not n.users and n.op not in ("placeholder", "output") for n in gm.graph.nodes):
        gm.graph.eliminate_dead_code()  # lints and asks every node whether it is impure: only when there is dead code
    gm.delete_submodule("fxprune")
    if hasattr(gm, ATTR):
        delattr(gm, ATTR)
    gm.delete_all_unused_submodules()


def drop_fxprune_hooks(root: torch.nn.Module) -> None:
    """Remove the hooks fxprune's methods put on the prepared model's modules (feature taps)."""
    for m in root.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for key in [k for k, h in hooks.items() if getattr(h, "__fxprune__", False)]:
                del hooks[key]
