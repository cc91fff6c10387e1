"""The one exception family fxprune raises on purpose.

Every message names what went wrong, where (the FX node, its op and the user's
source line when FX kept it) and what the user can do next.

Example:
    >>> try:
    ...     raise FxPruneError("ratio must lie in [0, 1), got 1.5", hint="pass a ratio such as 0.5")
    ... except FxPruneError as e:
    ...     print(e)
    ratio must lie in [0, 1), got 1.5
      what to do: pass a ratio such as 0.5
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.fx


def describe_node(node: torch.fx.Node) -> str:
    """A few lines naming a node: its FX form, its op and target, and the user's source line.

    Args:
        node: any FX node.

    Returns:
        A multi-line description, indented for use inside an error message.
    """
    lines = [f"  node: {node.format_node()}", f"  op: {node.op} {op_name(node)}"]
    source = source_line(node)
    if source:
        lines.append(f"  source: {source}")
    return "\n".join(lines)


def op_name(node: torch.fx.Node) -> str:
    """A readable name for what a node calls (module path, function or method name)."""
    target = node.target
    if node.op == "call_module":
        module = _owning_module(node)
        kind = type(module.get_submodule(target)).__name__ if module is not None else "?"
        return f"{target} ({kind})"
    if callable(target):
        mod = getattr(target, "__module__", None) or ""
        name = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
        return f"{mod}.{name}" if mod and mod != "builtins" else name
    return str(target)


def source_line(node: torch.fx.Node) -> Optional[str]:
    """The last frame of the user's code (not torch's, not fxprune's) that FX recorded for ``node``."""
    trace = node.stack_trace or node.meta.get("stack_trace")
    if not trace:
        return None
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    # 'File "...", line N, in f' lines, each followed by its code line
    frames = [(lines[i], lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("File ") else "")
              for i in range(len(lines)) if lines[i].startswith("File ")]
    users = [f for f in frames if not any(part in f[0] for part in _NOT_USER)]
    frame = (users or frames or [(lines[-1], "")])[-1]
    return " | ".join(p for p in frame if p)


_NOT_USER = (os.path.dirname(torch.__file__), os.path.dirname(os.path.abspath(__file__)))


def _owning_module(node: torch.fx.Node):
    graph = node.graph
    return getattr(graph, "owning_module", None)


class FxPruneError(Exception):
    """Base of everything fxprune raises on purpose.

    Args:
        message: what went wrong.
        node: the FX node concerned, if any; its form, op and source line are appended.
        hint: what the user can do next.
    """

    def __init__(self, message: str, *, node: Optional[torch.fx.Node] = None, hint: Optional[str] = None):
        parts = [message]
        if node is not None:
            parts.append(describe_node(node))
        if hint:
            parts.append(f"  what to do: {hint}")
        super().__init__("\n".join(parts))
        self.message = message
        self.node = node
        self.node_name = node.name if node is not None else None
        self.hint = hint


class TraceError(FxPruneError):
    """torch.fx could not trace the model (data-dependent control flow, unsupported Python)."""


class UnsupportedOpError(FxPruneError):
    """An op fxprune does not understand met channels it would prune (raised when ``strict=True``)."""


class MaskError(FxPruneError):
    """Mask or gate values that finalize cannot honour (NaN, inf, an emptied group)."""


class EquivalenceError(FxPruneError):
    """The finalized model does not compute what the masked model computes."""


class NotPreparedError(FxPruneError):
    """A function that needs a model from ``fxprune.prepare`` was given something else."""
