"""MACs and parameters, measured with ``torch.utils.flop_counter``.

MACs are half the FLOPs that PyTorch's flop counter attributes to matrix products,
convolutions and attention (the ops that dominate a network's cost); element-wise ops
are not counted, as is usual for pruning papers.

Example:
    >>> count(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224))    # doctest: +SKIP
    Count(macs=1814083584, params=11689512)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from fxprune.core.ir import ExampleInputs
from fxprune.core.tensors import eval_mode


@dataclass(frozen=True)
class Count:
    """A model's cost: multiply-accumulates for one forward pass, and parameter elements."""

    macs: int
    params: int


def count(model: nn.Module, example_inputs) -> Count:
    """MACs of one forward pass on ``example_inputs`` and the number of parameters.

    Args:
        model: any module (a prepared model counts its masks as parameters, which are
            few; its mask multiplies cost no MACs).
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.

    Returns:
        A :class:`Count`.
    """
    example = ExampleInputs.of(example_inputs)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # nn.MultiheadAttention's fused inference path is invisible to the flop counter:
        # turn it off so that its projections are counted like any linear layer.
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), eval_mode(model), FlopCounterMode(display=False) as counter:
            example(model)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    seen = set()
    params = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            params += p.numel()
    return Count(macs=int(counter.get_total_flops()) // 2, params=params)
