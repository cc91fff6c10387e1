"""Before and after: accuracy, MACs, parameters and CPU latency of models, as one table.

Example:
    >>> import torch.nn as nn
    >>> row = measure("tiny", nn.Conv2d(3, 4, 1), torch.zeros(1, 3, 8, 8), repeats=3)
    >>> row.macs, row.params
    (768, 16)
    >>> print(stats_table([row]).splitlines()[0].split())       # doctest: +NORMALIZE_WHITESPACE
    ['model', 'top-1', 'MACs', 'params', 'latency', '(ms)']
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn as nn
from tabulate import tabulate

from fxprune.core.ir import ExampleInputs
from fxprune.core.tensors import eval_mode
from fxprune.errors import FxPruneError
from fxprune.report.count import count


@dataclass
class ModelStats:
    """One row of the table. ``top1`` is a fraction (None when no data was given)."""

    name: str
    macs: int
    params: int
    latency_ms: float
    top1: Optional[float] = None


@torch.no_grad()
def latency_ms(model: torch.nn.Module, example_inputs, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of one forward pass, in milliseconds, in eval mode.

    Args:
        model: any module; put in eval mode for the measurement and restored after.
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.
        repeats: timed runs (the median is returned).
        warmup: untimed runs first.

    Returns:
        The median over ``repeats`` runs.
    """
    example = ExampleInputs.of(example_inputs)
    with eval_mode(model):
        for _ in range(warmup):
            example(model)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            example(model)
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def interleaved_latencies_ms(models: list, example_inputs, rounds: int = 5, repeats: int = 10) -> list:
    """Median latency of each model, timed in turns (``rounds`` x ``repeats`` runs each).

    Taking turns spreads background load over all models alike, so their ratios hold
    better than when each is timed in one go.
    """
    samples = [[] for _ in models]
    for _ in range(rounds):
        for i, model in enumerate(models):
            samples[i].append(latency_ms(model, example_inputs, repeats=repeats, warmup=2))
    return [statistics.median(s) for s in samples]


def measure(name: str, model: torch.nn.Module, example_inputs, test_data: Optional[Iterable] = None,
            repeats: int = 30, latency: Optional[float] = None) -> ModelStats:
    """MACs and parameters (:func:`fxprune.count`), latency (unless given), and top-1 on ``test_data`` when given."""
    cost = count(model, example_inputs)
    top1 = None
    if test_data is not None:
        top1 = evaluate(model, test_data)
    if latency is None:
        latency = latency_ms(model, example_inputs, repeats)
    return ModelStats(name, cost.macs, cost.params, latency, top1)


def stats_table(rows: list, tablefmt: str = "simple") -> str:
    """The rows as a table; rows after the first also show their change relative to the first.

    Args:
        rows: :class:`ModelStats`, the reference (the unpruned model) first.
        tablefmt: a ``tabulate`` format, e.g. ``"github"`` for markdown.

    Returns:
        The table as text.
    """
    base = rows[0]
    out = []
    for i, r in enumerate(rows):
        top1 = "-" if r.top1 is None else f"{100 * r.top1:.2f}%"
        if i and r.top1 is not None and base.top1 is not None:
            top1 += f" ({100 * (r.top1 - base.top1):+.2f})"
        out.append([r.name, top1, _with_ratio(r.macs, base.macs, i, _si), _with_ratio(r.params, base.params, i, _si),
                    _with_ratio(r.latency_ms, base.latency_ms, i, lambda v: f"{v:.2f}")])
    return tabulate(out, headers=["model", "top-1", "MACs", "params", "latency (ms)"], tablefmt=tablefmt,
                    disable_numparse=True)


def _with_ratio(value: float, base: float, index: int, fmt) -> str:
    text = fmt(value)
    return text if index == 0 or not base else f"{text} ({value / base:.2f}x)"


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(int(value))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: Optional[torch.device] = None) -> float:
    """Top-1 accuracy, as a fraction in ``[0, 1]``, of ``model`` over ``loader``.

    The model is put in eval mode and returned to its previous mode.

    Args:
        model: a classifier returning logits ``(n, classes)``.
        loader: an iterable of ``(inputs, targets)`` batches.
        device: where to move the batches; defaults to the model's device.

    Returns:
        The fraction of samples whose arg-max logit equals the target.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> evaluate(model, [(torch.eye(2), model(torch.eye(2)).argmax(1))])
        1.0
    """
    device = device or model_device(model)
    correct = total = 0
    with eval_mode(model):
        for inputs, targets in loader:
            logits = model(inputs.to(device))
            correct += (logits.argmax(1) == targets.to(device)).sum().item()
            total += targets.numel()
    if total == 0:
        raise FxPruneError("evaluate got an empty loader", hint="pass a loader with at least one batch")
    return correct / total


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU if it has none)."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")
