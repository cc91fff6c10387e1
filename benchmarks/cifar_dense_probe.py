"""Probe: train a dense CIFAR-10 model for a short budget and report its speed and accuracy.

Measures what a quick pruning protocol must budget for on a CPU machine:
training images/s (median over the batches of each epoch, compute only),
seconds per epoch (data included) and test top-1 after every epoch. Writes
the per-epoch figures as JSON and prints a table.

Usage::

    python benchmarks/cifar_dense_probe.py --data ../shared/data/cifar10-jpg.tar.gz \\
        --model resnet20 --epochs 15 --out /tmp/fxprune-probe/resnet20-15.json

``--data`` is an image-folder root, a torchvision CIFAR-10 root, or the
``.tar.gz`` (extracted once to ``--scratch``, never into the repository).

OpenMP threads sleep rather than spin between parallel regions here
(``OMP_WAIT_POLICY=PASSIVE`` unless already set): on a machine shared with
other busy processes, spinning threads slow training down. Set
``OMP_WAIT_POLICY=ACTIVE`` to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(_ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP, so before the import

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from benchmarks.cifar_data import cifar10_loaders, extract_archive  # noqa: E402
from benchmarks.cifar_models import MODELS, build_model  # noqa: E402
from fxprune.training.trainer import Trainer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options; see ``--help``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="CIFAR-10 root or the cifar10-jpg .tar.gz")
    p.add_argument("--scratch", default="/tmp/fxprune-data", help="where a .tar.gz is extracted")
    p.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=("cosine", "onecycle"), default="onecycle")
    p.add_argument("--subset", type=int, default=None, help="first N images per class (quick runs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-channels-last", action="store_true",
                   help="keep NCHW (channels_last was ~15%% faster on this CPU)")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint every epoch here (and resume)")
    p.add_argument("--out", default=None, help="write the per-epoch figures as JSON here")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, lr: float, total_steps: int):
    """Per-batch LR schedule: cosine from ``lr`` to 0, or one-cycle peaking at ``lr``."""
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.15,
                                               div_factor=10.0, final_div_factor=100.0)


def print_epoch(trainer: Trainer, h: dict) -> None:
    """Epoch hook: one line of figures per epoch, flushed."""
    print(f"epoch {h['epoch']:3d}  {h['images_per_second']:6.0f} img/s  {h['epoch_seconds']:6.1f} s  "
          f"eval {h['eval_seconds']:5.1f} s  loss {h['train_loss']:.3f}  train {100 * h['train_top1']:5.2f}%  "
          f"test {100 * h['test_top1']:5.2f}%", flush=True)


def main(argv=None) -> list[dict]:
    """Run the probe; returns the metrics history."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = args.data
    if str(data).endswith((".tar.gz", ".tgz")):
        data = extract_archive(data, args.scratch)
    t0 = time.perf_counter()
    train, test = cifar10_loaders(data, args.batch_size, subset=args.subset, seed=args.seed)
    load_s = time.perf_counter() - t0
    model = build_model(args.model)
    if not args.no_channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    sched = make_scheduler(opt, args.schedule, args.lr, args.epochs * len(train))
    trainer = Trainer(model, opt, sched, checkpoint_dir=args.checkpoint_dir, progress=not args.no_progress,
                      epoch_hooks=[print_epoch])
    print(f"{args.model}: {sum(p.numel() for p in model.parameters())} params, {len(train.labels)} train / "
          f"{len(test.labels)} test images (loaded in {load_s:.1f}s), {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}", flush=True)
    history = trainer.fit(train, test, args.epochs)
    rows = [[h["epoch"], f"{h['lr']:.4f}", f"{h['images_per_second']:.0f}", f"{h['epoch_seconds']:.1f}",
             f"{h['eval_seconds']:.1f}", f"{h['train_loss']:.3f}", f"{100 * h['train_top1']:.2f}",
             f"{100 * h['test_top1']:.2f}"] for h in history]
    print(tabulate(rows, headers=["epoch", "lr", "img/s", "s/epoch", "eval s", "loss", "train %", "test %"]))
    print(f"median img/s {statistics.median(h['images_per_second'] for h in history):.0f}, "
          f"median s/epoch {statistics.median(h['epoch_seconds'] for h in history):.1f}, "
          f"total {sum(h['epoch_seconds'] + h['eval_seconds'] for h in history) / 60:.1f} min with evaluation")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
                                              "threads": torch.get_num_threads(), "load_seconds": load_s,
                                              "history": history}, indent=1))
    return history


if __name__ == "__main__":
    main()
