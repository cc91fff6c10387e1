"""``fxprune prune`` as a function: prepare, (train,) prune to a MACs target, finalize, (fine-tune).

Three methods, all through the public API:

    l1     one-shot: channels ranked by their filters' l1 norm relative to their group's
           mean, removed until the measured MACs fall by the target (prune_to_macs)
    epfs   EPFS sparse training of channel masks and branch gates, then prune(target)
    oicsr  training with the out-in group lasso (when data is given), then greedy_prune

With data the pruned model is fine-tuned; without, l1 and oicsr rank channels by their
weights alone and epfs refuses (it learns its masks from data).

Example:
    >>> outcome = prune_model(model, torch.randn(1, 3, 32, 32), "l1", 0.5)     # doctest: +SKIP
    >>> outcome.small                                                          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch

from fxprune.core.finalize import finalize
from fxprune.core.masks import gate_parameters
from fxprune.core.prepare import prepare
from fxprune.errors import FxPruneError
from fxprune.methods.budget import prune_to_macs
from fxprune.methods.epfs import EPFS
from fxprune.methods.importance import channel_importance, relative_to_group
from fxprune.methods.oicsr import OutInGroupLasso, greedy_prune
from fxprune.report.compare import measure
from fxprune.training.phases import train_phase

METHODS = ("l1", "epfs", "oicsr")


@dataclass
class PruneOutcome:
    """What :func:`prune_model` produced: the prepared model (masks set), the finalized one, measurements."""

    pm: torch.fx.GraphModule
    small: torch.fx.GraphModule
    stats: list
    reduction: float
    history: list = field(default_factory=list)


def prune_model(model: torch.nn.Module, example: torch.Tensor, method: str, target: float,
                train: Optional[Iterable] = None, test: Optional[Iterable] = None, *, num_classes: Optional[int] = None,
                epochs: int = 1, finetune_epochs: int = 1, lr: float = 0.01, l1: float = 0.02,
                echo: Callable[..., None] = print, progress: bool = True) -> PruneOutcome:
    """Prune ``model`` by ``method`` until its MACs fall by ``target``.

    Args:
        model: the model (not changed).
        example: an example input batch (its batch size is the latency batch).
        method: ``"l1"``, ``"epfs"`` or ``"oicsr"``.
        target: MACs reduction in (0, 1).
        train, test: batches of ``(inputs, targets)``; needed by ``epfs``.
        num_classes: classes of the data (Center Loss for EPFS).
        epochs: sparse-training epochs (epfs, oicsr with data).
        finetune_epochs: fine-tuning epochs of the finalized model (with data).
        lr: learning rate of training and fine-tuning.
        l1: EPFS's l1 strength on masks and gates.
        echo, progress: progress lines and bars.

    Returns:
        A :class:`PruneOutcome`.
    """
    if method not in METHODS:
        raise FxPruneError(f"unknown method {method!r}", hint=f"use one of {', '.join(METHODS)}")
    if not 0.0 < target < 1.0:
        raise FxPruneError(f"--target-macs must lie in (0, 1), got {target}", hint="for example 0.5 halves the MACs")
    if method == "epfs" and train is None:
        raise FxPruneError("epfs learns its masks from data and needs --data DIR",
                           hint="pass --data DIR (train/ and test/ with one folder per class), or use --method l1")
    history: list = []
    stats = [measure("original", model, example, test)]
    pm = prepare(model, example[:1] if isinstance(example, torch.Tensor) else example)
    if method == "l1":
        scores = relative_to_group(pm, channel_importance(pm, "l1"))
        reduction = prune_to_macs(pm, target, scores).reduction
    elif method == "epfs":
        epfs = EPFS(pm, lr=0.05, l1=l1, l2=1e-4, center=0.01 if num_classes else 0.0, num_classes=num_classes,
                    blocks=bool(gate_parameters(pm)))
        train_phase("sparse", pm, train, test, epochs, lr, history, echo=echo, progress=progress, epfs=epfs)
        reduction = epfs.prune(target=target).reduction
        epfs.close()
    else:
        if train is not None:
            reg = OutInGroupLasso(pm, lam=1e-4, macs_weighted=True)
            train_phase("oicsr", pm, train, test, epochs, lr, history, echo=echo, progress=progress,
                        penalty=reg.penalty)
        reduction = greedy_prune(pm, target).reduction
    small = finalize(pm)
    echo(f"pruned {100 * reduction:.1f}% of the MACs ({method})")
    stats.append(measure("pruned", small, example, test))
    if train is not None and finetune_epochs > 0:
        train_phase("fine-tune", small, train, test, finetune_epochs, lr, history, echo=echo, progress=progress)
        stats.append(measure("pruned + fine-tuned", small, example, test))
    return PruneOutcome(pm, small, stats, reduction, history)
