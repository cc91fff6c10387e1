"""The handler registry: everything fxprune knows about one kind of op, found in one place.

A :class:`Handler` is registered under the keys FX calls an op by: the module type
(``call_module``), the function object (``call_function``: ``torch.cat``,
``operator.add``) or the method name (``call_method``: ``"view"``). Only
:meth:`Handler.flow` is required; the other hooks say what the stages after
propagation need to know, and default to "nothing to do":

    prepare    flow             how channels flow through the op (ties, consumes, freezes)
               heavy            propagation needs only its output's shape
               keeps_shape_of   its output is its input's shape: a stand-in passes through
    finalize   resize_module    recompute a module's size attributes after its tensors were sliced
               resize_node      update channel counts baked into a call's arguments
               fold_input       fold a per-input-channel scale (a mask) into the weights
               scale_output     fold a scalar (a gate) into the weights
               passes_scale     ``op(s * x) == s * op(x)`` for this scalar ``s`` (a gate passes through)
               absorb_input_scale   a BatchNorm undoes a common scale of its input
               fresh_output     the output is a new tensor its backward does not read
    cost       weight_positions at how many output positions each weight is applied

Example (a module fxprune cannot trace into, supported by one handler):

    >>> class ScaledLinear(torch.nn.Linear):                      # doctest: +SKIP
    ...     def forward(self, x):
    ...         return torch.nn.functional.linear(x, self.weight * self.gain, self.bias)
    >>> @register(ScaledLinear)                                  # doctest: +SKIP
    ... class ScaledLinearHandler(Handler):
    ...     def flow(self, ctx):
    ...         x = ctx.layout(0)
    ...         w = ctx.param("weight", roles={0: "out", 1: "in"}, tie={1: x[-1]})
    ...         ctx.consume(0, -1)                   # it mixes its input channels: a mask goes there
    ...         return tuple(x[:-1]) + (w[0],)
    ...     def resize_module(self, module, in_channels):
    ...         module.out_features, module.in_features = module.weight.shape
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
import torch.fx
import torch.nn as nn

Key = Union[type, Callable, str]


class Handler:
    """Everything fxprune knows about one kind of op or layer. Subclass it and register it.

    Only :meth:`flow` must be written. A module registered with a handler is a leaf for
    tracing: fxprune never traces into it, so its own ``forward`` runs as it is.
    """

    #: propagation computes only the output's shape (on meta tensors, or :meth:`stand_in`)
    heavy: bool = False
    #: the output is a fresh tensor that the op's backward does not read (``a += b`` may write into it)
    fresh_output: bool = False
    #: :meth:`fold_input` can fold a scale of the input channels into the weights
    folds_input: bool = False
    #: :meth:`absorb_input_scale` can undo a common scale of the input
    absorbs_scale: bool = False

    def flow(self, ctx) -> Any:
        """How channels flow through the op: tie, consume and freeze atoms through ``ctx``
        (a :class:`~fxprune.core.rules.context.RuleContext`) and return the output's layout
        (None: no atoms anywhere)."""
        raise NotImplementedError(f"{type(self).__name__} has no flow rule")

    def stand_in(self, module: Optional[nn.Module], args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
        """Zeros shaped like a heavy op's output, computed cheaply; None to use meta tensors."""
        return None

    def keeps_shape_of(self, module: nn.Module, x: torch.Tensor) -> bool:
        """Whether the module, a cheap one, returns a tensor of ``x``'s shape and dtype whatever its
        values: applied to a stand-in (zeros of the right shape), its output is then a stand-in too."""
        return False

    def resize_module(self, module: nn.Module, in_channels: Optional[int]) -> None:
        """Recompute ``module``'s size attributes from its sliced tensors.

        Args:
            module: the module whose parameters or buffers were sliced.
            in_channels: the new number of channels entering it, where propagation knows it.
        """

    def resize_node(self, gm: torch.fx.GraphModule, node: torch.fx.Node, sizes) -> None:
        """Give ``node`` the new sizes of the channel counts baked into its arguments
        (``sizes``: a :class:`~fxprune.core.finalize.resize.Sizes`)."""

    def fold_input(self, module: nn.Module, scale: torch.Tensor) -> None:
        """Scale the module's input channels by ``scale`` (one value per input channel) inside its
        weights (only called where :attr:`folds_input`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot fold a scale into its input")

    def scale_output(self, module: nn.Module, value: float) -> bool:
        """Multiply the module's output by ``value`` inside its weights; False if it cannot."""
        return False

    def passes_scale(self, value: float) -> bool:
        """Whether scaling the input by ``value`` scales the output by ``value``."""
        return False

    def absorb_input_scale(self, module: nn.Module, scale: float) -> None:
        """Change the module so that its input divided by ``scale`` gives the same output, in
        eval and train mode (only called where :attr:`absorbs_scale`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot absorb a scale")

    def weight_positions(self, node: torch.fx.Node, module: Optional[nn.Module], out_shape: tuple) -> dict:
        """Weight -> number of output positions it is applied at in this call.

        Keys are ``(owner path, attribute)`` for a module's weights, or the weight's FX
        node for a functional op. Channel costs are estimated from these.
        """
        return {}


class FlowRule(Handler):
    """A handler made from a flow function alone (see :func:`rule`)."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.__doc__ = fn.__doc__

    def flow(self, ctx):
        return self.fn(ctx)

    def __repr__(self) -> str:
        return f"FlowRule({self.fn.__qualname__})"


