"""Coverage of the torchvision model zoo: what fxprune can prune, and that it prunes exactly.

For every classifier: the share of conv and linear output channels that are prunable
(outside the classifier), then one-shot pruning at ratio 0.5 (l1, local), MACs and
parameters before and after, and the largest equivalence error finalize measured
against the masked model (relative to the largest output), and whether the model comes back
as its own classes (``finalize(pm, keep_classes=True)``, checked the same way) or why it
cannot, and then whether it does when prepared with ``PruneConfig(keep_classes=True)`` (and how
much is left to prune). Weights are random but
informative (:func:`fxprune.testing.randomize`); inputs are the smallest each model
accepts (at least 32 pixels).

    python benchmarks/coverage.py --out out/coverage          # every classifier
    python benchmarks/coverage.py resnet18 vit_b_16            # a few

Writes ``coverage.json`` and ``coverage.md`` (a table) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch
import torchvision
from tabulate import tabulate

import fxprune
from fxprune.report.machine import machine
from fxprune.testing import randomize, small_input, torchvision_classifiers


def measure(name: str) -> dict:
    torch.manual_seed(0)
    model = randomize(torchvision.models.get_model(name).eval())
    x = small_input(name)
    t0 = time.perf_counter()
    pm = fxprune.prepare(model, x)
    t1 = time.perf_counter()
    fxprune.prune_by_importance(pm, 0.5, importance="l1", scope="local")
    t2 = time.perf_counter()
    small = fxprune.finalize(pm)
    t3 = time.perf_counter()
    before, after = fxprune.count(model, x), fxprune.count(small, x)
    try:
        own = fxprune.finalize(pm, keep_classes=True)
        keep = {"keep_classes": type(own) is type(model), "keep_classes_error": own.fxprune_equivalence_error}
    except fxprune.FxPruneError as e:  # refused, with the reason; then prepared to hold only what its classes can
        keep = {"keep_classes": False, "keep_classes_refused": str(e).splitlines()[0], **held(model, x)}
    return {
        "model": name, "input": list(x.shape), "prunable_share": fxprune.prunable_share(pm),
        "groups": len(fxprune.channel_groups(pm)), "branches": len(fxprune.branches(pm)),
        "macs_before": before.macs, "macs_after": after.macs, "params_before": before.params,
        "params_after": after.params, "equivalence_error": small.fxprune_equivalence_error,
        "prepare_s": t1 - t0, "finalize_s": t3 - t2, **keep,
    }


def held(model, x) -> dict:
    """The same pruning, prepared with ``PruneConfig(keep_classes=True)``: its prunable share, and whether
    finalize(keep_classes=True) then returns the model's own classes (its error)."""
    t0 = time.perf_counter()
    pm = fxprune.prepare(model, x, fxprune.PruneConfig(keep_classes=True))
    t1 = time.perf_counter()
    fxprune.prune_by_importance(pm, 0.5, importance="l1", scope="local")
    own = fxprune.finalize(pm, keep_classes=True)
    return {"held_prunable_share": fxprune.prunable_share(pm), "held_prepare_s": t1 - t0,
            "held_keep_classes": type(own) is type(model), "held_keep_classes_error": own.fxprune_equivalence_error,
            "held_macs_after": fxprune.count(own, x).macs}


def table(rows: list) -> str:
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["model"], "failed: " + r["error"][:60], "", "", "", "", ""])
            continue
        body.append([r["model"], r["input"][-1], f"{100 * r['prunable_share']:.0f}%",
                     f"{r['macs_before'] / 1e6:.1f} -> {r['macs_after'] / 1e6:.1f}",
                     f"{r['params_before'] / 1e6:.2f} -> {r['params_after'] / 1e6:.2f}",
                     f"{100 * (1 - r['macs_after'] / r['macs_before']):.0f}%", f"{r['equivalence_error']:.1e}",
                     _own(r)])
    return tabulate(body, headers=["model", "input", "prunable", "MMACs before -> after", "M params before -> after",
                                   "MACs removed", "max equiv. error", "own classes: error"], tablefmt="github")


def _own(r: dict) -> str:
    if r["keep_classes"]:
        return f"{r['keep_classes_error']:.1e}"
    if r.get("held_keep_classes"):
        return (f"{r['held_keep_classes_error']:.1e} held ({100 * r['held_prunable_share']:.0f}% prunable, "
                f"{100 * (1 - r['held_macs_after'] / r['macs_before']):.0f}% MACs removed)")
    return "refused"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="torchvision model names (default: every classifier)")
    parser.add_argument("--out", default="out/coverage", help="folder for coverage.json and coverage.md")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in args.models or torchvision_classifiers():
        try:
            rows.append(measure(name))
        except Exception as e:  # a failure is a result to report, and the run goes on
            rows.append({"model": name, "error": f"{type(e).__name__}: {e}"})
        r = rows[-1]
        print(r["model"], "FAILED " + r["error"] if "error" in r else
              f"share={r['prunable_share']:.2f} macs {r['macs_after'] / r['macs_before']:.2f} "
              f"err={r['equivalence_error']:.1e}", flush=True)
    ok = [r for r in rows if "error" not in r]
    meta = {"machine": machine(), "command": " ".join(["python benchmarks/coverage.py", *(argv or sys.argv[1:])]),
            "models": len(rows), "exact": len(ok),
            "max_equivalence_error": max((r["equivalence_error"] for r in ok), default=None),
            "keep_classes": sum(bool(r.get("keep_classes")) for r in ok),
            "keep_classes_held": sum(bool(r.get("held_keep_classes")) for r in ok),
            "max_keep_classes_error": max((r["keep_classes_error"] for r in ok if r["keep_classes"]), default=None)}
    with open(os.path.join(args.out, "coverage.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "coverage.md"), "w") as f:
        f.write(table(rows) + "\n")
    print(f"{len(ok)}/{len(rows)} models pruned exactly; largest error {meta['max_equivalence_error']}; "
          f"{meta['keep_classes']} as their own classes, {meta['keep_classes_held']} more prepared with keep_classes")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
