"""CIFAR-10: EPFS and OICSR against one-shot and sparsity baselines at the same MACs and epochs.

Protocol (every method starts from the same dense checkpoint and then gets the same
number of further epochs, so all rows have the same total epochs):

1. dense pre-training for ``dense_epochs`` (SGD, Nesterov momentum, one-cycle LR);
2. per method, ``method_epochs`` more epochs; a sparse phase trains at a constant
   ``finetune_lr`` and every model is fine-tuned after pruning on a cosine from
   ``finetune_lr`` (``--one-schedule``: the sparse phase and the fine-tuning are parts of
   one cosine over the method epochs instead, which costs the sparse methods accuracy):

   - ``dense``: keeps training the dense model (the reference at the same total epochs);
   - ``epfs``: ``sparse_epochs`` of EPFS (masks and gates by FISTA, elastic net, Center
     Loss) during which structures are switched off gradually (``EPFS.anneal``, the whole
     target by a quarter of the phase, ``--anneal-until``; then the l1 stops, ``--no-release``
     keeps it), pruned to the MACs target, finalized, fine-tuned for the rest;
   - ``oicsr``: ``sparse_epochs`` with the out-in group lasso, global greedy pruning to the
     target, finalized, fine-tuned for the rest;
   - ``l1``: L1-norm filter pruning (Li et al., ICLR 2017) straight from the dense model,
     filters ranked by l1 norm relative to their layer, to the target; fine-tuned for all
     ``method_epochs``;
   - ``slimming``: network slimming (Liu et al., ICCV 2017), ``sparse_epochs`` with l1 on
     BatchNorm scales, pruned by global |gamma| to the target, fine-tuned for the rest;
   - ``tp``: Torch-Pruning's GroupNormPruner (when ``torch_pruning`` is installed):
     ``sparse_epochs`` of its group regulariser, pruned to the target, fine-tuned;
   - ``epfs-blocks``: EPFS with block pruning only (branch gates), for ResNets.
   - ``epfs-filters``: EPFS with filter pruning only (channel masks; no branch gates).

Every pruned row is measured on its finalized model: top-1 on the 10,000 test images,
MACs and parameters (``fxprune.count``).

    python benchmarks/cifar10.py --data /tmp/fxprune-data/cifar10 --model resnet20 --protocol quick
    python benchmarks/cifar10.py --data DIR --model resnet20 --methods dense epfs l1 slimming --seeds 0 1 2
    python benchmarks/cifar10.py --data DIR --model resnet56 --methods dense epfs-blocks --protocol quick

``--data`` is a CIFAR-10 image folder (``train/``, ``test/``), a torchvision CIFAR10 root,
or the ``.tar.gz`` (extracted once into ``--scratch``, never into the repository). Nothing
is downloaded. ``--seeds`` runs every row once per seed (the method epochs' shuffling and
augmentation, the row's torch seed; the dense starting point is shared, or with ``--dense-per-seed``
trained once per seed) and the table gives the mean, the spread and the mean gap to the dense row of
the same seed, since a row varies from run to run and the dense start moves the whole table.
Results go to ``--out/MODEL``: ``seedN/results.json`` per seed, and over the seeds ``summary.json``,
``table.md`` and ``accuracy_vs_macs.png``; finished rows are reused when the command is run again
(``--fresh`` to redo them all, ``--redo METHOD ...`` to redo some).

Protocols: ``quick`` (6 dense + 4 per method, 1 of them sparse: 30 epochs for six rows, for a
CPU) and ``full`` (160 dense + 80 per method, 40 sparse: for a GPU, ``--device cuda``; batches
are still augmented on the CPU, then moved)::

    python benchmarks/cifar10.py --data DIR --model resnet20 --protocol full --device cuda --seeds 0 1 2 \
        --dense-per-seed

One ResNet-20 leaves most of a GPU idle: ``benchmarks/cifar10_seeds.sh`` runs the seeds as
parallel processes and then ``--report``, which trains nothing and tables the results on disk.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see cifar_dense_probe.py: shared cores

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from tabulate import tabulate  # noqa: E402

import fxprune  # noqa: E402
from benchmarks.cifar_data import cifar10_loaders  # noqa: E402
from benchmarks.cifar_models import MODELS, build_model  # noqa: E402
from fxprune.methods.importance import relative_to_group  # noqa: E402
from fxprune.report.machine import machine  # noqa: E402
from fxprune.training import Trainer, evaluate  # noqa: E402


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
METHODS = ("dense", "epfs", "epfs-filters", "oicsr", "l1", "slimming", "tp", "epfs-blocks")


# -- training ----------------------------------------------------------------------------------


def sgd(params, lr: float, weight_decay: float):
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def train(model, loaders, epochs: int, lr: float, proto: Protocol, *, schedule: str = "cosine",
          within: tuple[int, int] | None = None, params=None, extra_loss=None, extra_optimizers=None,
          step_hooks=(), checkpoint_dir=None, progress=True):
    """Train ``model`` for ``epochs`` with SGD and a per-batch LR schedule; returns the history.

    ``schedule`` is ``"cosine"``, ``"onecycle"`` or ``"constant"``. For a cosine,
    ``within=(start, span)`` makes these epochs the part of a ``span``-epoch schedule that
    begins ``start`` epochs in (default: a cosine over these epochs alone).
    """
    if epochs <= 0:
        return []
    train_data, test_data = loaders
    opt = sgd(params if params is not None else model.parameters(), lr, proto.weight_decay)
    total = epochs * len(train_data)
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.25)
    elif schedule == "cosine":
        start, span = within if within is not None else (0, epochs)
        first, steps = start * len(train_data), span * len(train_data)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(first + s, steps) / steps)))
    else:
        sched = None
    model.to(memory_format=torch.channels_last)  # about 15% faster convolutions on this CPU
    trainer = Trainer(model, opt, sched, extra_loss=extra_loss, extra_optimizers=extra_optimizers,
                      step_hooks=step_hooks, checkpoint_dir=checkpoint_dir, keep_last=1, progress=progress)
    return trainer.fit(ChannelsLast(train_data), None, epochs)  # evaluated once, at the end of each row


def sparse_schedule(proto: Protocol, args) -> dict:
    """``train`` arguments for a sparse phase: constant LR, or the start of the method's one cosine."""
    return {"within": (0, proto.method_epochs)} if args.one_schedule else {"schedule": "constant"}


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


