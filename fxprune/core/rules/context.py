"""What a handler's flow rule sees of one node: its values, its arguments' layouts, the atom table.

A flow rule reads the layouts of the node's tensor arguments (:meth:`RuleContext.layout`),
ties atoms together (:meth:`RuleContext.unify`), marks where channels are consumed by an
op that mixes them (:meth:`RuleContext.consume`: a mask goes there), freezes what it
cannot prune (:meth:`RuleContext.freeze`), and returns the layout of the output.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.fx
from torch.utils import _pytree as pytree

from fxprune.core.atoms import AtomTable, Layout, empty_layout, has_atoms


def op_name(target) -> str:
    """What a node calls, as one name for its every form: ``"transpose"`` for the method
    ``"transpose"``, ``torch.transpose`` and ``aten.transpose.int``."""
    if isinstance(target, str):
        return target
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:  # in place or not, the same op: add_ is add
        name = packet.__name__
        return name[:-1] if name.endswith("_") and not name.endswith("__") else name
    return getattr(target, "__name__", str(target))


class RuleContext:
    """What a rule sees of one node: its values, its arguments' layouts, and the atom table."""

    def __init__(self, flow, node: torch.fx.Node, args, kwargs, out, module):
        self.flow, self.node, self.module = flow, node, module  # the propagation, the node, the module it calls
        self.args, self.kwargs, self.out = args, kwargs, out  # its argument values and its output value
        self.atoms: AtomTable = flow.atoms

    @property
    def op(self) -> str:
        """The op's name, the same for its method, function and ATen forms (see :func:`op_name`)."""
        return op_name(self.node.target)

    # -- reading arguments ------------------------------------------------------------
    def arg(self, index: int, name: Optional[str] = None, default=None):
        """The value of a positional-or-keyword argument."""
        if index is not None and index < len(self.args):
            return self.args[index]
        if name is not None and name in self.kwargs:
            return self.kwargs[name]
        return default

    def arg_node(self, index: int, name: Optional[str] = None):
        """The FX node behind an argument (None for constants)."""
        if index is not None and index < len(self.node.args):
            a = self.node.args[index]
        else:
            a = self.node.kwargs.get(name) if name else None
        return a if isinstance(a, torch.fx.Node) else None

    def layout(self, index: int, name: Optional[str] = None) -> Optional[Layout]:
        """The layout of a tensor argument, or None when it is not a traced tensor."""
        n = self.arg_node(index, name)
        if n is None:
            v = self.arg(index, name)
            return empty_layout(v.shape) if isinstance(v, torch.Tensor) else None
        return self.flow.layout_of(n)

    def tensor_args(self):
        """Every floating-point tensor among the arguments, as ``(path, node, value, layout)``."""
        flat_nodes, _ = pytree.tree_flatten((self.node.args, self.node.kwargs))
        flat_vals, _ = pytree.tree_flatten((self.args, self.kwargs))
        out = []
        for i, (n, v) in enumerate(zip(flat_nodes, flat_vals)):
            if isinstance(v, torch.Tensor):
                lay = self.flow.layout_of(n) if isinstance(n, torch.fx.Node) else empty_layout(v.shape)
                out.append((i, n, v, lay))
        return out

    # -- parameters -------------------------------------------------------------------
    def param(self, name: str, roles: Optional[dict] = None, tie: Optional[dict] = None) -> Optional[Layout]:
        """The layout of a parameter or buffer of the called module (created on first use).

        Args:
            name: the attribute name on the module.
            roles: dimension -> ``"out"``, ``"in"`` or ``"channel"``; only these get atoms.
            tie: dimension -> a layout that dimension equals (saves atoms and unions).
        """
        tensor = getattr(self.module, name, None)
        if not isinstance(tensor, torch.Tensor):
            return None
        lay = self.flow.param_layout(tensor, (self.node.target, name), roles, tie)
        for d, other in (tie or {}).items():
            if other is not None:
                self.unify(lay[d], other)
        return lay

    def param_arg(self, index: int, name: str, roles: dict) -> Optional[Layout]:
        """The layout of a weight passed to a functional op, with its roles recorded when
        the weight is a parameter of the model (read with get_attr, perhaps chunked)."""
        n = self.arg_node(index, name)
        if n is not None:
            self.flow.declare_roles(n, roles)
        return self.layout(index, name)

    def memo(self, key, make: Callable[[], Any]):
        """A value computed once per key (e.g. the group factor of a shared conv)."""
        memo = self.flow.memo
        if key not in memo:
            memo[key] = make()
        return memo[key]

    # -- tying atoms ------------------------------------------------------------------
    def unify(self, a: np.ndarray, b: np.ndarray, reason: str = "") -> None:
        self.atoms.unify(a, b, reason or f"coupled at {self.node.name}")

    def freeze(self, dims, reason: str) -> None:
        """Freeze the atoms of one dimension layout, a whole layout, or a list of them."""
        if dims is None:
            return
        if isinstance(dims, np.ndarray):
            dims = [dims]
        for d in dims:
            if d is not None and has_atoms(d):
                self.atoms.freeze(d, f"{reason} (at {self.node.name})")

    def new_space(self, size: int, name: str) -> np.ndarray:
        return self.atoms.new_space(size, f"{name}@{self.node.name}")

    def consume(self, index: int, dim: int, name: Optional[str] = None) -> None:
        """Channels of argument ``index`` along ``dim`` are mixed by this op: mask them here."""
        src = self.arg_node(index, name)
        lay = self.layout(index, name)
        if src is None or lay is None:
            return
        dim = dim % len(lay)
        if has_atoms(lay[dim]):
            self.flow.add_site(src, dim, self.node)

    def barrier(self, reason: str):
        """Freeze every atom of every tensor argument; the output carries no atoms."""
        for _, _, _, lay in self.tensor_args():
            self.freeze(list(lay), reason)
        return None

    def empty_out(self):
        """A layout with no atoms shaped like this node's output."""
        return empty_like(self.out)



def empty_like(value):
    """Empty layouts mirroring a (possibly nested) output value."""
    if isinstance(value, torch.Tensor):
        return empty_layout(value.shape)
    if isinstance(value, (tuple, list)):
        return tuple(empty_like(v) for v in value)
    return None


