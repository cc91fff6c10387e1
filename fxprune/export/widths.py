"""Saving a pruned model in its own classes, and rebuilding it from its original constructor.

A model that ``finalize(pm, keep_classes=True)`` returned has layers of other widths than its
constructor builds (and, where layers were pruned differently, no config describes it). Its
weights are saved beside a *width manifest*: the shape of every tensor and the plain size
attributes of every module. Loading builds the model the usual way (``build()``: the
constructor, or a Hugging Face class from its config), gives each module those widths and
attributes, and loads the weights, all with ``torch.load(weights_only=True)``: nothing is
unpickled.

Example:
    >>> save_widths(small, "llama-pruned.pt")                                   # doctest: +SKIP
    >>> again = load_widths("llama-pruned.pt", lambda: LlamaForCausalLM(config))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from fxprune.errors import FxPruneError

FORMAT = 1
_PLAIN = (bool, int, float, str, type(None))


def save_widths(model: nn.Module, path: os.PathLike) -> Path:
    """Write ``model``'s weights and its width manifest to ``path`` (a ``torch.save`` file of tensors and
    plain values only).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = {name: list(t.shape) for name, t in _tensors(model)}
    attributes = {name: {k: _plain(v) for k, v in vars(m).items() if _is_size_attribute(k, v)}
                  for name, m in model.named_modules()}
    saved = model.state_dict()
    extra = {name: b for name, b in model.named_buffers() if name not in saved}  # non-persistent ones
    torch.save({"format": FORMAT, "class": type(model).__qualname__, "state_dict": saved, "buffers": extra,
                "shapes": shapes, "attributes": attributes}, path)
    return path


def load_widths(path: os.PathLike, build: Callable[[], nn.Module]) -> nn.Module:
    """Rebuild a model saved by :func:`save_widths` from its original constructor.

    Args:
        path: the file.
        build: makes the unpruned model (its constructor, or its class from its config).

    Raises:
        FxPruneError: the file is not such a file, or ``build()`` makes another model.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FxPruneError(f"{path} does not load with torch.load(weights_only=True): {type(e).__name__}",
                           hint="pass a file written by fxprune.export.save_widths") from e
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise FxPruneError(f"{path} is not a width manifest of this fxprune", hint="write it with save_widths")
    model = build()
    if type(model).__qualname__ != saved["class"]:
        raise FxPruneError(f"build() made a {type(model).__qualname__}, the file holds a {saved['class']}",
                           hint="pass the constructor of the model that was saved")
    tensors = dict(_tensors(model))
    missing = sorted(set(saved["shapes"]) - set(tensors))
    if missing:
        raise FxPruneError(f"build() made a model without {', '.join(missing[:3])}",
                           hint="build the same architecture that was pruned")
    resized: dict = {}  # tied tensors stay tied: one new tensor per old one
    for name, shape in saved["shapes"].items():
        _resize(model, name, tensors[name], shape, resized)
    modules = dict(model.named_modules())
    for name, attributes in saved["attributes"].items():
        if name in modules:
            for key, value in attributes.items():
                setattr(modules[name], key, tuple(value) if isinstance(value, list) else value)
    model.load_state_dict(saved["state_dict"])
    with torch.no_grad():
        for name, value in saved["buffers"].items():  # non-persistent buffers: what the model computed, pruned
            owner, _, attr = name.rpartition(".")
            (model.get_submodule(owner) if owner else model)._buffers[attr] = value
    return model


def _tensors(model: nn.Module) -> list:
    return list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))


def _is_size_attribute(key: str, value) -> bool:
    if key.startswith("_") or key == "training":
        return False
    return isinstance(value, _PLAIN) or (isinstance(value, (tuple, list)) and all(isinstance(v, _PLAIN) for v in value))


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _resize(model: nn.Module, name: str, tensor: torch.Tensor, shape: list, resized: dict) -> None:
    """Give the tensor ``name`` the saved shape (its values come from the state dict)."""
    if list(tensor.shape) == shape:
        return
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    new = resized.get(id(tensor))
    if new is None:
        new = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
        if isinstance(tensor, nn.Parameter):
            new = nn.Parameter(new, requires_grad=tensor.requires_grad)
        resized[id(tensor)] = new
    if isinstance(new, nn.Parameter):
        setattr(module, attr, new)
    else:
        module._buffers[attr] = new
