"""finalize's self-check: the finalized model must compute what the masked model computes.

The reference is the prepared model with every mask and gate at or below the threshold
set to exactly zero (restored afterwards), both run in eval mode on the example inputs
prepare recorded, in full float32 (no TF32 on CUDA). The error is the largest absolute
difference over all outputs, relative to the largest output magnitude (at least 1).

Example:
    >>> error = equivalence_error(pm, small, state.example_inputs, threshold=0.0)   # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch.utils import _pytree as pytree

from fxprune.core.ir import ExampleInputs
from fxprune.core.tensors import dtype_and_device, eval_mode
from fxprune.errors import EquivalenceError

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}


@contextmanager
def thresholded(pm, threshold: float):
    """Temporarily zero every mask entry and gate at or below ``threshold``."""
    saved = []
    with torch.no_grad():
        for p in list(pm.fxprune.masks.values()) + list(pm.fxprune.gates.values()):
            saved.append((p, p.detach().clone()))
            p.masked_fill_(p.abs() <= threshold, 0.0)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in saved:
                p.copy_(value)


@contextmanager
def ieee_float32():
    """Full float32 arithmetic on CUDA while the check runs, then the caller's settings back.

    cuDNN convolutions default to TF32 (a 10-bit mantissa): the masked and the finalized
    model then differ by about 1e-4 relative from rounding alone, which the float32
    tolerance would report as a bug.
    """
    if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):  # torch >= 2.9
        settings = [(torch.backends.cudnn.conv, "fp32_precision", "ieee"),
                    (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    else:
        settings = [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in settings]
    try:
        for owner, name, value in settings:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def equivalence_error(pm, finalized, inputs, threshold: float) -> float:
    """Largest difference between the masked and the finalized model, relative to output size."""
    with torch.no_grad(), eval_mode(pm, finalized), thresholded(pm, threshold), ieee_float32():
        example = ExampleInputs.of(inputs)
        reference = example(pm)
        result = example(finalized)
    ref_leaves = [t for t in pytree.tree_leaves(reference) if isinstance(t, torch.Tensor)]
    out_leaves = [t for t in pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]
    if len(ref_leaves) != len(out_leaves) or any(a.shape != b.shape for a, b in zip(ref_leaves, out_leaves)):
        raise EquivalenceError("the finalized model's outputs do not have the masked model's shapes",
                               hint="please report this model to fxprune; finalize(check=False) skips the check")
    error = 0.0
    for a, b in zip(ref_leaves, out_leaves):
        if not a.is_floating_point():
            if not torch.equal(a, b):
                return float("inf")
            continue
        scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
        diff = (a.double() - b.double()).abs()
        worst = float(diff.max()) if diff.numel() else 0.0
        if worst != worst:  # NaN
            return float("inf")
        error = max(error, worst / scale)
    return error


def verify(pm, finalized, state, threshold: float) -> float:
    """finalize's self-check on the example inputs prepare recorded; returns the error measured.

    Where normalisations lost channels on request (``approximate_norms``) the result is
    close, not equal: the error is measured and a warning says so.
    """
    if state.approximate:
        error = equivalence_error(pm, finalized, state.example, threshold)
        warnings.warn(f"approximate_norms: the finalized model differs from the masked model by {error:.3g} "
                      f"(relative) because {len(state.approximate)} normalisation(s) lost channels", stacklevel=3)
        return error
    dtype, _ = dtype_and_device(pm)
    return check(pm, finalized, state.example, threshold, dtype)


def check(pm, finalized, inputs, threshold: float, dtype: torch.dtype) -> float:
    """Raise :class:`EquivalenceError` unless the finalized model matches the masked one."""
    error = equivalence_error(pm, finalized, inputs, threshold)
    tolerance = TOLERANCE.get(dtype, 1e-4)
    if not error <= tolerance:
        raise EquivalenceError(
            f"the finalized model differs from the masked model by {error:.3g} (relative), more than the "
            f"{tolerance:g} allowed for {dtype}",
            hint="this is a bug in fxprune; please report the model. finalize(check=False) returns the model "
                 "unchecked")
    return error