def dense_model(name: str, loaders, proto: Protocol, out: Path, progress: bool, seed: int = 0,
                device: str = "cpu") -> nn.Module:
    """A dense starting point (initialisation and data order from ``seed``), trained once and cached in ``out``."""
    suffix = f"-seed{seed}" if seed else ""
    path = out / f"dense-{name}-{proto.dense_epochs}{suffix}.pt"
    if path.exists():
        model = build_model(name).to(device)
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return model
    torch.manual_seed(seed)
    loaders[0].seed = seed
    model = build_model(name).to(device)  # initialised on the CPU from the seed, whatever the device
    train(model, loaders, proto.dense_epochs, proto.lr, proto, schedule="onecycle",
          checkpoint_dir=out / f"ckpt-dense-{name}{suffix}", progress=progress)
    torch.save(model.state_dict(), path)
    return model


# -- methods: each returns (model to fine-tune, epochs already spent, notes) ----------------------


def run_dense(model, loaders, proto, target, args):
    train(model, loaders, proto.method_epochs, proto.finetune_lr, proto, progress=args.progress)
    return model, proto.method_epochs, {}


def run_epfs(model, loaders, proto, target, args, blocks_only: bool = False, filters_only: bool = False):
    x = example(model)
    pm = fxprune.prepare(model, x)
    epfs = fxprune.EPFS(pm, lr=args.mask_lr, l1=args.mask_l1, l2=args.mask_l2, gate_l1=args.gate_l1,
                        center=0.0 if blocks_only else args.center, num_classes=10,
                        filters=not blocks_only, blocks=bool(fxprune.branches(pm)) and not filters_only,
                        normalise=args.normalise)
    total = proto.sparse_epochs * len(loaders[0])  # gradual pruning: the target is off by anneal_until of the phase
    hooks = [epfs.anneal_hook(total, target, args.anneal_until, release=args.release)] if args.anneal_until > 0 else []
    train(pm, loaders, proto.sparse_epochs, proto.finetune_lr, proto, **sparse_schedule(proto, args),
          params=fxprune.weight_parameters(pm), extra_loss=lambda m, out, feats, y: epfs.loss(y),
          extra_optimizers={"masks": epfs.optimizer}, step_hooks=hooks, progress=args.progress)
    result = epfs.prune(target=target)
    epfs.close()
    return fxprune.finalize(pm), proto.sparse_epochs, {"budget": asdict(result), "gates_removed": result.branches,
                                                        "anneal_until": args.anneal_until, "mask_l1": args.mask_l1,
                                                        "normalise": args.normalise, "release": args.release}


