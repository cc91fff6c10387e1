"""The demo: train a small CNN, EPFS-prune it to half its MACs, finalize, fine-tune, compare.

Everything it needs is in the package: the data is the synthetic :mod:`fxprune.demo.shapes`
set (or a CIFAR-10-style image folder with ``--data``), the model a small CIFAR ResNet
(:func:`fxprune.demo.cifar_resnet.small_resnet`). The pipeline is the one a user's own training
loop follows:

    dense training ── prepare ── EPFS sparse training ── prune to a MACs target
        ── finalize ── fine-tune ── compare, report, save (.pt2)

Output folder (default ``out/demo``): ``demo.png`` (test accuracy over the three
phases, channels kept per layer), ``report.html`` (self-contained per-layer report),
``small.pt2`` (the pruned model; ``fxprune.export.load`` opens it), ``table.md`` and
``result.json`` (every figure it prints, with its config and the machine).

Example:
    >>> result = run_demo("out/demo-quick", config=QUICK, progress=False, echo=lambda *a: None)  # doctest: +SKIP
    >>> print(result.table)                                                                       # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from fxprune import export
from fxprune.core.finalize import finalize
from fxprune.core.prepare import prepare
from fxprune.demo.cifar_resnet import small_resnet
from fxprune.demo.shapes import CLASSES, make_shapes
from fxprune.methods.epfs import EPFS
from fxprune.report.compare import evaluate, interleaved_latencies_ms, measure, stats_table
from fxprune.report.html import draw_layers, layer_channels, write_html
from fxprune.report.machine import machine
from fxprune.training.data import ImageBatches, class_names, load_image_folder
from fxprune.training.phases import train_phase


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and hyperparameters of the demo (the defaults are what ``fxprune demo`` runs).

    Args:
        train_size, test_size: synthetic images (with ``--data``: images per class, at most).
        batch_size: training batch size.
        dense_epochs, sparse_epochs, finetune_epochs: epochs of the three phases.
        lr: peak learning rate of dense training (one-cycle); sparse training and
            fine-tuning use a fifth of it, cosine-annealed.
        target_macs: the MACs reduction to reach, in (0, 1).
        epfs_lr, l1, gate_l1, center: EPFS's FISTA step, l1 strengths on channel masks and
            branch gates, and Center Loss weight.
        latency_batch: batch size of the latency measurement.
        seed: seeds the data, the model and the shuffling.
    """

    train_size: int = 10000
    test_size: int = 2000
    batch_size: int = 64
    dense_epochs: int = 4
    sparse_epochs: int = 3
    finetune_epochs: int = 2
    lr: float = 0.1
    target_macs: float = 0.5
    epfs_lr: float = 0.05
    l1: float = 0.02
    gate_l1: float = 0.02
    center: float = 0.01
    latency_batch: int = 1
    seed: int = 0


QUICK = DemoConfig(train_size=300, test_size=100, batch_size=50, dense_epochs=1, sparse_epochs=1, finetune_epochs=1)
"""A seconds-long configuration for tests and smoke runs."""


@dataclass
class DemoResult:
    """What :func:`run_demo` measured and wrote.

    Args:
        stats: rows for the dense, pruned and fine-tuned models (latencies timed in turns).
        table: :func:`fxprune.report.compare.stats_table` of ``stats``.
        history: one dict per epoch (``phase``, ``epoch``, ``train_top1``, ``test_top1``, ...)
            and one with phase ``"pruned"``: the test accuracy right after pruning.
        reduction: the measured MACs reduction of the pruned model.
        removed_branches: residual branches EPFS removed whole.
        files: name -> path of everything written.
        seconds: wall time of the whole run.
    """

    stats: list
    table: str
    history: list
    reduction: float
    removed_branches: list
    files: dict = field(default_factory=dict)
    seconds: float = 0.0


