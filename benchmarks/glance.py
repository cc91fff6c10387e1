"""README's "Results at a glance", written from the committed result files in docs/results/.

Every headline figure in the README comes from a JSON file that a benchmark wrote; this
script is the only place that turns those files into the README's lines, and
``tests/test_docs.py`` fails when the README and the files disagree.

    python benchmarks/glance.py            # print the section
    python benchmarks/glance.py --write    # replace it in README.md

The section sits between ``<!-- glance -->`` and ``<!-- /glance -->`` in README.md; each CIFAR-10
result file's table sits in docs/results.md between ``<!-- table NAME -->`` and ``<!-- /table -->``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
BEGIN, END = "<!-- glance -->", "<!-- /glance -->"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _link(name: str) -> str:
    return f"[{name}](docs/results/{name})"


def zoo(d: dict) -> str:
    meta, rows = d["meta"], [r for r in d["rows"] if "error" not in r]
    removed = statistics.median(1 - r["macs_after"] / r["macs_before"] for r in rows)
    line = (f"- **The torchvision zoo**: {meta['exact']} of {meta['models']} classifiers prune exactly "
            f"(50% of every channel group, l1, local; median {100 * removed:.0f}% of MACs removed), largest "
            f"error {meta['max_equivalence_error']:.1e}")
    if "keep_classes" in meta:
        line += f"; {meta['keep_classes']} of them also come back as their own classes"
        if meta.get("keep_classes_held"):
            line += f", and {meta['keep_classes_held']} more when prepared with `PruneConfig(keep_classes=True)`"
    return line + f". {_link('coverage.json')}"


def llama(d: dict) -> str:
    gib = d["model_bytes"] / 2**30
    return (f"- **A Llama with the shapes of a 1B model** ({d['parameters'] / 1e9:.2f}B parameters, {gib:.2f} GiB, "
            f"captured with {d['capture']}): prepare, prune half the heads and MLP channels, and finalize in "
            f"{d['total_s']:.1f} s on {d['machine']['cores']} CPU cores, peak memory {d['peak_over_model']:.2f}x the "
            f"model; the result is {d['finalized_over_model']:.2f}x its bytes. {_link('llama.json')}")


def demo(d: dict) -> str:
    rows = {r["name"]: r for r in d["rows"]}
    dense, pruned, tuned = rows["dense"], rows["pruned"], rows["pruned + fine-tuned"]
    return (f"- **`make demo`** (a small CNN on generated shapes, EPFS): {dense['macs'] / 1e6:.2f}M -> "
            f"{pruned['macs'] / 1e6:.2f}M MACs, top-1 {100 * dense['top1']:.2f}% dense, {100 * pruned['top1']:.2f}% "
            f"right after pruning, {100 * tuned['top1']:.2f}% after fine-tuning. {_link('demo.json')}")


def fuzz(d: dict) -> str:
    runs = d["examples_run"].values()
    passing, failing = sum(r["passing"] for r in runs), sum(r["failing"] for r in runs)
    return (f"- **Fuzzing**: {passing:,} random models (CNNs and token models) finalized and checked against "
            f"their masked models, {failing} failing (seed {d['seed']}). {_link('fuzz.json')}")


def cifar(d: dict, name: str) -> str:
    rows = {r["method"]: r for r in d["rows"]}
    starts = d["dense_starts"]
    start = statistics.mean(s["test"] for s in starts.values())
    l1 = rows["l1"]
    n = len(d["seeds"])
    line = (f"- **CIFAR-10 {d['model']}**, {100 * l1['macs_reduction']:.0f}% of MACs removed, "
            f"{n} dense start{'s' if n > 1 else ''} ({100 * start:.2f}% test top-1), no fine-tuning: one-shot l1 "
            f"with BatchNorm recalibrated {100 * l1['no_finetune_recalibrated']:.2f}%, with "
            f"`fxprune.reconstruct` {100 * l1['no_finetune_reconstructed']:.2f}%")
    best = max((r for r in rows.values() if r["method"] != "dense"), key=lambda r: r["top1"])
    dense = f"dense {100 * rows['dense']['top1']:.2f}%, " if "dense" in rows else ""
    line += f"; after {d['protocol']['method_epochs']} more epochs, {dense}l1 {100 * l1['top1']:.2f}%"
    if best is not l1:  # another pruned row beats it
        line += f", best {best['method']} {100 * best['top1']:.2f}%"
        if round(100 * best["macs_reduction"]) != round(100 * l1["macs_reduction"]):  # blocks come whole
            line += f" at {100 * best['macs_reduction']:.0f}% of MACs removed"
        vs = best.get("vs_l1")
        if vs and vs.get("se") is not None:
            line += f" ({100 * vs['mean']:+.2f} ± {100 * vs['se']:.2f} points against l1)"
    return line + f". {_link(name)}"


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _gap(d) -> str:
    if not d:
        return ""
    return f"{100 * d['mean']:+.2f}" + ("" if d.get("se") is None else f" ± {100 * d['se']:.2f}")


def _span(values: list) -> str:
    low, high = (f"{min(values):.0f}", f"{max(values):.0f}") if values else ("", "")
    return low if low == high else f"{low} to {high}"


def cifar_table(d: dict) -> str:
    """One line per method: the MACs it removed, test top-1 after fine-tuning and its paired gaps, then before any
    fine-tuning, BatchNorm recalibrated and reconstructed; and the seconds reconstruction took."""
    header = ["method", "MACs removed", "test top-1", "vs dense", "vs l1", "no fine-tuning: BN recalibrated",
              "no fine-tuning: reconstructed", "reconstruction (s)"]
    body = []
    for r in d["rows"]:
        seconds = [row["reconstruction"]["seconds"] for seed in d["per_seed"].values()
                   for row in seed.values() if row["method"] == r["method"] and "reconstruction" in row]
        removed = f"{100 * r['macs_reduction']:.1f}%" if r["macs_reduction"] else ""
        cells = [r["method"], removed, _pct(r["top1"]), _gap(r.get("vs_dense")), _gap(r.get("vs_l1")),
                 _pct(r.get("no_finetune_recalibrated")), _pct(r.get("no_finetune_reconstructed")), _span(seconds)]
        body.append(cells)
    return tabulate(body, headers=header, tablefmt="github", disable_numparse=True)


def reconstruction(d: dict) -> str:
    median = d["median_seconds"]
    return (f"- **Reconstruction** of a CIFAR {d['model']} at half its MACs from {d['images']:,} unlabelled images: "
            + ", ".join(f"{s:.1f} s on {t} core{'s' if t != '1' else ''}" for t, s in median.items())
            + f" (median of {len(d['runs'][next(iter(median))])}). {_link('reconstruct.json')}")


def section() -> str:
    """The lines between the markers: one per result file present."""
    lines = []
    for name, render in (("coverage.json", zoo), ("llama.json", llama), ("demo.json", demo), ("fuzz.json", fuzz)):
        d = _load(name)
        if d is not None:
            lines.append(render(d))
    for path in sorted(RESULTS.glob("cifar10-*.json")):
        lines.append(cifar(json.loads(path.read_text()), path.name))
    if (d := _load("reconstruct.json")) is not None:
        lines.append(reconstruction(d))
    return "\n".join(lines)


def replace(text: str, body: str, begin: str = BEGIN, end: str = END) -> str:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def tables() -> dict:
    """``(begin marker, table)`` per CIFAR-10 result file, for docs/results.md."""
    return {f"<!-- table {p.name} -->": cifar_table(json.loads(p.read_text()))
            for p in sorted(RESULTS.glob("cifar10-*.json"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the section in README.md")
    args = parser.parse_args(argv)
    body = section()
    if not args.write:
        print(body)
        for table in tables().values():
            print("\n" + table)
        return 0
    readme = ROOT / "README.md"
    readme.write_text(replace(readme.read_text(), body))
    results = ROOT / "docs" / "results.md"
    text = results.read_text()
    for begin, table in tables().items():
        text = replace(text, table, begin, "<!-- /table -->")
    results.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