def run_oicsr(model, loaders, proto, target, args):
    x = example(model)
    pm = fxprune.prepare(model, x)
    reg = fxprune.OutInGroupLasso(pm, lam=args.oicsr_lam)
    train(pm, loaders, proto.sparse_epochs, proto.finetune_lr, proto, **sparse_schedule(proto, args),
          params=fxprune.weight_parameters(pm), extra_loss=lambda m, out, feats, y: reg.penalty(),
          progress=args.progress)
    result = fxprune.greedy_prune(pm, target, step=0.05)
    return fxprune.finalize(pm), proto.sparse_epochs, {"budget": asdict(result)}


def run_l1(model, loaders, proto, target, args):
    pm = fxprune.prepare(model, example(model))
    scores = relative_to_group(pm, fxprune.channel_importance(pm, "l1"))
    result = fxprune.prune_to_macs(pm, target, scores)
    return fxprune.finalize(pm), 0, {"budget": asdict(result)}


def run_slimming(model, loaders, proto, target, args):
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    def bn_l1(m, out, feats, y):
        return args.slim_lam * sum(bn.weight.abs().sum() for bn in norms)

    train(model, loaders, proto.sparse_epochs, proto.finetune_lr, proto, **sparse_schedule(proto, args),
          extra_loss=bn_l1, progress=args.progress)
    pm = fxprune.prepare(model, example(model))
    result = fxprune.prune_to_macs(pm, target, fxprune.channel_importance(pm, "bn_scale"))
    return fxprune.finalize(pm), proto.sparse_epochs, {"budget": asdict(result)}


def run_tp(model, loaders, proto, target, args):
    import torch_pruning as tp  # optional: pip install torch-pruning

    x = example(model)
    base_macs = fxprune.count(model, x).macs
    pruner = tp.pruner.GroupNormPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                       pruning_ratio=_tp_ratio(model, x, target, base_macs), global_pruning=False,
                                       ignored_layers=[model.fc if hasattr(model, "fc") else model.classifier])

    def regularize(trainer, step):
        pruner.regularize(model)

    train(model, loaders, proto.sparse_epochs, proto.finetune_lr, proto, **sparse_schedule(proto, args),
          step_hooks=[regularize], progress=args.progress)
    pruner.step()
    return model, proto.sparse_epochs, {"macs_reduction": 1 - fxprune.count(model, x).macs / base_macs}


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


def example(model: nn.Module) -> torch.Tensor:
    """An input for prepare and count, on the model's device."""
    return torch.randn(1, 3, 32, 32, device=next(model.parameters()).device)


RUNNERS = {"dense": run_dense, "epfs": run_epfs, "oicsr": run_oicsr, "l1": run_l1, "slimming": run_slimming,
           "tp": run_tp, "epfs-blocks": lambda *a: run_epfs(*a, blocks_only=True),
           "epfs-filters": lambda *a: run_epfs(*a, filters_only=True)}


# -- the benchmark -----------------------------------------------------------------------------------


def run_method(method: str, dense: nn.Module, loaders, proto: Protocol, target: float, args, seed: int) -> dict:
    torch.manual_seed(1 + seed)
    start = time.time()
    x = example(dense)
    base = fxprune.count(dense, x)
    model, spent, notes = RUNNERS[method](copy.deepcopy(dense), loaders, proto, target, args)
    if method != "dense":
        notes["top1_before_finetune"] = evaluate(model, loaders[1])  # what pruning itself cost
        train(model, loaders, proto.method_epochs - spent, proto.finetune_lr, proto,
              within=(spent, proto.method_epochs) if args.one_schedule else None, progress=args.progress)
    cost = fxprune.count(model, x)
    top1 = evaluate(model, loaders[1])
    return {"method": method, "top1": top1, "macs": cost.macs, "params": cost.params,
            "macs_reduction": 1 - cost.macs / base.macs, "params_reduction": 1 - cost.params / base.params,
            "epochs": proto.dense_epochs + proto.method_epochs, "seconds": time.time() - start, **notes}