def demo_data(config: DemoConfig, data_dir: Optional[str] = None):
    """Train and test :class:`~fxprune.training.data.ImageBatches` and the class names."""
    if data_dir is None:
        train = make_shapes(config.train_size, seed=config.seed + 1)
        test = make_shapes(config.test_size, seed=config.seed + 2)
        classes = list(CLASSES)
    else:
        n_classes = max(1, len(class_names(data_dir, "train")))
        *train, classes = load_image_folder(data_dir, "train", 32, per_class=max(1, config.train_size // n_classes))
        *test, _ = load_image_folder(data_dir, "test", 32, per_class=max(1, config.test_size // n_classes))
    train_batches = ImageBatches(*train, config.batch_size, seed=config.seed)
    test_batches = ImageBatches(*test, 500, shuffle=False, augment=False)
    return train_batches, test_batches, classes


def run_demo(out_dir: str = "out/demo", data_dir: Optional[str] = None, config: DemoConfig = DemoConfig(),
             progress: bool = True, echo: Callable[..., None] = print) -> DemoResult:
    """Run the whole demo and write its files to ``out_dir``.

    Args:
        out_dir: the output folder (created).
        data_dir: an image folder with ``train/`` and ``test/`` (CIFAR-10 layout) instead of
            the synthetic shapes.
        config: sizes and hyperparameters (:data:`QUICK` for a smoke run).
        progress: show tqdm progress bars.
        echo: where progress lines go.

    Returns:
        A :class:`DemoResult`.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    train, test, classes = demo_data(config, data_dir)
    source = data_dir or f"synthetic shapes ({len(classes)} classes, generated)"
    echo(f"data: {source}: {len(train.labels)} training and {len(test.labels)} test images")
    model = small_resnet(num_classes=len(classes))
    example = torch.zeros(config.latency_batch, 3, 32, 32)
    history: list = []

    echo(f"1/4 dense training, {config.dense_epochs} epochs")
    train_phase("dense", model, train, test, config.dense_epochs, config.lr, history, echo=echo, progress=progress,
                one_cycle=True)

    echo(f"2/4 EPFS sparse training of channel masks and branch gates, {config.sparse_epochs} epochs")
    pm = prepare(model, example[:1])
    epfs = EPFS(pm, lr=config.epfs_lr, l1=config.l1, l2=1e-4, gate_l1=config.gate_l1, center=config.center,
                num_classes=len(classes), filters=True, blocks=True, macs_weighted=True)
    train_phase("sparse", pm, train, test, config.sparse_epochs, config.lr / 5, history, echo=echo,
                progress=progress, epfs=epfs, anneal_target=config.target_macs)

    echo(f"3/4 pruning to {100 * config.target_macs:.0f}% fewer MACs and finalizing")
    budget = epfs.prune(target=config.target_macs)
    epfs.close()
    small = finalize(pm)
    echo(f"  removed {budget.channels} channels and {len(budget.branches)} residual branches: "
         f"MACs {budget.macs_before:,} -> {budget.macs_after:,} ({100 * budget.reduction:.1f}% fewer)")
    history.append({"phase": "pruned", "test_top1": evaluate(small, test)})

    echo(f"4/4 fine-tuning the pruned model, {config.finetune_epochs} epochs")
    tuned = copy.deepcopy(small)
    train_phase("fine-tune", tuned, train, test, config.finetune_epochs, config.lr / 5, history, echo=echo,
                progress=progress)
    models = {"dense": model, "pruned": small, "pruned + fine-tuned": tuned}
    latencies = interleaved_latencies_ms(list(models.values()), example)
    stats = [measure(name, m, example, test, latency=ms) for (name, m), ms in zip(models.items(), latencies)]

    table = stats_table(stats)
    files = _write_outputs(out, pm, tuned, stats, history, example, source)
    result = DemoResult(stats, table, history, budget.reduction, list(budget.branches), files,
                        time.perf_counter() - start)
    files["result"] = _write_result(out / "result.json", result, config, source, budget.channels)
    echo("\n" + table + "\n")
    for name, path in files.items():
        echo(f"{name:<8} {path}")
    echo(f"done in {result.seconds / 60:.1f} min")
    return result


def _write_outputs(out: Path, pm, tuned, stats: list, history: list, example, source: str) -> dict:
    files = {"model": export.save(tuned, out / "small.pt2", example, metadata={"source": "fxprune demo"}),
             "report": write_html(pm, out / "report.html", finalized=tuned, stats=stats,
                                  title=f"fxprune demo: {source}")}
    (out / "table.md").write_text(stats_table(stats, tablefmt="github") + "\n")
    files["table"] = out / "table.md"
    try:
        files["plot"] = plot_demo(history, layer_channels(pm, tuned), out / "demo.png")
    except ImportError:
        files["plot"] = "(skipped: pip install matplotlib for the plot)"
    return files


def _write_result(path: Path, result: DemoResult, config: DemoConfig, source: str, channels: int) -> Path:
    """Every figure the demo printed, with what produced it, as JSON."""
    record = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "data": source, "config": dataclasses.asdict(config),
        "rows": [dataclasses.asdict(s) for s in result.stats],
        "macs_reduction": result.reduction, "channels_removed": channels,
        "branches_removed": result.removed_branches, "history": result.history, "seconds": result.seconds,
        "machine": machine(),
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def plot_demo(history: list, rows: list, path: Path) -> Path:
    """Test accuracy per epoch across the phases, and channels kept per layer, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, max(4.5, 1.2 + 0.25 * len(rows))),
                                      gridspec_kw={"width_ratios": [1, 1.2]})
    for phase in dict.fromkeys(h["phase"] for h in history):
        points = [(n + 1, h["test_top1"]) for n, h in enumerate(history) if h["phase"] == phase]
        style = "D" if phase == "pruned" else "o-"
        left.plot([p[0] for p in points], [100 * p[1] for p in points], style, label=phase, markersize=7)
    left.set_xlabel("epoch (all phases; the diamond is right after pruning)")
    left.set_ylabel("test top-1 (%)")
    left.set_title("Accuracy: dense, sparse (EPFS), fine-tuned after pruning")
    left.grid(alpha=0.3)
    left.legend()
    draw_layers(right, rows, "Channels kept per layer after pruning")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def config_with(config: DemoConfig, **changes) -> DemoConfig:
    """``config`` with the given fields changed (those passed as None are left alone)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
