"""The CIFAR-10 benchmark's training and pruning methods (benchmarks/cifar10.py runs them).

Each pruning method turns a copy of the dense start into a *prepared, pruned* model (its
masks say what goes), spending ``spent`` of the method's epochs on a sparse phase. The
pruned model is kept on disk (``out/pruned/``), keyed by method, hyper-parameter, seed and
dense start, so that a row and its ``+rec`` twin, and the hyper-parameter grid and the
row that uses the value it chose, share one sparse phase. What happens after the cut
(BatchNorm recalibration, reconstruction, fine-tuning, measuring) is the same for every
method and lives in cifar10.py.

    dense      keeps training the dense model (the reference at the same total epochs)
    l1         L1-norm filter pruning (Li et al., ICLR 2017), filters ranked relative to their layer
    epfs       EPFS sparse phase (masks and gates by FISTA, elastic net, Center Loss), structures
               switched off gradually, pruned to the MACs target   (hyper-parameter: mask_l1)
    oicsr      out-in group lasso, greedy pruning to the target    (oicsr_lam)
    slimming   l1 on BatchNorm scales (Liu et al., ICCV 2017), pruned by |gamma|   (slim_lam)
    METHOD+kd  the same cut, fine-tuned with distillation from the dense start (fxprune.training.Distillation)
    tp         Torch-Pruning's GroupNormPruner, when torch_pruning is installed (no masks: no reconstruction)
    epfs-blocks   EPFS with branch gates only: whole residual blocks go   (block_l1, the gates' l1)
    epfs-filters  EPFS with channel masks only   (mask_l1)
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

import fxprune
from benchmarks.cifar_models import build_model
from fxprune.methods.importance import relative_to_group
from fxprune.training import Trainer


@dataclass
class Protocol:
    dense_epochs: int
    method_epochs: int
    sparse_epochs: int
    lr: float = 0.1
    finetune_lr: float = 0.02
    batch_size: int = 128
    weight_decay: float = 5e-4


PROTOCOLS = {
    "quick": Protocol(dense_epochs=6, method_epochs=4, sparse_epochs=1),
    "full": Protocol(dense_epochs=160, method_epochs=80, sparse_epochs=40),
}

# the hyper-parameter each sparse method's grid tunes (the command-line option of the same name)
HYPERPARAMETER = {"epfs": "mask_l1", "epfs-blocks": "block_l1", "epfs-filters": "mask_l1", "oicsr": "oicsr_lam",
                  "slimming": "slim_lam"}


@dataclass
class Pruned:
    """A prepared model whose masks are set, and what it took."""

    pm: torch.fx.GraphModule
    spent: int
    notes: dict = field(default_factory=dict)
    reference: dict | None = None  # the masks before the cut (EPFS), for reconstruction
    model: nn.Module | None = None  # a method that prunes without fxprune (tp): the pruned model itself


# -- training ----------------------------------------------------------------------------------


def sgd(params, lr: float, weight_decay: float):
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def train(model, batches, epochs: int, lr: float, proto: Protocol, *, schedule: str = "cosine",
          within: tuple[int, int] | None = None, params=None, extra_loss=None, extra_optimizers=None,
          step_hooks=(), checkpoint_dir=None, progress=True, distill=None):
    """Train ``model`` on ``batches`` for ``epochs`` with SGD and a per-batch LR schedule; returns the history.

    ``schedule`` is ``"cosine"``, ``"onecycle"`` or ``"constant"``. For a cosine,
    ``within=(start, span)`` makes these epochs the part of a ``span``-epoch schedule that
    begins ``start`` epochs in (default: a cosine over these epochs alone). ``distill`` (a
    :class:`fxprune.training.Distillation`) fine-tunes to its teacher's outputs as well as the labels.
    """
    if epochs <= 0:
        return []
    opt = sgd(params if params is not None else model.parameters(), lr, proto.weight_decay)
    total = epochs * len(batches)
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.25)
    elif schedule == "cosine":
        start, span = within if within is not None else (0, epochs)
        first, steps = start * len(batches), span * len(batches)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(first + s, steps) / steps)))
    else:
        sched = None
    model.to(memory_format=torch.channels_last)  # about 15% faster convolutions on this CPU
    trainer = Trainer(model, opt, sched, extra_loss=extra_loss, extra_optimizers=extra_optimizers,
                      step_hooks=step_hooks, checkpoint_dir=checkpoint_dir, keep_last=1, progress=progress,
                      distill=distill)
    return trainer.fit(ChannelsLast(batches), None, epochs)  # measured once, at the end of each row


class ChannelsLast:
    """Batches in channels-last memory format (the loader's ``set_epoch`` and ``len`` pass through)."""

    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for x, y in self.batches:
            yield x.contiguous(memory_format=torch.channels_last), y


def dense_model(name: str, data, proto: Protocol, out: Path, progress: bool, seed: int = 0,
                device: str = "cpu") -> nn.Module:
    """A dense start trained on the training split only (initialisation and order from ``seed``), cached in ``out``."""
    suffix = f"-seed{seed}" if seed else ""
    path = out / f"dense-{name}-{proto.dense_epochs}-val{len(data.val.labels)}{suffix}.pt"
    if path.exists():
        model = build_model(name).to(device)
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return model
    torch.manual_seed(seed)
    data.train.seed = seed
    model = build_model(name).to(device)  # initialised on the CPU from the seed, whatever the device
    train(model, data.train, proto.dense_epochs, proto.lr, proto, schedule="onecycle",
          checkpoint_dir=out / f"ckpt-{path.stem}", progress=progress)
    torch.save(model.state_dict(), path)
    return model


def example(model: nn.Module) -> torch.Tensor:
    """An input for prepare and count, on the model's device."""
    return torch.randn(1, 3, 32, 32, device=next(model.parameters()).device)


def sparse_schedule(proto: Protocol, args) -> dict:
    """``train`` arguments for a sparse phase: constant LR, or the start of the method's one cosine."""
    return {"within": (0, proto.method_epochs)} if args.one_schedule else {"schedule": "constant"}


# -- methods: each returns a Pruned -----------------------------------------------------------------


def run_epfs(model, data, proto, target, args, value, blocks_only: bool = False, filters_only: bool = False):
    pm = fxprune.prepare(model, example(model))
    # blocks only: the masks' l1 has nothing to act on, so the grid's value is the gates' l1
    epfs = fxprune.EPFS(pm, lr=args.mask_lr, l1=value, l2=args.mask_l2, gate_l1=value if blocks_only else args.gate_l1,
                        center=0.0 if blocks_only else args.center, num_classes=10,
                        filters=not blocks_only, blocks=bool(fxprune.branches(pm)) and not filters_only,
                        normalise=args.normalise)
    total = proto.sparse_epochs * len(data.train)  # gradual pruning: the target is off by anneal_until of the phase
    hooks = [epfs.anneal_hook(total, target, args.anneal_until, release=args.release)] if args.anneal_until > 0 else []
    train(pm, data.train, proto.sparse_epochs, proto.finetune_lr, proto, **sparse_schedule(proto, args),
          params=fxprune.weight_parameters(pm), extra_loss=lambda m, out, feats, y: epfs.loss(y),
          extra_optimizers={"masks": epfs.optimizer}, step_hooks=hooks, progress=args.progress)
    reference = {name: p.detach().clone() for bank in (pm.fxprune.masks, pm.fxprune.gates) for name, p in bank.items()}
    result = epfs.prune(target=target)
    epfs.close()
    return Pruned(pm, proto.sparse_epochs, {"budget": asdict(result), "gates_removed": result.branches,
                                            "anneal_until": args.anneal_until, "normalise": args.normalise,
                                            "release": args.release}, reference)


def run_oicsr(model, data, proto, target, args, value):
    pm = fxprune.prepare(model, example(model))
    reg = fxprune.OutInGroupLasso(pm, lam=value)
    train(pm, data.train, proto.sparse_epochs, proto.finetune_lr, proto, **sparse_schedule(proto, args),
          params=fxprune.weight_parameters(pm), extra_loss=lambda m, out, feats, y: reg.penalty(),
          progress=args.progress)
    result = fxprune.greedy_prune(pm, target, step=0.05)
    return Pruned(pm, proto.sparse_epochs, {"budget": asdict(result)})


def run_l1(model, data, proto, target, args, value=None):
    pm = fxprune.prepare(model, example(model))
    scores = relative_to_group(pm, fxprune.channel_importance(pm, "l1"))
    result = fxprune.prune_to_macs(pm, target, scores)
    return Pruned(pm, 0, {"budget": asdict(result)})


def run_slimming(model, data, proto, target, args, value):
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    def bn_l1(m, out, feats, y):
        return value * sum(bn.weight.abs().sum() for bn in norms)

    train(model, data.train, proto.sparse_epochs, proto.finetune_lr, proto, **sparse_schedule(proto, args),
          extra_loss=bn_l1, progress=args.progress)
    pm = fxprune.prepare(model, example(model))
    result = fxprune.prune_to_macs(pm, target, fxprune.channel_importance(pm, "bn_scale"))
    return Pruned(pm, proto.sparse_epochs, {"budget": asdict(result)})


def run_tp(model, data, proto, target, args, value=None):
    """Torch-Pruning's GroupNormPruner (``pip install torch-pruning``): its own pruned model, no masks."""
    import torch_pruning as tp

    x = example(model)
    base_macs = fxprune.count(model, x).macs
    pruner = tp.pruner.GroupNormPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                       pruning_ratio=_tp_ratio(model, x, target, base_macs), global_pruning=False,
                                       ignored_layers=[model.fc if hasattr(model, "fc") else model.classifier])

    def regularize(trainer, step):
        pruner.regularize(model)

    train(model, data.train, proto.sparse_epochs, proto.finetune_lr, proto, **sparse_schedule(proto, args),
          step_hooks=[regularize], progress=args.progress)
    pruner.step()
    return Pruned(None, proto.sparse_epochs, {}, model=model)


