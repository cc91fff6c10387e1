"""finalize: remove what the masks and gates switched off, for real, and check the result.

Each line of :func:`finalize` is a stage, and each stage is a module of this folder:

    decide.py           which channels and branches go (masks and gates at or below the threshold)
    share.py            a copy of the prepared model that shares its tensors until the end
    remove_branches.py  removed residual branches: ``a + g * f`` becomes ``a``
    fold.py             surviving mask and gate values go into neighbouring weights
    slice.py            parameters and buffers cut to the surviving channels, modules resized
    resize.py           channel counts baked into the graph (view sizes, split sizes, slices)
    in_place.py         the user's ``a += b`` made in place again where nothing can tell
    verify.py           the result must compute what the masked model computes
    keep_classes.py     on request, the result as the user's own classes, checked the same way
    follow_config.py    ... whose head counts and config follow its layers (Hugging Face conventions)
                        (approximate.py: which outputs ``approximate_norms`` lets differ)
"""

from __future__ import annotations

import torch.fx

from fxprune.core.drafts import release
from fxprune.core.finalize.decide import decide
from fxprune.core.finalize.fold import fold_masks_and_gates
from fxprune.core.finalize.in_place import restore_in_place
from fxprune.core.finalize.keep_classes import into_user_classes
from fxprune.core.finalize.remove_branches import remove_branches
from fxprune.core.finalize.resize import rewrite_sizes
from fxprune.core.finalize.share import copy_sharing_tensors, detach_fxprune, unshare
from fxprune.core.finalize.slice import slice_params
from fxprune.core.finalize.verify import verify
from fxprune.core.ir import state_of


def finalize(prepared: torch.fx.GraphModule, threshold: float = 0.0, check: bool = True,
             keep_classes: bool = False) -> torch.nn.Module:
    """Remove masked-out channels and gated-off branches for real.

    Channels whose mask magnitude is ``<= threshold`` and branches whose gate is, are
    removed; the other mask and gate values are folded into neighbouring weights. The
    result is a plain GraphModule with smaller tensors and no fxprune modules; it
    computes exactly what ``prepared`` computes with those masks and gates at zero,
    which finalize checks on the example inputs (and on a seeded random input beside a
    constant one) unless ``check=False``. ``prepared``
    is left as it was.

    Args:
        prepared: a model returned by :func:`~fxprune.prepare`.
        threshold: the magnitude at or below which a mask entry or gate counts as zero.
        check: compare the result with the masked model and raise if they differ.
        keep_classes: return a pruned copy of the user's model in its own classes (an ultralytics
            ``DetectionModel``, a Hugging Face ``LlamaForCausalLM``) instead of the GraphModule;
            it is always checked, and an :class:`~fxprune.errors.FxPruneError` says what its classes
            cannot hold where they cannot (see :mod:`fxprune.core.finalize.keep_classes`).

    Returns:
        The pruned ``torch.fx.GraphModule``; ``finalized.fxprune_equivalence_error`` holds the
        difference measured (None if unchecked).

    Raises:
        EquivalenceError: the check found the result computing something else.
        MaskError: masks that cannot be honoured (NaN, an emptied group).

    Example:
        >>> small = finalize(pm)                                # doctest: +SKIP
        >>> small.fxprune_equivalence_error < 1e-4              # doctest: +SKIP
        True
    """
    state = state_of(prepared)
    plan = decide(prepared, state, threshold)
    gm = copy_sharing_tensors(prepared, state)
    remove_branches(gm, state, plan)
    fold_masks_and_gates(gm, state, plan)
    slice_params(gm, state, plan)
    changes = rewrite_sizes(gm, state, plan)
    detach_fxprune(gm)
    unshare(gm, prepared)
    restore_in_place(gm, state)
    gm = release(gm)
    gm.fxprune_equivalence_error = verify(prepared, gm, state, threshold, plan) if check else None
    if keep_classes:
        return into_user_classes(prepared, gm, state, plan, changes, threshold)
    return gm