def summarise(per_seed: dict) -> list:
    """One row per method over the seeds that ran it: means, the spread of top-1 and the paired gap to dense.

    "vs dense" is the mean over seeds of (row - dense of the same seed), so the shuffling that both
    rows of a seed share cancels out; the top-1 spread is the sample standard deviation.
    """
    rows = []
    for method in METHODS:
        runs = {seed: rows_[method] for seed, rows_ in per_seed.items() if method in rows_}
        if not runs:
            continue
        top1 = [r["top1"] for r in runs.values()]
        gaps = [r["top1"] - per_seed[s]["dense"]["top1"] for s, r in runs.items() if "dense" in per_seed[s]]
        row = {"method": method, "seeds": sorted(runs), "top1": float(np.mean(top1)),
               "top1_sd": float(np.std(top1, ddof=1)) if len(top1) > 1 else None, "top1_per_seed": top1,
               "vs_dense": float(np.mean(gaps)) if gaps else None, "epochs": next(iter(runs.values()))["epochs"]}
        for key in ("macs", "params", "macs_reduction", "params_reduction", "top1_before_finetune"):
            values = [r[key] for r in runs.values() if key in r]
            if values:
                row[key] = float(np.mean(values))
        rows.append(row)
    return rows


def table(rows: list) -> str:
    def pct(value):
        return "" if value is None else f"{100 * value:.2f}"

    body = [[r["method"], len(r["seeds"]), pct(r["top1"]), pct(r["top1_sd"]),
             " ".join(f"{100 * t:.2f}" for t in r["top1_per_seed"]),
             "" if r["vs_dense"] is None else f"{100 * r['vs_dense']:+.2f}",
             f"{100 * r['top1_before_finetune']:.1f}" if "top1_before_finetune" in r else "",
             f"{r['macs'] / 1e6:.1f}", f"{100 * r['macs_reduction']:.1f}%", f"{r['params'] / 1e6:.3f}",
             f"{100 * r['params_reduction']:.1f}%", r["epochs"]] for r in rows]
    return tabulate(body, headers=["method", "seeds", "top-1 %", "sd", "per seed", "vs dense",
                                   "right after pruning", "MMACs", "MACs removed", "M params", "params removed",
                                   "epochs"], tablefmt="github")


