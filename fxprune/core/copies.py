"""Copies of tensors and modules that cost nothing until one side writes (copy-on-write).

prepare copies the user's model so that nothing fxprune does can reach it, and finalize
copies the tensors it does not slice. A plain ``deepcopy`` clones every weight, which on
a large model is most of prepare's time and doubles its memory, although prepare,
pruning and finalize only read the weights. ``torch._lazy_clone`` gives a copy that
shares the memory until either side first writes; the writer then gets its own copy.
Both sides keep their values whatever the other does, exactly as with ``clone``.

Copy-on-write is only used where it cannot change what the user's tensor is: a dense,
non-quantized tensor that shares its storage with no other parameter or buffer (views of
one storage must stay views of one storage in the copy), is not in shared memory (a
write on the user's side would leave the shared segment) and is not pinned. Anything else,
or a torch without ``_lazy_clone``, falls back to an ordinary clone or deepcopy.

Example:
    >>> a = torch.ones(3)
    >>> b = clone(a)
    >>> _ = b.add_(1)
    >>> a.tolist(), b.tolist()
    ([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict

import torch
import torch.nn as nn

_LAZY = getattr(torch, "_lazy_clone", None)


def clone(t: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``t``: copy-on-write where that is safe, else ``t.detach().clone()``."""
    t = t.detach()
    return _LAZY(t) if _LAZY is not None and _lazy_ok(t) else t.clone()


def clone_like(t: torch.Tensor) -> torch.Tensor:
    """:func:`clone` of ``t`` as the same kind: a Parameter stays one, ``requires_grad`` and
    attributes set on the tensor (``p.no_decay = True``) are kept."""
    copied = clone(t)
    copied = nn.Parameter(copied, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) \
        else copied.requires_grad_(t.requires_grad)
    if t.__dict__:
        copied.__dict__.update(copy.deepcopy(t.__dict__))
    return copied


def copy_module(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` whose parameters and buffers are copy-on-write copies.

    Falls back to a plain deepcopy when any tensor of the model cannot be copied lazily
    (see the module docstring) or two of its tensors share a storage.
    """
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}.values()
    if _LAZY is None or not all(_lazy_ok(t) for t in tensors) or _storages_shared(tensors):
        return copy.deepcopy(model)
    if any(type(t) not in (nn.Parameter, torch.Tensor) for t in tensors):  # subclasses: deepcopy knows them
        return copy.deepcopy(model)
    return deepcopy_modules(model, {id(t): clone_like(t) for t in tensors})


def deepcopy_modules(obj, memo: dict):
    """``copy.deepcopy(obj, memo)``, faster on trees of modules.

    deepcopy takes every module through pickling's ``__reduce_ex__`` and copies each of its
    twenty-odd hook dictionaries the same way, which is most of the time prepare and
    finalize spent copying. A module whose class copies the default way (no
    ``__deepcopy__``, ``__reduce__``, own ``__getstate__`` or ``__slots__``) is copied here
    by the same steps without that detour: a new instance, its state deep-copied through
    ``memo``, then ``__setstate__``. Anything else goes to ``copy.deepcopy``; the result is
    the same either way.
    """
    found = memo.get(id(obj), _MISSING)
    if found is not _MISSING:
        return found
    cls = type(obj)
    if not isinstance(obj, nn.Module) or not _copies_by_default(cls):
        return copy.deepcopy(obj, memo)
    new = cls.__new__(cls)
    memo[id(obj)] = new
    state = {}
    for key, value in obj.__getstate__().items():
        kind = type(value)
        if kind in _ATOMIC or (kind is tuple and all(type(v) in _ATOMIC for v in value)):
            state[key] = value
        elif kind in _CONTAINERS and not value:
            state[key] = kind()
        elif key == "_modules":
            state[key] = kind((name, deepcopy_modules(m, memo)) for name, m in value.items())
        else:
            state[key] = copy.deepcopy(value, memo)
    new.__setstate__(state)
    return new


_MISSING = object()
_ATOMIC = frozenset({type(None), bool, int, float, complex, str, bytes, type, torch.dtype, torch.device,
                     torch.layout, torch.memory_format})
_CONTAINERS = frozenset({dict, OrderedDict, list, set})


@functools.cache
def _copies_by_default(cls) -> bool:
    return (cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
            and cls.__getstate__ is nn.Module.__getstate__ and not hasattr(cls, "__deepcopy__")
            and not any("__slots__" in vars(k) for k in cls.__mro__[:-1]))


def _lazy_ok(t: torch.Tensor) -> bool:
    return (t.layout == torch.strided and not t.is_quantized and t.device.type != "meta"
            and not t.is_shared() and not (t.device.type == "cpu" and t.is_pinned()))


def _storages_shared(tensors) -> bool:
    seen = set()
    for t in tensors:
        key = t.untyped_storage()._cdata
        if key in seen:
            return True
        seen.add(key)
    return False
