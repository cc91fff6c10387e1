"""CIFAR-10: pruning methods at the same MACs and epochs, with hyper-parameters chosen on validation only.

Protocol (every method starts from the same dense start and then gets the same number of
further epochs, so all rows have the same total epochs):

1. ``--validation`` training images (5,000) are held out, drawn from ``--split-seed``; the
   rest is the training split. Nothing is chosen on the test set.
2. Dense start: ``dense_epochs`` on the training split (SGD, Nesterov momentum, one-cycle
   LR), one per seed with ``--dense-per-seed`` (else seed 0's, shared).
3. Hyper-parameters, on one seed (``--grid-seed``, default the first): each sparse method runs its sparse phase once per
   value of its grid (``--mask-l1`` for EPFS, ``--block-l1`` for EPFS on blocks, ``--oicsr-lam``,
   ``--slim-lam``), and the value whose pruned model, BatchNorm recalibrated, is best on validation is kept; then the
   reconstruction ridge (``--ridge``) likewise, per method, and whether BatchNorm is
   recalibrated after reconstruction (its fit already aims at the dense model's activations,
   BatchNorm statistics included). Grids and choices go to ``grid.json`` and into every row.
4. Rows: per method, ``method_epochs`` more epochs; a sparse phase at a constant
   ``finetune_lr``, then the cut, then fine-tuning on a cosine from ``finetune_lr`` for
   the rest (methods: :mod:`benchmarks.cifar_methods`). ``METHOD+rec`` is the same cut
   followed by :func:`fxprune.reconstruct` before fine-tuning; ``METHOD+kd`` (and ``METHOD+rec+kd``)
   fine-tunes with distillation from the dense start it was cut from (:class:`fxprune.training.Distillation`,
   temperature and weight fixed before any run, not tuned).
5. Measured: every pruned row on its finalized model (MACs, parameters, top-1). Before any
   fine-tuning, every pruned row is read twice: with BatchNorm recalibrated on
   ``--calib-images`` training images (no labels), and reconstructed from the same images
   (then recalibrated, where validation chose it). Test top-1 is read at the end of a row, after every choice was made.

    python benchmarks/cifar10.py --data /work/shared/data/cifar10-jpg.tar.gz --model resnet20 \\
        --methods dense l1 l1+rec epfs epfs+rec --seeds 0 1 2 --dense-per-seed --threads 1

``--seeds`` runs every row once per seed; the table gives means over seeds and paired
differences (row minus dense, minus the best baseline, minus l1, seed by seed) with their
standard errors (:mod:`benchmarks.cifar_report`). Results go to ``--out/MODEL``:
``seedN/results.json`` per seed, ``grid.json``, and over the seeds ``summary.json``,
``table.md`` and ``accuracy_vs_macs.png``; finished rows are reused when the command runs
again (``--fresh`` redoes all, ``--redo METHOD ...`` some). ``--report`` trains nothing and
tables what is on disk (seeds run as separate processes: ``benchmarks/cifar10_seeds.sh``).

``--data`` is a CIFAR-10 image folder (``train/``, ``test/``), a torchvision CIFAR10 root,
or the ``.tar.gz`` (extracted once into ``--scratch``, never into the repository). Nothing
is downloaded.

Protocols: ``quick`` (6 dense + 4 per method, 1 of them sparse; about 2.5 min an epoch for
ResNet-20 on one CPU core) and ``full`` (160 + 80, 40 sparse: for a GPU, ``--device cuda``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see cifar_dense_probe.py: shared cores

import torch  # noqa: E402

import fxprune  # noqa: E402
from benchmarks import cifar_methods as methods  # noqa: E402
from benchmarks.cifar_data import cifar10_splits  # noqa: E402
from benchmarks.cifar_methods import PROTOCOLS, Protocol, dense_seed, pruned_model, reconstructed_model  # noqa: E402
from benchmarks.cifar_models import MODELS  # noqa: E402
from benchmarks.cifar_report import plot, summarise, table  # noqa: E402
from fxprune.report.machine import machine  # noqa: E402
from fxprune.training import Distillation, evaluate, recalibrate_bn  # noqa: E402

BASES = ("l1", "epfs", "oicsr", "slimming", "epfs-blocks", "epfs-filters")
METHODS = ("dense", *[m for b in BASES for m in (b, b + "+rec", b + "+kd", b + "+rec+kd")], "tp")
KD_CHOICE = "fixed before any run (default T 4, weight 0.9: the KD baseline of Tian et al., ICLR 2020), not tuned"
CRITERION = ("validation top-1 of the pruned model before fine-tuning, BatchNorm recalibrated on the calibration "
             "images; the ridge, and whether BatchNorm is recalibrated after reconstruction: validation top-1 of "
             "the reconstructed model; on the grid seed")


def base_of(method: str) -> str:
    return method.removesuffix("+kd").removesuffix("+rec")


# -- hyper-parameters, on validation -------------------------------------------------------------


def choose_hyperparameters(args, ctx, dense, seed: int) -> dict:
    """Per base method: its grid, the validation top-1 of each value, and the value kept (``grid.json``)."""
    path = ctx["out"] / "grid.json"
    saved = json.loads(path.read_text()) if path.exists() and not args.fresh else {}
    if saved.get("setup") != setup(args, ctx["proto"]):
        saved = {}
    chosen = saved.get("methods", {})
    for base in sorted({base_of(m) for m in args.methods if m not in ("dense", "tp")}):
        name = methods.HYPERPARAMETER.get(base)
        values = getattr(args, name) if name else [None]
        entry = chosen.get(base, {})
        if entry.get("values") == values and entry.get("ridges") == args.ridge and entry.get("seed") == seed:
            continue
        scores = {}
        for value in values:
            cut = finalized(pruned_model(base, value, dense, ctx, args, seed).pm, ctx["calib"])
            scores[str(value)] = evaluate(cut, ctx["data"].val)
            print(f"grid {base} {name or 'no hyper-parameter'}={value}: validation {100 * scores[str(value)]:.2f}",
                  flush=True)
        value = values[max(range(len(values)), key=lambda i: scores[str(values[i])])]
        ridges = {}  # per ridge, validation top-1 as reconstructed, and with BatchNorm recalibrated after
        for ridge in args.ridge:
            pruned, _ = reconstructed_model(base, value, ridge, dense, ctx, args, seed)
            small = fxprune.finalize(pruned.pm)
            ridges[str(ridge)] = {"as_reconstructed": evaluate(small, ctx["data"].val),
                                  "recalibrated": evaluate(finalized(small, ctx["calib"]), ctx["data"].val)}
            print(f"grid {base} ridge={ridge}: validation {ridges[str(ridge)]}", flush=True)
        ridge, after = max(((r, k) for r in args.ridge for k in ("as_reconstructed", "recalibrated")),
                           key=lambda rk: ridges[str(rk[0])][rk[1]])
        chosen[base] = {"hyperparameter": name, "values": values, "validation_top1": scores, "value": value,
                        "ridges": args.ridge, "ridge_validation_top1": ridges, "ridge": ridge,
                        "recalibrate_after_reconstruction": after == "recalibrated", "seed": seed,
                        "criterion": CRITERION}
        path.write_text(json.dumps({"setup": setup(args, ctx["proto"]), "methods": chosen}, indent=1))
    return chosen


def finalized(pm, calib) -> torch.nn.Module:
    """The finalized model of ``pm`` (a prepared one; else ``pm`` itself), BatchNorm recalibrated on ``calib``."""
    small = fxprune.finalize(pm) if isinstance(pm, torch.fx.GraphModule) and hasattr(pm, "fxprune") else pm
    recalibrate_bn(small, calib, num_batches=len(calib))
    return small


# -- rows ----------------------------------------------------------------------------------------


def run_row(method: str, dense, ctx, args, seed: int, chosen: dict) -> dict:
    proto, data, calib = ctx["proto"], ctx["data"], ctx["calib"]
    start = time.time()
    x = methods.example(dense)
    base_cost = fxprune.count(dense, x)
    notes, no_ft = {}, {}
    if method == "dense":
        model, spent = copy.deepcopy(dense), 0
    else:
        base = base_of(method)
        hyper = chosen[base] if method != "tp" else {"value": None}
        pruned = pruned_model(base, hyper["value"], dense, ctx, args, seed)
        spent, notes = pruned.spent, {**pruned.notes, "hyperparameters": hyper}
        no_ft["recalibrated"] = finalized(pruned.pm if pruned.model is None else pruned.model, calib)
        if pruned.model is None:
            again, notes["reconstruction"] = reconstructed_model(base, hyper["value"], hyper["ridge"], dense, ctx,
                                                                 args, seed)
            small = fxprune.finalize(again.pm)
            no_ft["reconstructed"] = finalized(small, calib) if hyper["recalibrate_after_reconstruction"] else small
        model = copy.deepcopy(no_ft["reconstructed" if "+rec" in method else "recalibrated"])
    distill = None
    if method.endswith("+kd"):  # the teacher is the dense start this row was cut from (a copy: it is shared)
        teacher = copy.deepcopy(dense).to(memory_format=torch.channels_last)
        distill = Distillation(teacher, temperature=args.kd_temperature, weight=args.kd_weight)
        notes["distillation"] = {**distill.describe(), "teacher": "the dense start", "chosen": KD_CHOICE}
    torch.manual_seed(1 + seed)
    data.train.seed = seed
    methods.train(model, data.train, proto.method_epochs - spent, proto.finetune_lr, proto,
                  within=(spent, proto.method_epochs) if args.one_schedule else None, progress=args.progress,
                  distill=distill)
    cost = fxprune.count(model, x)
    # every choice is made: the test set is read now, once, for this row's models
    row = {"method": method, "val_top1": evaluate(model, data.val), "top1": evaluate(model, data.test),
           "no_finetune": {kind: {"val": evaluate(m, data.val), "test": evaluate(m, data.test),
                                  "macs": fxprune.count(m, x).macs} for kind, m in no_ft.items()},
           "macs": cost.macs, "params": cost.params, "macs_reduction": 1 - cost.macs / base_cost.macs,
           "params_reduction": 1 - cost.params / base_cost.params,
           "epochs": proto.dense_epochs + proto.method_epochs, "seconds": time.time() - start, **notes}
    return row


def setup(args, proto: Protocol) -> dict:
    """What rows and grid entries must share to be reused."""
    return {"model": args.model, "protocol": asdict(proto), "target": args.target, "subset": args.subset,
            "validation": args.validation, "split_seed": args.split_seed, "calib_images": args.calib_images}


def run_meta(args, proto: Protocol) -> dict:
    """What a results file records about the run that wrote it."""
    return {"model": args.model, "protocol": asdict(proto), "target": args.target, "setup": setup(args, proto),
            "machine": machine(), "args": vars(args)}


def run_seed(seed: int, dense, ctx, args, chosen: dict) -> tuple:
    """Every requested row for one seed, reusing rows in ``seedN/results.json`` made with the same choices."""
    out = ctx["out"] / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    rows, start = ({}, None) if args.fresh else saved_rows(out, ctx["proto"], args, seed)
    rows = {m: r for m, r in rows.items() if m not in args.redo and same_choice(r, chosen, args)}
    if start is None:
        start = {"val": evaluate(dense, ctx["data"].val), "test": evaluate(dense, ctx["data"].test)}
    for method in args.methods:
        if method in rows:
            continue
        if method == "tp" and not _has_torch_pruning():
            continue
        print(f"== {args.model} {method} seed {seed}", flush=True)
        rows[method] = {**run_row(method, dense, ctx, args, seed, chosen), "threads": args.threads}
        print(json.dumps({k: v for k, v in rows[method].items() if k != "budget"}), flush=True)
        meta = {**run_meta(args, ctx["proto"]), "seed": seed, "dense_seed": dense_seed(args, seed),
                "dense_start": start, "hyperparameters": chosen}
        path.write_text(json.dumps({**meta, "rows": list(rows.values())}, indent=1))
    return rows, start


def same_choice(row: dict, chosen: dict, args) -> bool:
    """Whether a saved row used the hyper-parameters chosen now."""
    hyper = row.get("hyperparameters")
    if row["method"] in ("dense", "tp") or hyper is None:
        return True
    now = chosen.get(base_of(row["method"]), {})
    keys = ("value", "ridge", "recalibrate_after_reconstruction")
    kd = row.get("distillation")
    if kd is not None and (kd["temperature"], kd["weight"]) != (args.kd_temperature, args.kd_weight):
        return False
    return all(hyper.get(k) == now.get(k) for k in keys)


def saved_rows(out: Path, proto: Protocol, args, seed: int) -> tuple:
    """The rows in ``out/results.json`` this run may reuse (same setup and dense start), and the dense start's top-1."""
    path = out / "results.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    if saved.get("setup") != setup(args, proto) or saved.get("dense_seed", 0) != dense_seed(args, seed):
        return {}, None
    return {r["method"]: r for r in saved.get("rows", [])}, saved.get("dense_start")