_MODULES: dict[type, Handler] = {}
_FUNCTIONS: dict[Any, Handler] = {}
_METHODS: dict[str, Handler] = {}
_FALLBACKS: set = set()  # (table id, key) registered with fallback=True and not taken over since


def register(*keys: Key, fallback: bool = False):
    """Register a :class:`Handler` subclass (instantiated once) or instance for ``keys``.

    Args:
        keys: ``nn.Module`` subclasses, callables (``torch.cat``, ``operator.add``) or
            method names (``"view"``). A key registered before is taken over.
        fallback: register only where no handler is registered, and let any later
            registration take over (a general rule, such as the index-coded probe, beneath
            the specific ones whatever the order the modules are imported in).

    Example:
        >>> @register(torch.nn.Hardswish)                   # doctest: +SKIP
        ... class Hardswish(Handler):
        ...     def flow(self, ctx):
        ...         return ctx.layout(0)
    """

    def add(handler):
        instance = handler() if isinstance(handler, type) else handler
        if not isinstance(instance, Handler):
            raise TypeError(f"register expects a Handler subclass or instance, got {handler!r}")
        for key in keys:
            table = _table_of(key)
            if fallback and key in table and (id(table), key) not in _FALLBACKS:
                continue
            table[key] = instance
            if fallback:
                _FALLBACKS.add((id(table), key))
            else:
                _FALLBACKS.discard((id(table), key))
        return handler

    return add


def _table_of(key: Key) -> dict:
    if isinstance(key, str):
        return _METHODS
    if isinstance(key, type) and issubclass(key, nn.Module):
        return _MODULES
    return _FUNCTIONS


def aten(*names: str) -> list:
    """The ATen overloads named (``"relu.default"``, ``"add.Tensor"``) that this torch has.

    torch.export records calls as ATen overloads; handlers register them beside the torch
    functions they stand for.

    Example:
        >>> aten("relu.default", "no_such_op.default") == [torch.ops.aten.relu.default]
        True
    """
    found = []
    for name in names:
        packet, _, overload = name.partition(".")
        op = getattr(getattr(torch.ops.aten, packet, None), overload or "default", None)
        if op is not None:
            found.append(op)
    return found


def rule(*keys: Key, fallback: bool = False) -> Callable[[Callable], Callable]:
    """Register a flow function as the whole handler of ``keys`` (see :class:`FlowRule`).

    Example:
        >>> @rule(torch.nn.ReLU)                     # doctest: +SKIP
        ... def relu(ctx):
        ...     return ctx.layout(0)                  # channels pass through unchanged
    """

    def add(fn: Callable) -> Callable:
        register(*keys, fallback=fallback)(FlowRule(fn))
        return fn

    return add


def unregister(*keys: Key) -> None:
    """Forget the handlers of ``keys`` (a test that registered its own cleans up with this)."""
    for key in keys:
        table = _table_of(key)
        table.pop(key, None)
        _FALLBACKS.discard((id(table), key))


def module_handler(module: nn.Module) -> Optional[Handler]:
    """The handler of a module, or None.

    A subclass of a registered module type shares its handler only if it keeps the base
    class's ``forward``; a subclass with its own forward is a different op.
    """
    cls = type(module)
    handler = _MODULES.get(cls)
    if handler is not None:
        return handler
    for base in cls.__mro__[1:]:
        if base in _MODULES and cls.forward is base.forward:
            return _MODULES[base]
    return None


def target_handler(op: str, target) -> Optional[Handler]:
    """The handler of a ``call_function`` target or ``call_method`` name, or None."""
    if op == "call_method":
        return _METHODS.get(target)
    if op == "call_function":
        try:
            return _FUNCTIONS.get(target)
        except TypeError:  # unhashable target
            return None
    return None


def lookup(node: torch.fx.Node, module: Optional[nn.Module] = None) -> Optional[Handler]:
    """The handler of a node (``module``: the module a ``call_module`` node calls), or None."""
    if node.op == "call_module":
        if module is None:
            module = node.graph.owning_module.get_submodule(node.target)
        return module_handler(module)
    return target_handler(node.op, node.target)


def node_handler(gm: torch.fx.GraphModule, node: torch.fx.Node) -> tuple:
    """``(handler, module)`` of a node of ``gm``: module is None unless it calls one."""
    module = gm.get_submodule(node.target) if node.op == "call_module" else None
    return lookup(node, module), module


def is_registered_module(module: nn.Module) -> bool:
    """Whether ``module``'s type has a handler of its own (tracing then keeps it a leaf)."""
    return type(module) in _MODULES
