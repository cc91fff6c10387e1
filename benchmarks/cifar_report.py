"""The CIFAR-10 benchmark's summary over dense starts: means, paired differences and their standard errors.

A difference between two rows is taken seed by seed (both rows began from the same dense
start and saw the same data order), then averaged; its standard error is the sample
standard deviation of the per-seed differences over the square root of their number.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tabulate import tabulate

BASELINES = ("l1", "slimming", "oicsr", "tp")  # published methods fxprune reimplements or wraps


def paired(a: dict, b: dict) -> dict | None:
    """Mean and standard error of ``a[seed] - b[seed]`` over the seeds both have (None if none)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = np.array([a[s] - b[s] for s in seeds], dtype=float)
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else None
    return {"mean": float(diffs.mean()), "se": se, "n": len(seeds)}


def _per_seed(per_seed: dict, method: str, read) -> dict:
    out = {}
    for seed, rows in per_seed.items():
        if method in rows:
            value = read(rows[method])
            if value is not None:
                out[seed] = value
    return out


def _no_ft(kind: str, split: str = "test"):
    return lambda row: row.get("no_finetune", {}).get(kind, {}).get(split)


def summarise(per_seed: dict, dense_starts: dict, methods: list) -> list:
    """One row per method over the seeds that ran it (``per_seed``: seed -> method -> row;
    ``dense_starts``: seed -> the dense start's ``{"val", "test"}`` top-1)."""
    top1 = {m: _per_seed(per_seed, m, lambda r: r["top1"]) for m in methods}
    baselines = [m for m in BASELINES if top1.get(m)]
    best = max(baselines, key=lambda m: np.mean(list(top1[m].values()))) if baselines else None
    start = {seed: d["test"] for seed, d in dense_starts.items() if d}
    rows = []
    for method in methods:
        runs = {seed: rows_[method] for seed, rows_ in per_seed.items() if method in rows_}
        if not runs:
            continue
        values = list(top1[method].values())
        row = {"method": method, "seeds": sorted(runs), "top1": float(np.mean(values)),
               "top1_sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
               "top1_per_seed": values,
               "val_top1": float(np.mean([r["val_top1"] for r in runs.values()])),
               "vs_dense": paired(top1[method], top1.get("dense", {})) if method != "dense" else None,
               "vs_l1": paired(top1[method], top1.get("l1", {})) if method != "l1" else None,
               "best_baseline": best,
               "vs_best_baseline": paired(top1[method], top1[best]) if best and method != best else None,
               "epochs": next(iter(runs.values()))["epochs"]}
        for kind in ("recalibrated", "reconstructed"):
            no_ft = _per_seed(per_seed, method, _no_ft(kind))
            if no_ft:
                row[f"no_finetune_{kind}"] = float(np.mean(list(no_ft.values())))
                row[f"no_finetune_{kind}_vs_dense_start"] = paired(no_ft, start)
        for key in ("macs", "params", "macs_reduction", "params_reduction"):
            row[key] = float(np.mean([r[key] for r in runs.values()]))
        hyper = next(iter(runs.values())).get("hyperparameters")
        if hyper:
            row["hyperparameters"] = hyper
        rows.append(row)
    return rows


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _diff(d) -> str:
    if d is None:
        return ""
    return f"{100 * d['mean']:+.2f}" + (f" ± {100 * d['se']:.2f}" if d["se"] is not None else "")


def _no_ft_cell(row: dict, kind: str) -> str:
    if f"no_finetune_{kind}" not in row:
        return ""
    gap = row.get(f"no_finetune_{kind}_vs_dense_start")
    return _pct(row[f"no_finetune_{kind}"]) + (f" ({_diff(gap)})" if gap else "")


def table(rows: list, dense_starts: dict) -> str:
    start = [d["test"] for d in dense_starts.values() if d]
    best = next((r["best_baseline"] for r in rows if r["best_baseline"]), None)
    versus = [("vs dense (± se)", "vs_dense"), ("vs l1 (± se)", "vs_l1")]
    if best not in (None, "l1"):
        versus.insert(1, (f"vs {best}, the best baseline (± se)", "vs_best_baseline"))
    body = [[r["method"], len(r["seeds"]), _pct(r["top1"]) + (f" ± {100 * r['top1_sd']:.2f}" if r["top1_sd"] else ""),
             *[_diff(r[key]) for _, key in versus],
             *[_no_ft_cell(r, kind) for kind in ("recalibrated", "reconstructed")],
             f"{r['macs'] / 1e6:.1f}", f"{100 * r['macs_reduction']:.1f}%", f"{100 * r['params_reduction']:.1f}%",
             r["epochs"]] for r in rows]
    text = tabulate(body, headers=["method", "starts", "top-1 % (± sd)", *[h for h, _ in versus],
                                   "no fine-tuning: BN recalibrated (vs dense start)",
                                   "no fine-tuning: reconstructed (vs dense start)",
                                   "MMACs", "MACs removed", "params removed", "epochs"],
                    tablefmt="github", disable_numparse=True)
    if start:
        text += f"\n\nDense starts (before the method epochs), test top-1: {np.mean(start) * 100:.2f}% " \
                f"(per start: {' '.join(f'{100 * s:.2f}' for s in start)})"
    return text


def plot(rows: list, path: Path, title: str) -> None:
    """Fine-tuned top-1 (with the standard error over dense starts) against MMACs; hollow: no fine-tuning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(rows):
        color = f"C{i % 10}"
        se = (r["top1_sd"] or 0) / math.sqrt(len(r["seeds"]))
        ax.errorbar(r["macs"] / 1e6, 100 * r["top1"], yerr=100 * se, fmt="o", color=color, capsize=3,
                    label=r["method"])
        kind = "reconstructed" if "+rec" in r["method"] else "recalibrated"
        if f"no_finetune_{kind}" in r:
            ax.scatter(r["macs"] / 1e6, 100 * r[f"no_finetune_{kind}"], facecolors="none", edgecolors=color, s=40)
    ax.set_xlabel("MMACs")
    ax.set_ylabel("top-1 on test (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.text(0.01, 0.01, "filled: after fine-tuning (± s.e. over dense starts); hollow: before any fine-tuning",
             fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
