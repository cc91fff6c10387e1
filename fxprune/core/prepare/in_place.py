"""In-place updates under tracing: remembered, and refused where the graph would differ.

torch.fx's Proxy has no ``__iadd__``, so Python runs ``out += identity`` as
``out = out + identity`` and the graph forgets that the user added in place.
:class:`InPlaceProxy` marks such nodes (``node.meta[IN_PLACE]``). After propagation,
:func:`check_in_place` refuses a model where that reading changes what is computed: ``a += b``
on a tensor that is read again afterwards through another reference. finalize makes the
marked adds in place again where nothing can tell (:mod:`fxprune.core.finalize.in_place`).
"""

from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.fx
from networkx.utils import UnionFind

from fxprune.core.ir import is_tensor_shape
from fxprune.errors import TraceError

IN_PLACE = "in_place"  # node.meta key: the user wrote ``a op= b`` (see InPlaceProxy)
# what ``a op= b`` traces to -> (its in-place form, the operator's symbol)
AUGMENTED = {operator.add: (operator.iadd, "+"), operator.sub: (operator.isub, "-"),
             operator.mul: (operator.imul, "*"), operator.truediv: (operator.itruediv, "/")}


class InPlaceProxy(torch.fx.Proxy):
    """A Proxy that remembers augmented assignment.

    torch.fx's Proxy has no ``__iadd__``, so Python runs ``out += identity`` as
    ``out = out + identity`` and the graph forgets that the user added in place. That is
    the safe reading while masks are trained, but a residual add that allocates its result
    is slower than the user's in-place one. The node is still an out-of-place op, marked
    ``meta[IN_PLACE]``; finalize makes it in-place again where nothing can tell.
    ``__iadd__``, ``__isub__``, ``__imul__`` and ``__itruediv__`` are made from AUGMENTED.
    """


def _augmented(op):
    def method(self, other):
        result = op(self, other)
        if isinstance(result, torch.fx.Proxy):
            result.node.meta[IN_PLACE] = True
        return result

    return method


for _op, (_in_place, _) in AUGMENTED.items():
    setattr(InPlaceProxy, f"__{_in_place.__name__}__", _augmented(_op))


_SHAPE_READS = {"size", "dim", "numel"}  # call_method reads that an in-place op of equal shape cannot change


def check_in_place(gm: torch.fx.GraphModule, shapes: dict) -> None:
    """Raise where the traced graph computes something else than the eager model: ``a += b``
    on a tensor that is read again afterwards through another reference (a list element,
    another name, or a view: ``a`` itself, a view of it, or the tensor it is a view of). In
    the eager model that read sees the sum; in the graph, where the op is out of place, it
    sees ``a`` from before.

    Args:
        gm: a traced graph (its augmented assignments marked by :class:`InPlaceProxy`).
        shapes: node name -> output shape from shape propagation (tensors: tuples of ints).
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    memory = _shared_memory(gm, shapes)
    for node in gm.graph.nodes:
        left = node.args[0] if node.meta.get(IN_PLACE) and node.args else None
        if not (isinstance(left, torch.fx.Node) and is_tensor_shape(shapes.get(left.name))):
            continue  # not a tensor: ints and tuples are rebound by a op= b, as in the graph
        for alias in [left] + [n for n in memory.get(left, ()) if n is not left]:
            later = [u for u in alias.users if order[u] > order[node] and not _reads_shape_only(u)]
            if later:
                _refuse_in_place(node, left, alias, later[0])


def _refuse_in_place(node, left, alias, reader) -> None:
    op = AUGMENTED.get(node.target, (None, "?"))[1]
    through = "through another reference" if alias is left else f"through {alias.name}, which may share its memory"
    raise TraceError(
        f"'{left.name} {op}= ...' changes a tensor in place that {reader.name} reads afterwards {through}; "
        f"torch.fx traces it as '{left.name} = {left.name} {op} ...', so the traced model would not compute what "
        f"yours does",
        node=node,
        hint=f"write it out of place ('x = x {op} y') and pass the result to where the updated value is meant, or "
             f"copy first ('x = x.clone(); x {op}= y') where the old value is")


# ops whose result may share memory with their first argument: views, and ops that can return it as it is
_ALIASING_METHODS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "swapaxes",
    "swapdims", "movedim", "moveaxis", "t", "squeeze", "unsqueeze", "expand", "expand_as", "narrow", "select",
    "chunk", "split", "tensor_split", "unbind", "unfold", "diagonal", "as_strided", "contiguous", "detach",
    "to", "type_as", "float", "__getitem__"})
_ALIASING_FUNCTIONS = frozenset({
    operator.getitem, torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.swapaxes, torch.movedim,
    torch.t, torch.squeeze, torch.unsqueeze, torch.narrow, torch.select, torch.chunk, torch.split,
    torch.tensor_split, torch.unbind, torch.diagonal, torch.detach})


def _shared_memory(gm: torch.fx.GraphModule, shapes: dict) -> dict:
    """Node -> the set of nodes whose results may share its memory (classes of views of one tensor);
    nodes that share with nothing are left out."""
    views = UnionFind()
    for node in gm.graph.nodes:
        source = _may_view(node, shapes)
        if source is not None:
            views.union(node, source)
    return {n: members for members in views.to_sets() for n in members}


def _may_view(node: torch.fx.Node, shapes: dict) -> Optional[torch.fx.Node]:
    """The node whose result ``node``'s result may share memory with, if any."""
    source = node.args[0] if node.args else None
    if not isinstance(source, torch.fx.Node):
        return None
    if node.op == "call_method" and node.target in _ALIASING_METHODS:
        return source
    if node.op != "call_function" or node.target not in _ALIASING_FUNCTIONS:
        return None
    if node.target is operator.getitem and not is_tensor_shape(shapes.get(source.name)) \
            and _may_view(source, shapes) is None:
        return None  # an element of what a module or an op like max returned: a tensor of its own
    return source


def _reads_shape_only(node: torch.fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _SHAPE_READS
    return node.op == "call_function" and node.target is getattr and node.args[1:2] in (("shape",), ("dtype",),
                                                                                        ("device",), ("ndim",))
