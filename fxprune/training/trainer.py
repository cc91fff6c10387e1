"""A small, generic training loop with checkpoints and exact resume.

Shared by the CIFAR benchmarks and the command line. The model is any
``nn.Module`` (an ``fx.GraphModule`` included); the loop knows nothing about
pruning. Extension points:

- ``extra_loss(model, outputs, features, targets) -> Tensor`` is added to the
  task loss (e.g. a center loss, or an l1 term on gates);
- ``extra_optimizers`` are stepped and zeroed with the weight optimizer and
  saved in every checkpoint (e.g. FISTA on masks);
- ``step_hooks`` run after every optimizer step as ``hook(trainer, step)``;
- ``epoch_hooks`` run after every epoch (checkpoint written) as ``hook(trainer, metrics)``;
- ``distill`` mixes the task loss with a teacher's soft outputs (:mod:`fxprune.training.distill`).

One step::

    outputs = model(x)                       features = input of `feature_module`
    loss = loss_fn(outputs, y)               or distill.combine(loss_fn(outputs, y), x, outputs)
    loss = loss + extra_loss(model, outputs, features, y)
    loss.backward(); optimizer.step(); each extra optimizer .step()
    scheduler.step() (per batch, or per epoch); each step hook(trainer, step)

A checkpoint ``epoch_NNNN.pt`` is written after each epoch; it holds only
tensors and plain Python values, so ``torch.load(path, weights_only=True)``
reads it. ``fit(..., resume=True)`` continues from the latest one and, given
the same data order (the RNG state is restored; iterables with ``set_epoch``
are told the epoch), ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fxprune.core.tensors import modes_kept
from fxprune.errors import FxPruneError
from fxprune.report.compare import evaluate, model_device
from fxprune.training.distill import Distillation

ExtraLoss = Callable[[nn.Module, torch.Tensor, Optional[torch.Tensor], torch.Tensor], torch.Tensor]
StepHook = Callable[["Trainer", int], None]
EpochHook = Callable[["Trainer", dict], None]
CHECKPOINT_FORMAT = 1
_CHECKPOINT_NAME = re.compile(r"^epoch_(\d+)\.pt$")


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, num_batches: int = 20,
                   device: Optional[torch.device] = None) -> int:
    """Re-estimate every BatchNorm's running statistics from ``num_batches`` training batches.

    Sparse training shrinks masks that feed a convolution followed by BatchNorm; in
    training mode BatchNorm cancels a group's common scale, so the masks can move fast,
    and the running statistics (an exponential average) lag behind them. The model then
    trains well but evaluates badly. This resets the statistics and accumulates a plain
    average over the given batches (no gradients, no parameter changes).

    Args:
        model: any model; one without BatchNorm is left alone.
        batches: an iterable of ``(inputs, targets)`` (targets are ignored).
        num_batches: how many batches to average over.
        device: where to move the batches; defaults to the model's device.

    Returns:
        The number of BatchNorm layers recalibrated.

    Example:
        >>> bn = nn.BatchNorm1d(2)
        >>> recalibrate_bn(bn, [(torch.tensor([[1.0, 4.0], [3.0, 8.0]]), None)])
        1
        >>> bn.running_mean
        tensor([2., 6.])
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    device = device or model_device(model)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches seen
    try:
        with modes_kept(model):
            model.train()
            for i, (inputs, _) in enumerate(batches):
                if i >= num_batches:
                    break
                model(inputs.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return len(norms)


def latest_checkpoint(directory: os.PathLike) -> Optional[Path]:
    """The ``epoch_NNNN.pt`` with the largest epoch in ``directory``, or ``None``.

    Example:
        >>> latest_checkpoint("/nonexistent") is None
        True
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CHECKPOINT_NAME.match(p.name))]
    return max(found)[1] if found else None


class Trainer:
    """Trains a classifier epoch by epoch, with checkpoints and exact resume.

    Args:
        model: any ``nn.Module`` returning logits.
        optimizer: the weight optimizer.
        scheduler: an LR scheduler of ``optimizer``, or ``None``.
        scheduler_interval: ``"batch"`` (step after every batch) or ``"epoch"``.
        loss_fn: task loss ``loss_fn(outputs, targets)``; cross-entropy by default.
        extra_loss: ``extra_loss(model, outputs, features, targets) -> Tensor``
            added to the task loss; ``features`` is the input of
            ``feature_module`` (or ``None`` when none is named).
        feature_module: dotted name of a submodule whose input is captured as
            ``features`` (e.g. ``"fc"``, the classifier's input).
        extra_optimizers: named optimizers stepped and zeroed with ``optimizer``
            and checkpointed (e.g. ``{"masks": FISTA(...)}``).
        step_hooks: ``hook(trainer, step)`` after every optimizer step.
        epoch_hooks: ``hook(trainer, metrics)`` after every epoch, e.g. logging.
        checkpoint_dir: where ``epoch_NNNN.pt`` files go; ``None`` writes none.
        keep_last: keep only this many newest checkpoints (``None``: keep all).
        progress: show tqdm progress bars.
        device: where batches go; defaults to the model's device.
        distill: a :class:`~fxprune.training.distill.Distillation`: the task loss becomes its
            mix of the task loss and the teacher's soft outputs for the same inputs.
        recalibrate_bn: before each evaluation, re-estimate BatchNorm statistics from this
            many training batches (:func:`recalibrate_bn`); 0 leaves them as training left them.
            Worth it while masks are being sparsified.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(64, 4)
        >>> data = [(x, (x[:, 0] > 0).long())]              # the class is the sign of the first input
        >>> model = nn.Linear(4, 2)
        >>> trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), progress=False)
        >>> history = trainer.fit(data, data, epochs=20)
        >>> history[0]["test_top1"] < 0.9 < history[-1]["test_top1"]      # it learned
        True
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler=None,
        *,
        scheduler_interval: str = "batch",
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        extra_loss: Optional[ExtraLoss] = None,
        feature_module: Optional[str] = None,
        extra_optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
        step_hooks: Sequence[StepHook] = (),
        epoch_hooks: Sequence[EpochHook] = (),
        checkpoint_dir: Optional[os.PathLike] = None,
        keep_last: Optional[int] = None,
        progress: bool = True,
        device: Optional[torch.device] = None,
        recalibrate_bn: int = 0,
        distill: Optional[Distillation] = None,
    ):
        if scheduler_interval not in ("batch", "epoch"):
            raise FxPruneError(f"scheduler_interval must be 'batch' or 'epoch', got {scheduler_interval!r}")
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.loss_fn = loss_fn
        self.extra_loss = extra_loss
        self.feature_module = feature_module
        self.extra_optimizers = dict(extra_optimizers or {})
        self.step_hooks = list(step_hooks)
        self.epoch_hooks = list(epoch_hooks)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.keep_last = keep_last
        self.progress = progress
        self.device = device or model_device(model)
        self.recalibrate_bn = recalibrate_bn
        self.distill = distill
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.history: list[dict] = []

    def fit(self, train_data: Iterable, test_data: Optional[Iterable], epochs: int, resume: bool = True) -> list[dict]:
        """Train until ``epochs`` epochs are complete, evaluating after each.

        Args:
            train_data: iterable of ``(inputs, targets)``; re-iterated every
                epoch; ``train_data.set_epoch(e)`` is called when it exists.
            test_data: iterable for :func:`evaluate`, or ``None``.
            epochs: the total number of epochs (counting resumed ones).
            resume: first load the latest checkpoint in ``checkpoint_dir``.

        Returns:
            The metrics history, one dict per epoch: ``epoch``, ``train_loss``,
            ``train_top1``, ``test_top1`` (or ``None``), ``lr`` (at the epoch's
            start), ``epoch_seconds`` (training, data included),
            ``images_per_second`` (median over batches of the training step
            alone) and ``eval_seconds``.
        """
        if resume and self.checkpoint_dir is not None:
            path = latest_checkpoint(self.checkpoint_dir)
            if path is not None:
                self.load_checkpoint(path)
        while self.epoch < epochs:
            metrics = self.train_epoch(train_data)
            start = time.perf_counter()
            if self.recalibrate_bn and test_data is not None:
                recalibrate_bn(self.model, train_data, self.recalibrate_bn, self.device)
            metrics["test_top1"] = evaluate(self.model, test_data, self.device) if test_data is not None else None
            metrics["eval_seconds"] = time.perf_counter() - start
            self.epoch += 1
            metrics["epoch"] = self.epoch
            self.history.append(metrics)
            if self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            if self.checkpoint_dir is not None:
                self.save_checkpoint(self.checkpoint_dir / f"epoch_{self.epoch:04d}.pt")
            for hook in self.epoch_hooks:
                hook(self, metrics)
        return self.history

    def train_epoch(self, train_data: Iterable) -> dict:
        """Run one epoch of training (``self.epoch`` is the 0-based epoch index).

        Returns:
            ``train_loss``, ``train_top1``, ``lr``, ``epoch_seconds``, ``images_per_second``.
        """
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(self.epoch)
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        loss_sum, correct, seen, rates = 0.0, 0, 0, []
        bar = _progress(train_data, self.progress, f"epoch {self.epoch + 1}")
        start = time.perf_counter()
        for inputs, targets in bar:
            t0 = time.perf_counter()
            loss, outputs = self._train_step(inputs.to(self.device), targets.to(self.device))
            rates.append(targets.numel() / max(time.perf_counter() - t0, 1e-9))
            loss_sum += loss * targets.numel()
            correct += (outputs.argmax(1) == targets.to(self.device)).sum().item()
            seen += targets.numel()
            if self.progress:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", top1=f"{correct / seen:.3f}")
        if seen == 0:
            raise FxPruneError("the training data gave no batches", hint="check the dataset path and subset size")
        return {
            "train_loss": loss_sum / seen,
            "train_top1": correct / seen,
            "lr": lr,
            "epoch_seconds": time.perf_counter() - start,
            "images_per_second": statistics.median(rates),
        }

    def _train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, torch.Tensor]:
        optimizers = [self.optimizer, *self.extra_optimizers.values()]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        with _FeatureCapture(self.model, self.feature_module) as capture:
            outputs = self.model(inputs)
        loss = self.loss_fn(outputs, targets)
        if self.distill is not None:
            loss = self.distill.combine(loss, inputs, outputs)
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(self.model, outputs, capture.features, targets)
        loss.backward()
        for opt in optimizers:
            opt.step()
        if self.scheduler is not None and self.scheduler_interval == "batch":
            self.scheduler.step()
        self.step += 1
        for hook in self.step_hooks:
            hook(self, self.step)
        return loss.item(), outputs.detach()

    def state_dict(self) -> dict:
        """Everything a checkpoint holds: tensors and plain Python values only."""
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "extra_optimizers": {name: opt.state_dict() for name, opt in self.extra_optimizers.items()},
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": _rng_state(),
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (model, optimizers, scheduler, RNG, history)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise FxPruneError(f"unknown checkpoint format {state.get('format')!r}",
                               hint="resume with the fxprune version that wrote it")
        missing = set(self.extra_optimizers) ^ set(state["extra_optimizers"])
        if missing:
            raise FxPruneError(f"checkpoint and trainer disagree on extra optimizers: {sorted(missing)}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name, opt in self.extra_optimizers.items():
            opt.load_state_dict(state["extra_optimizers"][name])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])

    def save_checkpoint(self, path: os.PathLike) -> Path:
        """Write :meth:`state_dict` to ``path`` atomically; prune old ones per ``keep_last``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        if self.keep_last is not None:
            found = sorted(p for p in path.parent.iterdir() if _CHECKPOINT_NAME.match(p.name))
            for old in found[: -self.keep_last]:
                old.unlink()
        return path

    def load_checkpoint(self, path: os.PathLike) -> None:
        """Load a checkpoint with ``weights_only=True`` and restore the trainer from it."""
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))


class _FeatureCapture:
    """Context manager: records the input of ``model.<name>`` during one forward."""

    def __init__(self, model: nn.Module, name: Optional[str]):
        self.model, self.name, self.features, self._handle = model, name, None, None

    def __enter__(self) -> "_FeatureCapture":
        if self.name is not None:
            module = self.model.get_submodule(self.name)
            self._handle = module.register_forward_pre_hook(self._record)
        return self

    def _record(self, module: nn.Module, args: tuple) -> None:
        self.features = args[0]

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()


def _rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": n["key"].cpu().numpy().astype(np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"],
        "gauss": n["gauss"],
    })


def _progress(iterable: Iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)
