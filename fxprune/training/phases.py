"""Training phases shared by the demo and the command line, on top of :class:`fxprune.training.Trainer`.

A phase is a few epochs of SGD (Nesterov momentum, weight decay 5e-4) with a one-cycle
or cosine schedule. Pruning methods join in through the Trainer's extension points:
EPFS adds its smooth losses and steps FISTA on the masks and gates; OICSR adds its
group-lasso penalty. Each epoch appends a line of metrics to ``history`` and echoes it.

Example:
    >>> history = []                                                               # doctest: +SKIP
    >>> train_phase("dense", model, train, test, epochs=2, lr=0.1, history=history)  # doctest: +SKIP
    >>> epfs = fxprune.EPFS(pm, num_classes=10)                                     # doctest: +SKIP
    >>> train_phase("sparse", pm, train, test, epochs=2, lr=0.02, history=history, epfs=epfs)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from fxprune.core.masks import weight_parameters
from fxprune.training.trainer import Trainer


def train_phase(name: str, model: torch.nn.Module, train: Iterable, test: Optional[Iterable], epochs: int,
                lr: float, history: Optional[list] = None, *, echo: Callable[..., None] = print,
                progress: bool = True, one_cycle: bool = False, epfs=None,
                penalty: Optional[Callable[[], torch.Tensor]] = None, anneal_target: Optional[float] = None,
                anneal_until: float = 0.5) -> list:
    """Train ``model`` for ``epochs`` epochs; returns (and extends) ``history``.

    Args:
        name: the phase's name in the history and the echoed lines.
        model: a plain or prepared model.
        train, test: iterables of ``(inputs, targets)``; ``test`` may be None.
        epochs: epochs of this phase (0 does nothing).
        lr: the peak (one-cycle) or initial (cosine) learning rate.
        history: a list the per-epoch metrics are appended to, with ``phase`` set.
        echo: where the per-epoch lines go.
        progress: tqdm progress bars.
        one_cycle: one-cycle schedule instead of cosine annealing.
        epfs: an :class:`fxprune.EPFS`; its losses and FISTA step are added, and the
            weight optimiser leaves the masks and gates alone.
        penalty: a regulariser added to the loss (e.g. ``OutInGroupLasso(pm).penalty``).
        anneal_target: with ``epfs``, switch structures off gradually towards this MACs
            reduction (:meth:`fxprune.EPFS.anneal`, every 20 steps), all of it by
            ``anneal_until`` of the phase.
    """
    history = history if history is not None else []
    if epochs <= 0:
        return history
    params = weight_parameters(model) if epfs is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = max(1, epochs * len(train)) if hasattr(train, "__len__") else None
    sched = None
    if steps is not None:
        sched = (torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.25) if one_cycle
                 else torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps))

    def record(trainer, metrics):
        history.append({"phase": name, **metrics})
        test_text = "" if metrics["test_top1"] is None else f"  test {100 * metrics['test_top1']:.1f}%"
        echo(f"  {name:<9} epoch {metrics['epoch']}/{epochs}  loss {metrics['train_loss']:.3f}  "
             f"train {100 * metrics['train_top1']:.1f}%{test_text}  ({metrics['epoch_seconds']:.0f} s)")

    def extra_loss(model, outputs, features, targets):
        total = epfs.loss(targets) if epfs is not None else outputs.new_zeros(())
        return total + penalty() if penalty is not None else total

    sparse = epfs is not None or penalty is not None
    hooks = ([epfs.anneal_hook(steps, anneal_target, anneal_until)]
             if epfs is not None and anneal_target is not None and steps is not None else [])
    trainer = Trainer(model, opt, sched, progress=progress, epoch_hooks=[record], step_hooks=hooks,
                      recalibrate_bn=20 if sparse else 0,
                      extra_loss=extra_loss if sparse else None,
                      extra_optimizers={"masks": epfs.optimizer} if epfs is not None else None)
    trainer.fit(train, test, epochs)
    return history
