"""The user's in-place updates come back where nothing can tell the difference.

Tracing reads ``a += b`` as ``a = a + b`` (see :class:`fxprune.core.prepare.in_place.InPlaceProxy`);
that is the safe reading while masks are trained, but a residual add that allocates its
result is measurably slower than the user's in-place one.
"""

from __future__ import annotations

import torch
import torch.fx

from fxprune.core.ir import is_tensor_shape
from fxprune.core.prepare.in_place import AUGMENTED, IN_PLACE
from fxprune.core.rules import node_handler


def restore_in_place(gm: torch.fx.GraphModule, state) -> None:
    """Make the user's ``a += b`` in place again where nothing can tell the difference.

    It goes back to ``a += b`` only where ``a`` is the output of a convolution, linear layer or normalisation
    that nothing else reads, and has the result's shape: writing into it then changes no
    other value, and none of those layers needs its output for backward. Edits
    ``gm.graph``; the caller recompiles.
    """
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in AUGMENTED or not node.meta.get(IN_PLACE) \
                or node.kwargs or len(node.args) != 2:
            continue
        left, shape = node.args[0], state.shapes.get(node.name)
        if not (isinstance(left, torch.fx.Node) and left.op == "call_module" and len(left.users) == 1
                and _fresh_output(gm, left)):
            continue
        if is_tensor_shape(shape) and state.shapes.get(left.name) == shape:
            node.target = AUGMENTED[node.target][0]


def _fresh_output(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """Whether a module call returns a fresh tensor that its backward does not read (its handler says)."""
    handler, _ = node_handler(gm, node)
    return handler is not None and handler.fresh_output
