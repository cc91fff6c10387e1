"""How prepare behaves: which modules are leaves, how strict it is, what it may approximate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence


@dataclass
class PruneConfig:
    """Options for :func:`fxprune.prepare`.

    Args:
        leaf_modules: module types or qualified names (``"backbone.stem"``) that torch.fx
            must not trace into. A leaf without an fxprune rule is a frozen boundary:
            the channels it touches are never pruned.
        concrete_args: passed to ``torch.fx.Tracer.trace`` to specialise Python values
            that control flow depends on (for example ``{"return_aux": False}``).
        strict: raise :class:`~fxprune.errors.UnsupportedOpError` at an op fxprune does
            not understand, instead of freezing the channels it touches.
        approximate_norms: let channels normalised by a LayerNorm be pruned. Removing a
            channel then changes the normalisation of the others, so the finalized model
            only approximates the masked one: finalize's exactness check is relaxed to a
            warning, naming the norms, for the outputs computed from a norm that lost
            channels; every other output is checked as usual.
        gate_branches: put a removable gate on every residual branch (``y = a + g * f(x)``).
        min_branch_params: a branch needs at least this many parameters to get a gate.
        capture: how the model becomes a graph: ``"fx"`` (``torch.fx`` symbolic tracing),
            ``"export"`` (``torch.export.export(strict=False)``, for models tracing cannot
            follow: control flow on values, Hugging Face transformers, detectors), or
            ``"auto"`` (trace, and fall back to torch.export where tracing fails).
        dynamic_shapes: passed to ``torch.export`` instead of fxprune's choice (the batch
            dimension of every input, and the length of token inputs, kept dynamic).
        keep_classes: prune only what the model's own classes can hold, so that
            ``finalize(pm, keep_classes=True)`` returns them for any masks: channel groups
            whose removal the classes' code cannot follow (``nn.MultiheadAttention``'s heads,
            ShuffleNet's equal halves) are found by trial and frozen, with the reason, and
            residual branches get no gates. Costs one extra finalize at prepare, and one per
            group where the first fails.

    Example:
        >>> PruneConfig(leaf_modules=["head"], strict=True).strict
        True
    """

    leaf_modules: Sequence[Any] = field(default_factory=tuple)
    concrete_args: Optional[dict] = None
    strict: bool = False
    approximate_norms: bool = False
    gate_branches: bool = True
    min_branch_params: int = 1
    capture: str = "auto"
    dynamic_shapes: Optional[Any] = None
    keep_classes: bool = False
