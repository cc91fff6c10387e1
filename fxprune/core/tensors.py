"""Small helpers for reading and replacing a module tree's tensors and modes.

finalize's copy of the prepared model shares its tensors with the prepared model until
they are replaced, so every change here builds a new tensor instead of writing into one.

Example:
    >>> m = torch.nn.Linear(2, 2, bias=False)
    >>> old = m.weight
    >>> rescale(m, "weight", 2.0)
    >>> m.weight is old, bool((m.weight == 2 * old).all())
    (False, True)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.fx
import torch.nn as nn


def owner_and_attribute(target: str) -> tuple[str, str]:
    """``"layer1.0.conv1.weight"`` -> ``("layer1.0.conv1", "weight")``; a top-level name has owner ``""``."""
    owner, _, attr = target.rpartition(".")
    return owner, attr


def owner_of(root: nn.Module, target: str) -> tuple[nn.Module, str]:
    """The module holding the attribute ``target`` names, and the attribute's name."""
    owner, attr = owner_and_attribute(target)
    return (root.get_submodule(owner) if owner else root), attr


def tensor_at(root: nn.Module, target: str):
    """The attribute a dotted ``get_attr`` target names (a parameter, buffer or other value)."""
    module, attr = owner_of(root, target)
    return getattr(module, attr)


def rescale(owner: nn.Module, attr: str, factor) -> None:
    """Replace ``owner.attr`` by ``owner.attr * factor``, as a new tensor of the same kind."""
    old = getattr(owner, attr)
    new = old.detach() * (factor.to(old.dtype) if isinstance(factor, torch.Tensor) else factor)
    if isinstance(old, nn.Parameter):
        setattr(owner, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        owner._buffers[attr] = new


def dtype_and_device(module: nn.Module) -> tuple:
    """The dtype and device of a module's first floating-point parameter (float32 on the CPU if none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    return torch.float32, torch.device("cpu")


def nodes_by_name(graph: torch.fx.Graph) -> dict:
    """Node name -> node."""
    return {n.name: n for n in graph.nodes}


@contextmanager
def modes_kept(*models: nn.Module) -> Iterator[None]:
    """Restore every submodule's ``training`` flag on exit, whatever the body set."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Run the body with ``models`` in eval mode, then give every submodule its mode back."""
    with modes_kept(*models):
        for model in models:
            model.eval()
        yield