def _tp_ratio(model, x, target: float, base_macs: int) -> float:
    """The channel ratio at which Torch-Pruning's pruner removes ``target`` of the MACs (bisection)."""
    import torch_pruning as tp

    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(model)
        tp.pruner.MagnitudePruner(trial, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=mid,
                                  ignored_layers=[trial.fc if hasattr(trial, "fc") else trial.classifier]).step()
        if 1 - fxprune.count(trial, x).macs / base_macs < target:
            lo = mid
        else:
            hi = mid
    return hi


RUNNERS = {"tp": run_tp, "l1": run_l1, "epfs": run_epfs, "oicsr": run_oicsr, "slimming": run_slimming,
           "epfs-blocks": lambda *a: run_epfs(*a, blocks_only=True),
           "epfs-filters": lambda *a: run_epfs(*a, filters_only=True)}


def dense_seed(args, seed: int) -> int:
    """The seed of the dense start a seed's rows begin from."""
    return seed if args.dense_per_seed else 0


def pruned_model(method: str, value, dense: nn.Module, ctx: dict, args, seed: int) -> Pruned:
    """The prepared, pruned model of ``method`` with hyper-parameter ``value``: from ``out/pruned/`` when this
    seed and dense start made it before, else made (from a copy of ``dense``) and saved there.

    Returns a fresh prepared model on every call (callers change its weights: reconstruction).
    """
    data, proto = ctx["data"], ctx["proto"]
    if method == "tp":  # its pruned model is not a prepared one: made afresh every time
        torch.manual_seed(1 + seed)
        data.train.seed = seed
        return run_tp(copy.deepcopy(dense), data, proto, args.target, args)
    path = ctx["out"] / "pruned" / f"{_key(method, value, args, seed)}.pt"
    if not path.exists():
        torch.manual_seed(1 + seed)
        data.train.seed = seed
        made = RUNNERS[method](copy.deepcopy(dense), data, proto, args.target, args, value)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": made.pm.state_dict(), "spent": made.spent, "notes": made.notes,
                    "reference": made.reference}, path)
    saved = torch.load(path, weights_only=False)
    return Pruned(_prepared(saved["state"], dense, args.model), saved["spent"], saved["notes"], saved["reference"])


