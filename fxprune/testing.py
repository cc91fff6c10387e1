"""Tools for checking pruned models: the central property and what exercises it.

``assert_finalized_equals_masked`` is the property every fxprune test leans on; the
benchmarks use ``randomize`` so that every channel of an untrained model matters.

Example:
    >>> pm = fxprune.prepare(randomize(model), x)          # doctest: +SKIP
    >>> zero_channels(pm, 0.5)                              # doctest: +SKIP
    >>> small = assert_finalized_equals_masked(pm)          # doctest: +SKIP
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from fxprune.core.finalize import finalize
from fxprune.core.finalize.verify import ieee_float32, thresholded
from fxprune.core.ir import ExampleInputs


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and buffer informative random values, in place.

    Freshly initialised networks hide bugs: BatchNorm statistics are 0 and 1, some heads
    are zero-initialised, so whole channels contribute nothing. Here every channel does.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not p.is_floating_point() or p.numel() == 0:
                continue
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)
            if leaf == "running_var":
                p.copy_(0.5 + torch.rand(p.shape, generator=gen).to(p.dtype))
            elif leaf == "running_mean":
                p.copy_(0.1 * noise)
            elif p.dim() <= 1 or (p == p.flatten()[0]).all():
                p.copy_(1.0 + 0.2 * noise if leaf == "weight" or (p == 1).all() else 0.1 * noise)
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(noise * (1.0 / fan_in) ** 0.5)
    return model


def zero_channels(pm, fraction: float = 0.5, seed: int = 0, gates: bool = False, kept=None,
                  removed: float = 0.0) -> int:
    """Switch off a random ``fraction`` of every group's mask (at least one channel, never all of a
    group), and with ``gates`` each gate with probability ``fraction``. Returns how many.

    Args:
        kept: ``(low, high)``: give the channels and gates that stay random values in that range, as
            sparse training leaves them (finalize folds them into the weights); None leaves them.
        removed: the entries switched off get random magnitudes up to this (finalize removes them
            with ``threshold >= removed``); 0 zeroes them.
    """
    gen = torch.Generator().manual_seed(seed)

    def off(n: int) -> torch.Tensor:
        return removed * torch.rand(n, generator=gen) if removed else torch.zeros(n)

    zeroed = 0
    with torch.no_grad():
        for mask in pm.fxprune.masks.values():
            n = mask.numel()
            if kept is not None:
                mask.copy_(kept[0] + (kept[1] - kept[0]) * torch.rand(n, generator=gen))
            k = min(max(1, int(round(fraction * n))), n - 1)
            if k > 0:
                mask[torch.randperm(n, generator=gen)[:k]] = off(k).to(mask.dtype)
                zeroed += k
        if gates:
            for gate in pm.fxprune.gates.values():
                if kept is not None:
                    gate.fill_(float(kept[0] + (kept[1] - kept[0]) * torch.rand((), generator=gen)))
                if torch.rand((), generator=gen) < fraction:
                    gate.fill_(float(off(1)))
                    zeroed += 1
    return zeroed


def outputs(model, inputs, train: bool = False):
    """The model's output tensors on ``inputs`` (a tensor, a tuple of positional inputs, a dict of keyword
    inputs), without gradients; in eval mode, or with ``train`` in train mode (batch statistics), its
    buffers (running statistics) restored afterwards."""
    buffers = {name: b.clone() for name, b in model.named_buffers()} if train else {}
    model.train(train)
    try:
        with torch.no_grad():
            out = ExampleInputs.of(inputs)(model)
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        model.eval()
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def assert_finalized_equals_masked(pm, inputs=None, threshold: float = 0.0, rtol: float = 1e-4, atol: float = 1e-5,
                                   more_inputs=(), train: bool = False):
    """finalize(pm) computes what pm computes with its zeroed masks; shapes shrank where masked.

    Args:
        pm: a prepared model with some masks or gates set.
        inputs: inputs to compare on (default: those prepare recorded).
        threshold: finalize's threshold: mask entries and gates at or below it count as zero.
        more_inputs: further input tuples to compare on (finalize checks only the example inputs).
        train: compare in train mode as well (BatchNorm on batch statistics).

    Returns:
        The finalized model.
    """
    inputs = inputs if inputs is not None else pm.fxprune_state.example
    finalized = finalize(pm, threshold=threshold)
    finalized.graph.lint()
    assert not any(type(m).__module__.startswith("fxprune") for m in finalized.modules()), "fxprune module left"
    assert not hasattr(finalized, "fxprune"), "mask bank left in the finalized model"
    for each, mode in [(x, False) for x in (inputs, *more_inputs)] + ([(inputs, True)] if train else []):
        with ieee_float32():  # no TF32 on CUDA: its rounding alone exceeds rtol
            with thresholded(pm, threshold):  # the masked model: masks at or below the threshold count as zero
                expected = outputs(pm, each, train=mode)
            got = outputs(finalized, each, train=mode)
        assert len(expected) == len(got)
        for e, g in zip(expected, got):
            scale = max(1.0, float(e.abs().max())) if e.numel() else 1.0
            torch.testing.assert_close(g, e, rtol=rtol, atol=atol * scale,
                                       msg=lambda m, mode=mode: f"in {'train' if mode else 'eval'} mode: {m}")
    zeroed = sum(int((m.abs() <= threshold).sum()) for m in pm.fxprune.masks.values())
    gated = sum(int(g.abs() <= threshold) for g in pm.fxprune.gates.values())
    before = sum(p.numel() for n, p in pm.named_parameters() if not n.startswith("fxprune."))
    after = sum(p.numel() for p in finalized.parameters())
    if zeroed or gated:
        assert after < before, f"nothing shrank: {before} parameters before, {after} after"
    return finalized


# Input sizes for torchvision classifiers: the smallest each accepts, at least 32 pixels, so
# that checks over the whole zoo stay fast. ViT and MaxViT are built for 224 only.
TORCHVISION_SIZES = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 224, "vit_b_16": 224, "vit_b_32": 224,
                     "vit_h_14": 224, "vit_l_16": 224, "vit_l_32": 224}


def torchvision_classifiers() -> list:
    """Every classifier in ``torchvision.models``."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def small_input(name: str, batch: int = 1):
    """A random input of the smallest convenient size for a torchvision classifier."""
    size = TORCHVISION_SIZES.get(name, 32)
    return torch.randn(batch, 3, size, size)
