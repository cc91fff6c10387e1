"""One handler per op or layer kind, in one public registry. Importing this package fills it.

    registry.py     Handler, register, rule, lookup: the registry itself
    context.py      RuleContext: what a flow rule sees of one node
    layers.py       convolutions, linear layers, embeddings
    norms.py        batch, instance, layer, RMS and group norms
    elementwise.py  activations, dropout, broadcasting arithmetic
    reduce.py       pooling, resampling, reductions, softmax
    movement.py     data movement understood by index-coded probes (the general rule)
    views.py        fast paths for reshapes, reorders and tiling
    indexing.py     fast paths for cat, split, slicing and indexing
    pixels.py       PixelShuffle and PixelUnshuffle: r*r channels to one channel's pixels and back
    attention.py    matmul, einsum, scaled dot-product attention, Swin's window attention
"""

from fxprune.core.rules import attention, elementwise, indexing, layers, movement, norms, pixels, reduce, views  # noqa: F401
from fxprune.core.rules.context import RuleContext, empty_like
from fxprune.core.rules.registry import (
    FlowRule,
    Handler,
    lookup,
    module_handler,
    node_handler,
    register,
    rule,
    target_handler,
    unregister,
)

__all__ = ["FlowRule", "Handler", "RuleContext", "empty_like", "lookup", "module_handler", "node_handler", "register",
           "rule", "target_handler", "unregister"]
