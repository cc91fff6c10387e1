"""Shape and channel propagation: run the graph once and apply every node's rule.

Like ``torch.fx.passes.shape_prop.ShapeProp``, :class:`ChannelFlow` interprets the graph
on example inputs. Beside each value it computes the node's *layout* (which atoms each
index of each dimension depends on, see :mod:`fxprune.core.atoms`) by calling the node's
rule. Parameters get fresh atoms the first time a rule touches them. What cannot be
understood becomes a barrier: its channels are frozen and the reason is kept.

Only shapes matter here, and almost all of a forward pass's arithmetic is in a few ops
(convolutions, linear layers, matrix products, attention). Their outputs are *stand-ins*:
zeros of the right shape and dtype, the shape computed directly (convolution and linear
modules) or on meta tensors. A cheap module that keeps its input's shape (BatchNorm,
activations, dropout) applied to a stand-in returns that stand-in instead of computing;
everything else runs for real, which costs less than FakeTensor's per-op bookkeeping.
Values computed from parameters and buffers alone (index tables) stay exact; activations
after a heavy op are not the model's, so an op whose output *shape* depends on activation
values (``nonzero``) would see zeros. Index-coded probes (:meth:`ChannelFlow.call`) always
run for real.

Example:
    >>> gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()))
    >>> flow = ChannelFlow(gm, PruneConfig()).propagate(torch.randn(1, 3, 8, 8))
    >>> flow.layouts["_1"][1].shape      # the ReLU's channel dimension: 8 rows of atoms
    (8, 1)
"""

from __future__ import annotations

import operator
import os
from typing import Any, Optional

import torch
import torch.fx
import torch.nn as nn
from torch.utils import _pytree as pytree

from fxprune.config import PruneConfig
from fxprune.core.atoms import AtomTable, empty_dim, has_atoms
from fxprune.core.ir import Barrier, MaskSite, ParamRecord
from fxprune.core.rules import RuleContext, empty_like, lookup
from fxprune.core.tensors import modes_kept, owner_and_attribute
from fxprune.errors import FxPruneError, UnsupportedOpError, op_name


def propagate(gm: torch.fx.GraphModule, config: PruneConfig, example_inputs) -> "ChannelFlow":
    """Shape and channel propagation: heavy ops shape-only, or every op for real if that fails."""
    try:
        return ChannelFlow(gm, config).propagate(*example_inputs)
    except FxPruneError:
        raise
    except Exception:  # zeros where the model needed its own activations: run it for real
        return ChannelFlow(gm, config).propagate(*example_inputs, shape_only=False)


