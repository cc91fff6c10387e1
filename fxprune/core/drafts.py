"""Drafts: GraphModules whose code is generated once, when the passes editing them are done.

torch.fx generates and compiles a GraphModule's Python code when the module is built and
on every ``recompile()``, which on a graph of a few hundred nodes costs more than most of
fxprune's passes take. prepare and finalize edit their graph in several passes and run
none of the intermediate code (shape propagation interprets the graph node by node), so
they edit a :class:`Draft` and :func:`release` it as a plain GraphModule, compiled once.

Example:
    >>> d = Draft(traced_root, graph, "ResNet")   # doctest: +SKIP
    >>> lower_modules(d); insert_masks(d, ...)    # doctest: +SKIP
    >>> gm = release(d)                           # doctest: +SKIP
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.fx
import torch.nn as nn

from fxprune.core.copies import deepcopy_modules


class Draft(torch.fx.GraphModule):
    """A GraphModule being edited: ``recompile()`` does nothing, and calling it is an error.

    Its graph, modules and attributes are a GraphModule's; :func:`release` makes it one.
    """

    def recompile(self):  # deferred to release()
        return None

    def forward(self, *args, **kwargs):
        raise RuntimeError("fxprune internal error: a Draft has no code until release() compiles it")


def release(draft: Draft) -> torch.fx.GraphModule:
    """The GraphModule the draft stands for, its code compiled: same graph, modules and tensors."""
    draft.graph.lint()
    return _assemble(torch.fx.GraphModule, draft, draft.graph, draft.meta, type(draft).__name__)


def draft_over(root: nn.Module, graph: torch.fx.Graph, extra: Optional[dict] = None) -> Draft:
    """A :class:`Draft` running ``graph`` over ``root``'s own modules (not plain containers on each path),
    with the ``extra`` children (name -> module) beside them, which ``root`` does not get."""
    return _assemble(Draft, root, graph, {}, type(root).__name__, extra=extra)


def copy_as_draft(gm: torch.fx.GraphModule, memo: dict) -> Draft:
    """``copy.deepcopy(gm, memo)``, as a :class:`Draft`: what ``memo`` already maps (tensors to share) is shared,
    modules are copied by :func:`deepcopy_modules`."""
    return _assemble(Draft, gm, copy.deepcopy(gm.graph), copy.deepcopy(gm.meta, memo), type(gm).__name__,
                     lambda value: deepcopy_modules(value, memo))


def _assemble(cls, root: nn.Module, graph: torch.fx.Graph, meta: dict, name: str, take=lambda value: value,
              extra: Optional[dict] = None):
    """A ``cls`` GraphModule holding ``take`` of ``root``'s own children, tensors and the attributes the graph
    reads (by default the same objects; in the same order: building one from ``root`` the usual way would
    replace every container on a node's path with a plain ``nn.Module``) and running ``graph``."""
    empty = torch.fx.Graph(tracer_cls=getattr(graph, "_tracer_cls", None),
                           tracer_extras=getattr(graph, "_tracer_extras", None))
    gm = cls(nn.Module(), empty, name)
    gm.training = root.training
    for key, child in list(root.named_children()) + list((extra or {}).items()):
        gm.add_module(key, take(child))
    for key, p in root.named_parameters(recurse=False):
        gm.register_parameter(key, take(p))
    for key, b in root.named_buffers(recurse=False):
        gm.register_buffer(key, take(b))
    for head in _attribute_heads(graph):  # anything else the graph reads off the module itself
        if not hasattr(gm, head):
            setattr(gm, head, take(getattr(root, head)))
    gm.meta.update(meta)
    gm.graph = graph  # compiles, unless cls is a Draft
    return gm


def _attribute_heads(graph: torch.fx.Graph) -> set:
    return {n.target.split(".")[0] for n in graph.nodes if n.op in ("get_attr", "call_module")}


def erase_dead_getattrs(gm: torch.fx.GraphModule) -> None:
    """Erase the ``get_attr`` nodes nothing reads any more (after an edit removed their users)."""
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