def _has_torch_pruning() -> bool:
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        print("torch_pruning is not installed: no tp row (pip install torch-pruning)")
        return False
    return True


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--scratch", default="/tmp/fxprune-data")
    p.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    p.add_argument("--methods", nargs="+", default=["dense", "l1", "l1+rec", "epfs", "epfs+rec", "slimming", "oicsr"],
                   choices=METHODS)
    p.add_argument("--protocol", default="quick", choices=sorted(PROTOCOLS))
    p.add_argument("--dense-epochs", type=int, help="override the protocol")
    p.add_argument("--method-epochs", type=int, help="override the protocol")
    p.add_argument("--sparse-epochs", type=int, help="override the protocol")
    p.add_argument("--target", type=float, default=0.5, help="MACs reduction for every pruned row")
    p.add_argument("--subset", type=int, default=None, help="images per class (train and test)")
    p.add_argument("--validation", type=int, default=5000, help="training images held out for choosing")
    p.add_argument("--split-seed", type=int, default=0, help="which training images are held out")
    p.add_argument("--calib-images", type=int, default=1024,
                   help="training images (no labels, no augmentation) for BatchNorm recalibration and reconstruction")
    p.add_argument("--mask-l1", type=float, nargs="+", default=[0.001, 0.003, 0.01], help="EPFS's grid")
    p.add_argument("--oicsr-lam", type=float, nargs="+", default=[1e-4, 5e-4, 2e-3], help="OICSR's grid")
    p.add_argument("--slim-lam", type=float, nargs="+", default=[3e-5, 1e-4, 3e-4], help="slimming's grid")
    p.add_argument("--ridge", type=float, nargs="+", default=[1e-3, 1e-2], help="reconstruction's grid")
    p.add_argument("--kd-temperature", type=float, default=4.0, help="METHOD+kd rows: distillation's temperature")
    p.add_argument("--kd-weight", type=float, default=0.9,
                   help="METHOD+kd rows: distillation's share of the loss (the labels' is 1 - this)")
    p.add_argument("--mask-lr", type=float, default=0.1)
    p.add_argument("--mask-l2", type=float, default=1e-4)
    p.add_argument("--gate-l1", type=float, default=0.01, help="EPFS (masks and gates): the gates' l1")
    p.add_argument("--block-l1", type=float, nargs="+", default=[0.003, 0.01, 0.03],
                   help="epfs-blocks' grid: the gates' l1 (it prunes no channels, so the masks' l1 does nothing)")
    p.add_argument("--center", type=float, default=1e-3)
    p.add_argument("--normalise", action="store_true",
                   help="EPFS(normalise=True): hold the largest mask of each BatchNorm-normalised group at 1")
    p.add_argument("--anneal-until", type=float, default=0.25,
                   help="EPFS switches structures off gradually until this share of its sparse epochs (0: at the end)")
    p.add_argument("--no-release", dest="release", action="store_false",
                   help="EPFS.anneal(release=False): keep the l1 on after the target is switched off")
    p.add_argument("--one-schedule", action="store_true",
                   help="sparse phase and fine-tuning follow one cosine over the method epochs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="run every row once per seed (data order of the method epochs, the row's torch seed)")
    p.add_argument("--grid-seed", type=int, default=None,
                   help="the seed (and its dense start) the hyper-parameter grids run on; default: the first of "
                        "--seeds (give it when seeds run as separate processes, and run the grid first)")
    p.add_argument("--dense-per-seed", action="store_true",
                   help="train a dense start per seed, so the differences' standard errors span dense starts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (batches are augmented on the CPU)")
    p.add_argument("--out", default="out/cifar10")
    p.add_argument("--fresh", action="store_true", help="recompute the grid and every row")
    p.add_argument("--redo", nargs="+", default=[], choices=METHODS, metavar="METHOD", help="recompute these rows")
    p.add_argument("--report", action="store_true", help="train nothing: table the results already under --out")
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
    if args.report:
        found = {seed: saved_rows(out / f"seed{seed}", proto, args, seed) for seed in args.seeds}
        found = {seed: pair for seed, pair in found.items() if pair[0]}
        if not found:
            print(f"no results under {out} for seeds {args.seeds} with this setup")
            return 1
    else:
        found = train_seeds(args, proto, out)
    per_seed = {seed: rows for seed, (rows, _) in found.items()}
    starts = {seed: start for seed, (_, start) in found.items()}
    rows = summarise(per_seed, starts, list(METHODS))
    grid = out / "grid.json"
    meta = {**run_meta(args, proto), "seeds": sorted(per_seed), "dense_starts": starts,
            "grid": json.loads(grid.read_text()) if grid.exists() else None}
    (out / "summary.json").write_text(json.dumps({**meta, "rows": rows, "per_seed": per_seed}, indent=1))
    text = table(rows, starts)
    (out / "table.md").write_text(text + "\n")
    plot(rows, out / "accuracy_vs_macs.png", f"{args.model}, CIFAR-10, {args.protocol} protocol, "
                                             f"-{100 * args.target:.0f}% MACs, {len(per_seed)} dense start(s)")
    print(text)
    return 0


def train_seeds(args, proto: Protocol, out: Path) -> dict:
    """Every seed's rows (trained, or reused from disk) and dense start's top-1, by seed."""
    data = cifar10_splits(args.data, proto.batch_size, validation=args.validation, split_seed=args.split_seed,
                          subset=args.subset, scratch_dir=args.scratch)
    calib = calibration(data, args.calib_images)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    ctx = {"data": data, "calib": calib, "proto": proto, "out": out}
    starts, found, chosen = {}, {}, None
    for seed in args.seeds:
        start = dense_seed(args, seed)
        if start not in starts:
            starts[start] = methods.dense_model(args.model, data, proto, out, args.progress, seed=start,
                                                device=args.device)
        if chosen is None:  # once, on the grid seed, for all
            grid_seed = args.seeds[0] if args.grid_seed is None else args.grid_seed
            grid_start = dense_seed(args, grid_seed)
            if grid_start not in starts:
                starts[grid_start] = methods.dense_model(args.model, data, proto, out, args.progress, seed=grid_start,
                                                         device=args.device)
            chosen = choose_hyperparameters(args, ctx, starts[grid_start], grid_seed)
        found[seed] = run_seed(seed, starts[start], ctx, args, chosen)
    return found


def calibration(data, images: int) -> list:
    """The first ``images`` of the calibration order (plain training images), as a list of batches."""
    batches, count = [], 0
    for x, y in data.calibration:
        if count >= images:
            break
        batches.append((x[:images - count], y[:images - count]))
        count += len(batches[-1][0])
    return batches


if __name__ == "__main__":
    raise SystemExit(main())
