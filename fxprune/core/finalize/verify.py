"""finalize's self-check: the finalized model must compute what the masked model computes.

The reference is the prepared model with every mask and gate at or below the threshold
set to exactly zero (restored afterwards), both run in eval mode in full float32 (no TF32
on CUDA) on the example inputs prepare recorded. Where those inputs are degenerate (every
element of a floating-point input equal, as the zeros ``fxprune demo`` traces with), a
seeded random input of the same shapes and dtypes is checked as well: on zeros the first
layer's weights never touch the result.

Each output is measured against its own scale: the largest absolute difference divided by
the output's largest magnitude, or by a floor fit for its dtype (its machine epsilon) where
the output is smaller than that. A non-finite value where the other model has a different
value (inf against a finite number, NaN against anything but NaN) is an infinite error.

With ``approximate_norms``, the outputs that read a normalisation that lost channels are
only approximately equal: they are measured and a warning names those norms; every other
output is checked as usual.

Example:
    >>> errors = output_errors(pm, small, state.example_inputs, threshold=0.0)   # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch.utils import _pytree as pytree

from fxprune.core.finalize.approximate import lossy_norms, relaxed_outputs
from fxprune.core.ir import ExampleInputs
from fxprune.core.tensors import dtype_and_device, eval_mode
from fxprune.errors import EquivalenceError

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}
SEED = 0  # of the random input that stands in beside a degenerate example input
_HINT = "this is a bug in fxprune; please report the model. finalize(check=False) returns the model unchecked"


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
    tolerance would report as a bug (seen on an H100 with a CIFAR ResNet-20).
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


def relative_error(reference: torch.Tensor, result: torch.Tensor, floor_dtype: torch.dtype = torch.float32) -> float:
    """The largest difference of two same-shaped tensors relative to ``reference``'s scale.

    The scale is ``max|reference|`` over its finite values, at least the machine epsilon of
    the coarser of the tensor's dtype and ``floor_dtype``. Integer and boolean tensors must
    be equal. A position where one is finite and the other not, or both infinite with
    different signs, or one NaN and the other not, gives ``inf``.
    """
    if not reference.is_floating_point():
        return 0.0 if torch.equal(reference, result) else float("inf")
    if reference.numel() == 0:
        return 0.0
    a, b = reference.double(), result.double()
    finite_a, finite_b = torch.isfinite(a), torch.isfinite(b)
    both_nan = torch.isnan(a) & torch.isnan(b)
    if not torch.equal(finite_a, finite_b) or bool(((~finite_a) & (a != b) & ~both_nan).any()):
        return float("inf")
    if not bool(finite_a.any()):
        return 0.0
    floor = max(torch.finfo(reference.dtype).eps, torch.finfo(floor_dtype).eps)
    scale = max(floor, float(a[finite_a].abs().max()))
    return float((a[finite_a] - b[finite_a]).abs().max()) / scale


def output_errors(pm, finalized, inputs, threshold: float) -> list:
    """Per output leaf of the masked model (in pytree order), the relative error of the finalized
    model's (None for a leaf that is not a tensor)."""
    with torch.no_grad(), eval_mode(pm, finalized), thresholded(pm, threshold), ieee_float32():
        example = ExampleInputs.of(inputs)
        reference = example(pm)
        result = example(finalized)
    ref_leaves, out_leaves = pytree.tree_leaves(reference), pytree.tree_leaves(result)
    tensors = [isinstance(t, torch.Tensor) for t in ref_leaves]
    if tensors != [isinstance(t, torch.Tensor) for t in out_leaves] or any(
            a.shape != b.shape or a.dtype != b.dtype
            for a, b, t in zip(ref_leaves, out_leaves, tensors) if t):
        raise EquivalenceError("the finalized model's outputs do not have the masked model's shapes and dtypes",
                               hint=_HINT)
    dtype, _ = dtype_and_device(pm)
    return [relative_error(a, b, dtype) if t else None for a, b, t in zip(ref_leaves, out_leaves, tensors)]


def equivalence_error(pm, finalized, inputs, threshold: float) -> float:
    """Largest relative difference over every output of the masked and the finalized model."""
    return max([0.0] + [e for e in output_errors(pm, finalized, inputs, threshold) if e is not None])


def is_degenerate(inputs) -> bool:
    """Whether a floating-point example input holds one value everywhere (zeros, ones)."""
    example = ExampleInputs.of(inputs)
    for t in pytree.tree_leaves((example.args, example.kwargs)):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 1:
            flat = t.detach().flatten()
            if bool((flat == flat[0]).all()):
                return True
    return False


def random_like(inputs, seed: int = SEED):
    """The inputs with every floating-point tensor replaced by seeded normal noise of its shape and
    dtype (on its device); other values (token ids, masks, flags) stay as they are."""
    gen = torch.Generator().manual_seed(seed)

    def draw(t):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return torch.randn(t.shape, generator=gen, dtype=torch.float32).to(dtype=t.dtype, device=t.device)
        return t

    if isinstance(inputs, ExampleInputs):
        return ExampleInputs(*pytree.tree_map(draw, (inputs.args, inputs.kwargs)))
    return pytree.tree_map(draw, inputs)


def inputs_to_check(example_inputs) -> list:
    """``(what, inputs)`` pairs: the example inputs, and a seeded random input beside degenerate ones."""
    checks = [("the example input", example_inputs)]
    if is_degenerate(example_inputs):
        checks.append((f"a random input (seed {SEED}) of the example input's shapes, which it checks as well "
                       "because the example input is constant", random_like(example_inputs)))
    return checks


def verify(pm, finalized, state, threshold: float, plan=None) -> float:
    """finalize's self-check on the example inputs prepare recorded; returns the largest error measured.

    Args:
        pm: the prepared model.
        finalized: finalize's result.
        state: ``pm``'s :class:`~fxprune.core.ir.PruneState`.
        threshold: finalize's threshold.
        plan: finalize's :class:`~fxprune.core.ir.Plan` (decided again from the masks when omitted).

    Raises:
        EquivalenceError: an output that reads no normalisation that lost channels differs by
            more than the tolerance of the model's dtype, on the example input or on the random
            input checked beside a degenerate one (the message says which).
    """
    dtype, _ = dtype_and_device(pm)
    tolerance = TOLERANCE.get(dtype, 1e-4)
    lossy = lossy_norms(pm, state, threshold, plan)
    reads_lossy = relaxed_outputs(pm.graph, lossy)
    worst, approximate = 0.0, 0.0
    for what, inputs in inputs_to_check(state.example):
        errors = output_errors(pm, finalized, inputs, threshold)
        relaxed = reads_lossy if len(reads_lossy) == len(errors) else [bool(lossy)] * len(errors)
        for i, error in enumerate(errors):
            if error is None:
                continue
            if relaxed[i]:
                approximate = max(approximate, error)
            elif not error <= tolerance:
                raise EquivalenceError(
                    f"on {what}, output {i} of the finalized model differs from the masked model's by {error:.3g} "
                    f"(relative to its scale), more than the {tolerance:g} allowed for {dtype}", hint=_HINT)
            worst = max(worst, error)
    if lossy:
        warnings.warn(f"approximate_norms: the outputs that read the normalisation(s) {', '.join(lossy)}, which lost "
                      f"channels, differ from the masked model's by {approximate:.3g} (relative); the other outputs "
                      "were checked exactly", stacklevel=3)
    return worst