class ChannelFlow(torch.fx.Interpreter):
    """Interprets a GraphModule on example inputs, computing every node's layout."""

    def __init__(self, gm: torch.fx.GraphModule, config: PruneConfig):
        super().__init__(gm, garbage_collect_values=True)
        self.config = config
        self.atoms = AtomTable()
        self.layouts: dict[str, Any] = {}
        self.shapes: dict[str, Any] = {}
        self.params: dict[int, ParamRecord] = {}
        self.params_by_node: dict[str, ParamRecord] = {}
        self.sites: dict[tuple, MaskSite] = {}
        self.memo: dict = {}
        self.barriers: list[Barrier] = []
        self.approximate: dict[str, int] = {}  # norm node -> number of trailing dimensions it normalises
        self.shape_only = True
        self.fake: set[str] = set()  # nodes whose value is only a stand-in of the right shape
        self.submodules = dict(gm.named_modules(remove_duplicate=False))  # path -> module, looked up per node

    def propagate(self, *example_inputs, shape_only: bool = True) -> "ChannelFlow":
        """Run the graph in eval mode without gradients; returns self.

        Args:
            example_inputs: the inputs to run on.
            shape_only: compute the heavy ops' outputs as zeros of the right shape (see
                the module docs); False runs every op for real.
        """
        self.shape_only = shape_only
        with modes_kept(self.module), torch.no_grad():
            self.module.eval()
            self.run(*example_inputs)
        return self

    # -- interpretation -----------------------------------------------------------------
    def fetch_args_kwargs_from_env(self, n: torch.fx.Node) -> tuple:
        """The node's arguments with its values filled in, in fresh mutable lists and dicts.

        FX keeps a node's arguments in immutable lists; the module's generated code builds a new
        list at every call instead, and some callees edit theirs in place (torchvision's
        ``_get_window_and_shift_size`` in swin3d). They get a copy of their own, as in the model.
        """
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        return _mutable(args), _mutable(kwargs)

    def run_node(self, n: torch.fx.Node) -> Any:
        module = self.submodule(n.target) if n.op == "call_module" else None
        handler = lookup(n, module) if n.op in ("call_module", "call_function", "call_method") else None
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            out = self._stand_in(n, handler, module, args, kwargs) if self.shape_only and handler else None
            if out is None:
                out = getattr(self, n.op)(n.target, args, kwargs)
            else:
                self.fake.add(n.name)
        self.shapes[n.name] = tuple(out.shape) if isinstance(out, torch.Tensor) else pytree.tree_map(_shape_of, out)
        self.layouts[n.name] = self.layout_for(n, args, kwargs, out, handler, module)
        return out

    def _stand_in(self, n: torch.fx.Node, handler, module, args, kwargs):
        """A heavy op's output as zeros of the right shape (computed by its handler or on meta tensors),
        a cheap shape-keeping module's stand-in input passed through; None for other ops or where meta fails."""
        if module is not None and (module._forward_hooks or module._forward_pre_hooks):
            return None
        if module is not None and not handler.heavy:
            x = args[0] if len(args) == 1 and not kwargs else None
            if isinstance(x, torch.Tensor) and isinstance(n.args[0], torch.fx.Node) and n.args[0].name in self.fake \
                    and handler.keeps_shape_of(module, x):
                return x
            return None
        if not handler.heavy:
            return None
        out = handler.stand_in(module, args, kwargs)
        if out is not None:
            return out
        if module is not None:
            meta = {k: v.to("meta") for k, v in
                    list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))}
            op = lambda *a, **k: torch.func.functional_call(module, meta, a, k)  # noqa: E731
        elif n.op == "call_function":
            op = n.target
        else:
            op = lambda obj, *a, **k: getattr(obj, n.target)(*a, **k)  # noqa: E731
        tensors = [v for v in pytree.tree_leaves((args, kwargs)) if isinstance(v, torch.Tensor)]
        if not tensors:
            return None
        device = tensors[0].device
        to_meta = lambda v: v.to("meta") if isinstance(v, torch.Tensor) else v  # noqa: E731
        try:
            out = op(*pytree.tree_map(to_meta, args), **pytree.tree_map(to_meta, kwargs))
        except Exception:  # no meta kernel, or an argument meta cannot take: run it for real
            return None
        return pytree.tree_map(
            lambda t: torch.zeros(t.shape, dtype=t.dtype, device=device) if isinstance(t, torch.Tensor) else t, out)

    def call(self, node: torch.fx.Node, args, kwargs):
        """Call a node's op on other arguments, for real (used by rules that probe an op)."""
        if node.op == "call_module":
            return self.submodule(node.target)(*args, **kwargs)
        if node.op == "call_method":
            self_obj, *rest = args
            return getattr(self_obj, node.target)(*rest, **kwargs)
        return node.target(*args, **kwargs)

    def submodule(self, path: str) -> nn.Module:
        module = self.submodules.get(path)
        return module if module is not None else self.module.get_submodule(path)

    def layout_of(self, node: torch.fx.Node):
        return self.layouts.get(node.name)

    def layout_for(self, n: torch.fx.Node, args, kwargs, out, handler, module):
        if n.op == "placeholder":
            return empty_like(out)
        if n.op == "get_attr":
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                layout = self.param_layout(out, owner_and_attribute(n.target), None)
                self.params_by_node[n.name] = self.params[id(out)]
                return layout
            return empty_like(out)
        if n.op == "output":
            for leaf in pytree.tree_leaves([self.layouts.get(a.name) for a in n.all_input_nodes]):
                if leaf is not None and hasattr(leaf, "shape"):
                    self.atoms.freeze(leaf, "reaches the model output")
            return None
        ctx = RuleContext(self, n, args, kwargs, out, module)
        if handler is None:
            if not any(isinstance(v, torch.Tensor) for v in pytree.tree_leaves(out)):
                return empty_like(out)
            return self._barrier(ctx, n, "fxprune has no rule for this op")
        try:
            lay = handler.flow(ctx)
        except Exception as e:  # a rule that fails must not take prepare down with it
            if os.environ.get("FXPRUNE_DEBUG"):
                raise
            return self._barrier(ctx, n, f"its rule failed ({type(e).__name__}: {e})")
        if lay is None:
            return empty_like(out)
        if not _matches(lay, out):
            return self._barrier(ctx, n, "its rule returned a layout that does not fit the output")
        return lay

    def _barrier(self, ctx: RuleContext, n: torch.fx.Node, reason: str):
        touches = any(has_atoms(d) for *_, lay in ctx.tensor_args() for d in lay)
        if touches and self.config.strict:
            raise UnsupportedOpError(
                f"fxprune cannot prune through this op: {reason}", node=n,
                hint="register a handler with fxprune.register_handler, declare the module a leaf, "
                     "or drop strict=True to freeze the channels it touches")
        if touches:
            self.barriers.append(Barrier(n.name, op_name(n), reason))
        ctx.barrier(reason)
        return empty_like(ctx.out)

    # -- parameters and mask sites ---------------------------------------------------------
    def param_layout(self, tensor: torch.Tensor, ref: tuple, roles: Optional[dict], tie: Optional[dict] = None):
        """The layout of a parameter or buffer, created the first time it is seen.

        Args:
            tensor: the parameter; keyed by identity, so tied weights share atoms.
            ref: ``(owner module path, attribute name)``.
            roles: dimension -> role; only these dimensions get atoms. None: every dimension.
            tie: dimension -> an existing dimension layout this one is known to equal; a new
                parameter then shares that layout instead of getting atoms of its own.
        """
        record = self.params.get(id(tensor))
        if record is None:
            name = ".".join(p for p in ref if p)
            dims = []
            for d, size in enumerate(tensor.shape):
                if tie and d in tie and tie[d] is not None and tie[d].shape[0] == size:
                    dims.append(tie[d])
                    continue
                wanted = tensor.is_floating_point() and (roles is None or d in roles)
                dims.append(self.atoms.new_space(size, f"{name}:{d}") if wanted else empty_dim(size))
            record = ParamRecord(refs=[ref], layout=tuple(dims), roles=dict(roles or {}), shape=tuple(tensor.shape))
            self.params[id(tensor)] = record
        else:
            if ref not in record.refs:
                record.refs.append(ref)
            for d, role in (roles or {}).items():
                record.roles.setdefault(d, role)
        return record.layout

    def declare_roles(self, node: torch.fx.Node, roles: dict) -> None:
        """Give the roles of a parameter read with get_attr and used by a functional op."""
        while node.name not in self.params_by_node and _is_slicing(node):
            node = node.args[0]  # a chunk or split of a parameter keeps its dimensions
        record = self.params_by_node.get(node.name)
        if record is not None:
            for d, role in roles.items():
                record.roles.setdefault(d, role)

    def add_site(self, source: torch.fx.Node, dim: int, consumer: torch.fx.Node) -> None:
        """Record that ``consumer`` mixes the channels of ``source`` along ``dim``."""
        key = (source.name, dim)
        site = self.sites.get(key)
        if site is None:
            site = self.sites[key] = MaskSite(source.name, dim, [])
        if consumer.name not in site.consumers:
            site.consumers.append(consumer.name)

    def note_approximate(self, node: torch.fx.Node, dims) -> None:
        """Record that ``node`` normalises over its last ``len(dims)`` dimensions, whose channels may be pruned."""
        self.approximate[node.name] = len(dims)


def _mutable(value):
    """``value`` with every list and dict in it (FX's immutable ones included) copied into a plain one."""
    if isinstance(value, list):
        return [_mutable(v) for v in value]
    if isinstance(value, dict):
        return {k: _mutable(v) for k, v in value.items()}
    if type(value) is tuple:
        return tuple(_mutable(v) for v in value)
    return value


def _shape_of(v):
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def _matches(lay, out) -> bool:
    if isinstance(out, torch.Tensor):
        return isinstance(lay, tuple) and len(lay) == out.dim() and all(
            d.shape[0] == s for d, s in zip(lay, out.shape))
    if isinstance(out, (tuple, list)):
        return isinstance(lay, (tuple, list)) and len(lay) == len(out) and all(
            _matches(a, b) for a, b in zip(lay, out))
    return True


def _is_slicing(node: torch.fx.Node) -> bool:
    """A chunk, split or getitem of a tensor (or of its pieces), which keeps every dimension."""
    if not node.args or not isinstance(node.args[0], torch.fx.Node):
        return False
    if node.op == "call_method":
        return node.target in ("chunk", "split", "tensor_split")
    return node.op == "call_function" and node.target in (operator.getitem, torch.chunk, torch.split,
                                                           torch.tensor_split)