def plot(rows: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["macs"] / 1e6, 100 * r["top1"], s=40)
        ax.annotate(r["method"], (r["macs"] / 1e6, 100 * r["top1"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("MMACs")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--scratch", default="/tmp/fxprune-data")
    p.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    p.add_argument("--methods", nargs="+", default=["dense", "epfs", "oicsr", "l1", "slimming", "tp"],
                   choices=METHODS)
    p.add_argument("--protocol", default="quick", choices=sorted(PROTOCOLS))
    p.add_argument("--dense-epochs", type=int, help="override the protocol")
    p.add_argument("--method-epochs", type=int, help="override the protocol")
    p.add_argument("--sparse-epochs", type=int, help="override the protocol")
    p.add_argument("--target", type=float, default=0.5, help="MACs reduction for every pruned row")
    p.add_argument("--subset", type=int, default=None, help="images per class (train and test)")
    p.add_argument("--mask-lr", type=float, default=0.1)
    p.add_argument("--mask-l1", type=float, default=0.003)
    p.add_argument("--mask-l2", type=float, default=1e-4)
    p.add_argument("--gate-l1", type=float, default=0.01)
    p.add_argument("--center", type=float, default=1e-3)
    p.add_argument("--normalise", action="store_true",
                   help="EPFS(normalise=True): hold the largest mask of each BatchNorm-normalised group at 1")
    p.add_argument("--anneal-until", type=float, default=0.25,
                   help="EPFS switches structures off gradually until this share of its sparse epochs (0: at the end)")
    p.add_argument("--no-release", dest="release", action="store_false",
                   help="EPFS.anneal(release=False): keep the l1 on after the target is switched off")
    p.add_argument("--one-schedule", action="store_true",
                   help="sparse phase and fine-tuning follow one cosine over the method epochs "
                        "(default: constant LR while sparse, a fresh cosine after pruning)")
    p.add_argument("--oicsr-lam", type=float, default=5e-4)
    p.add_argument("--slim-lam", type=float, default=1e-4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="run every row once per seed (shuffling and augmentation order of the method epochs, "
                        "the row's torch seed); the table gives means and the spread. The dense starting "
                        "point is shared: trained once, with seed 0's order")
    p.add_argument("--dense-per-seed", action="store_true",
                   help="train a dense starting point per seed (initialisation and order from that seed), so "
                        "the spread and the gaps to dense include the dense start's own variation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu",
                   help="where models train: cpu, or cuda for the full protocol (batches are augmented on the CPU)")
    p.add_argument("--out", default="out/cifar10")
    p.add_argument("--fresh", action="store_true", help="recompute rows already in results.json")
    p.add_argument("--redo", nargs="+", default=[], choices=METHODS, metavar="METHOD",
                   help="recompute these rows, keep the others in results.json")
    p.add_argument("--report", action="store_true",
                   help="train nothing: the table, summary and plot from the seeds' results already under --out "
                        "(seeds that ran as separate processes, for instance; seeds with no rows are left out)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    proto = copy.copy(PROTOCOLS[args.protocol])
    for field in ("dense_epochs", "method_epochs", "sparse_epochs"):
        if getattr(args, field) is not None:
            setattr(proto, field, getattr(args, field))
    out = Path(args.out) / args.model
    out.mkdir(parents=True, exist_ok=True)
    if args.report:  # the table from rows already on disk, e.g. seeds that ran as separate processes
        per_seed = {seed: saved_rows(out / f"seed{seed}", proto, args, seed) for seed in args.seeds}
        per_seed = {seed: rows for seed, rows in per_seed.items() if rows}
        if not per_seed:
            print(f"no results under {out} for seeds {args.seeds} with this protocol")
            return 1
    else:
        per_seed = train_seeds(args, proto, out)
    rows = summarise(per_seed)
    meta = {**run_meta(args, proto), "seeds": sorted(per_seed)}
    (out / "summary.json").write_text(json.dumps({**meta, "rows": rows, "per_seed": per_seed}, indent=1))
    text = table(rows)
    (out / "table.md").write_text(text + "\n")
    plot(rows, out / "accuracy_vs_macs.png", f"{args.model}, CIFAR-10, {args.protocol} protocol, "
                                             f"{len(per_seed)} seed{'s' if len(per_seed) > 1 else ''}")
    print(text)
    return 0


def train_seeds(args, proto: Protocol, out: Path) -> dict:
    """Every seed's rows (trained, or reused from disk), by seed; each dense start is built once."""
    loaders = cifar10_loaders(args.data, proto.batch_size, subset=args.subset, seed=0, scratch_dir=args.scratch)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    starts, per_seed = {}, {}  # dense seed -> its dense start
    for seed in args.seeds:
        start = dense_seed(args, seed)
        if start not in starts:
            starts[start] = dense_model(args.model, loaders, proto, out, args.progress, seed=start, device=args.device)
        per_seed[seed] = run_seed(seed, starts[start], loaders, proto, out / f"seed{seed}", args)
    return per_seed


def run_meta(args, proto: Protocol) -> dict:
    """What a results file records about the run that wrote it."""
    return {"model": args.model, "protocol": asdict(proto), "target": args.target, "subset": args.subset,
            "machine": machine(), "args": vars(args)}


def dense_seed(args, seed: int) -> int:
    """The seed of the dense start a seed's rows begin from."""
    return seed if args.dense_per_seed else 0


def run_seed(seed: int, dense: nn.Module, loaders, proto: Protocol, out: Path, args) -> dict:
    """Every requested row for one seed, reusing rows already in ``out/results.json``; returns them by method."""
    out.mkdir(parents=True, exist_ok=True)
    loaders[0].seed = seed
    results_path = out / "results.json"
    rows = {} if args.fresh else saved_rows(out, proto, args, seed)
    rows = {method: row for method, row in rows.items() if method not in args.redo}
    for method in args.methods:
        if method in rows:
            continue
        if method == "tp":
            try:
                import torch_pruning  # noqa: F401
            except ImportError:
                print("torch_pruning is not installed: no tp row (pip install torch-pruning)")
                continue
        print(f"== {args.model} {method} seed {seed}", flush=True)
        rows[method] = {**run_method(method, dense, loaders, proto, args.target, args, seed), "threads": args.threads}
        print(json.dumps(rows[method]), flush=True)
        meta = {**run_meta(args, proto), "seed": seed, "dense_seed": dense_seed(args, seed)}
        results_path.write_text(json.dumps({**meta, "rows": list(rows.values())}, indent=1))
    return rows


def saved_rows(out: Path, proto: Protocol, args, seed: int) -> dict:
    """The rows in ``out/results.json`` that this run may reuse (same protocol, same dense start), by method."""
    results_path = out / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.exists() else {}
    if saved.get("protocol") != asdict(proto) or saved.get("dense_seed", 0) != dense_seed(args, seed):
        return {}
    return {r["method"]: r for r in saved.get("rows", [])}


if __name__ == "__main__":
    raise SystemExit(main())