def reconstructed_model(method: str, value, ridge: float, dense: nn.Module, ctx: dict, args, seed: int) -> tuple:
    """``(pruned, record)``: the pruned model of :func:`pruned_model` after :func:`fxprune.reconstruct` on the
    calibration batches with ``ridge``, and what reconstruction did and took; kept in ``out/pruned/`` too."""
    path = ctx["out"] / "pruned" / f"{_key(method, value, args, seed)}-ridge{ridge}.pt"
    if not path.exists():
        pruned = pruned_model(method, value, dense, ctx, args, seed)
        result = fxprune.reconstruct(pruned.pm, ctx["calib"], ridge=ridge, reference=pruned.reference)
        record = {"seconds": result.seconds, "images": result.images, "passes": result.passes,
                  "sites": len(result.fits), "consumers": sum(len(f.consumers) for f in result.fits),
                  "skipped": result.skipped, "unexplained": [round(f.unexplained, 4) for f in result.fits],
                  "threads": torch.get_num_threads(), "load_average": list(os.getloadavg())}
        torch.save({"state": pruned.pm.state_dict(), "record": record}, path)
    saved = torch.load(path, weights_only=False)
    pruned = pruned_model(method, value, dense, ctx, args, seed)
    pruned.pm.load_state_dict(saved["state"])
    return pruned, saved["record"]


def _key(method: str, value, args, seed: int) -> str:
    name = HYPERPARAMETER.get(method, "none")
    return f"{method}-{name}={value}-seed{seed}-dense{dense_seed(args, seed)}-t{args.target}"


def _prepared(state: dict, dense: nn.Module, model_name: str) -> torch.fx.GraphModule:
    pm = fxprune.prepare(build_model(model_name).to(next(dense.parameters()).device), example(dense))
    pm.load_state_dict(state)
    return pm
