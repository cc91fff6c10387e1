"""What the zoo benchmark's records become: the table, the summary block and the plot.

The plot shows measured speed-up against MACs reduction, fxprune beside Torch-Pruning,
one panel per batch size. A point on the diagonal got exactly as much faster as it got
smaller (latency efficiency 1.0); below it, the pruned model is slower than its MACs
promise.

    python benchmarks/zoo_plot.py out/zoo/zoo.json      # redraw zoo.md and zoo.png from zoo.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from tabulate import tabulate

# deployment variants zoo.py times beside the plain models: label suffix -> how the summary says it
# (longest first: variant() takes the first suffix a label ends with)
VARIANTS = {"+fold+nhwc": "with BatchNorm folded, in channels_last", "+fold": "with BatchNorm folded",
            "+nhwc": "in channels_last", "+ort": "in ONNX Runtime"}
LIBRARIES = {"fxprune": "fxprune", "tp": "Torch-Pruning"}


def variant(label: str) -> str:
    """The suffix of the deployment variant a latency label belongs to ('' for the plain models)."""
    return next((suffix for suffix in VARIANTS if label.endswith(suffix)), "")


def write_report(out: Path, meta: dict, rows: list, large: int) -> str:
    """Write ``zoo.json``, ``zoo.md`` and (with matplotlib) ``zoo.png`` into ``out``; return the summary text."""
    s = summary(rows, large)
    (out / "zoo.json").write_text(json.dumps({"meta": meta, "summary": s, "rows": rows}, indent=1, default=float))
    text = summary_text(s, large)
    (out / "zoo.md").write_text(f"{table(rows, large)}\n\n{text}\n\n{json.dumps(meta)}\n")
    try:
        plot(rows, out / "zoo.png", large)
    except ImportError as e:
        text += f"\n(no plot: {e})"
    return text


def _fx_ok(r) -> bool:
    return r.get("fxprune", {}).get("ok", False)


def _tp_ok(r) -> bool:
    """Torch-Pruning pruned the model, the result runs and its outputs keep their shapes."""
    tp = r.get("tp", {})
    return tp.get("ok", False) and tp.get("same_output_shapes", False)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def status(lib: dict, exact_key: str) -> str:
    if not lib.get("ok"):
        return "failed: " + lib.get("error", "not run")[:40] if lib else "-"
    if lib.get("same_output_shapes") is False:
        return "output shape changed"
    return f"err {lib[exact_key]:.0e}"


def table(rows: list, large: int) -> str:
    body = []
    for r in rows:
        if "macs_before" not in r:
            body.append([r["model"], r.get("failure", "no result")[:60]] + [""] * 8)
            continue
        fx, tp = r.get("fxprune", {}), r.get("tp", {})
        kept = [_fmt(lib.get("macs_after") and lib["macs_after"] / r["macs_before"], ".0%") for lib in (fx, tp)]
        s1, s32 = r["speedup"].get("1", {}), r["speedup"].get(str(large), {})
        e32 = r["efficiency"].get(str(large), {})
        round_key = next((k for k in s32 if k.startswith("fxprune_round")), None)
        rounded = "round_to failed" if _round_to_error(r) else "-"
        skipped_note = "; round_to failed" if _round_to_error(r) else ""
        body.append([
            r["model"] + (" *" if r.get("failure") else ""), r["input"][-1], status(fx, "equivalence_error"),
            status(tp, "masked_error") if tp else "-", " / ".join(kept),
            f"{_fmt(fx.get('total_s'), '.1f')} / {_fmt(tp.get('total_s'), '.1f')}",
            f"{_fmt(s1.get('fxprune'), '.2f')} / {_fmt(s1.get('tp'), '.2f')}",
            f"{_fmt(s32.get('fxprune'), '.2f')} / {_fmt(s32.get(round_key), '.2f', rounded)} / "
            f"{_fmt(s32.get('tp'), '.2f')}" if s32 else r["latency_skipped"].get(str(large), "-")[:30] + skipped_note,
            f"{_fmt(e32.get('fxprune'), '.2f')} / {_fmt(e32.get('tp'), '.2f')}" if e32 else "-",
            f"{_fmt(fx.get('peak_extra_mb'), '.0f')} / {_fmt(tp.get('peak_extra_mb'), '.0f')}",
        ])
    return tabulate(body, tablefmt="github", headers=[
        "model", "input", "fxprune (error vs masked)", "Torch-Pruning (error vs masked)", "MACs kept fx / TP",
        "pruning s fx / TP", "speed-up b1 fx / TP", f"speed-up b{large} fx / fx round / TP",
        f"efficiency b{large} fx / TP", "memory MB fx / TP"])


def summary(rows: list, large: int) -> dict:
    """The figures the issue asks for, over the rows given."""
    done = [r for r in rows if "macs_before" in r]
    both = [r for r in done if _fx_ok(r) and _tp_ok(r)]
    fx_time = _median([r["fxprune"]["total_s"] for r in both])
    tp_time = _median([r["tp"]["total_s"] for r in both])
    tp_graph = _median([r["tp"].get("graph_s") for r in both])
    fx_unchecked = _median([r["fxprune"]["total_s"] - r["fxprune"].get("check_s", 0.0) for r in both])
    traced = [r for r in both if r["fxprune"].get("trace_s") is not None]
    floor = _median([r["fxprune"]["trace_s"] + r["fxprune"]["check_s"] for r in traced])
    floor_tp = _median([r["tp"]["total_s"] for r in traced])
    key = str(large)

    def over(label, table_key="efficiency", batch=key):
        return _median([r[table_key].get(batch, {}).get(label) for r in done])

    round_label = next((k for r in done for k in r["speedup"].get(key, {}) if k.startswith("fxprune_round")), None)
    pruned = [*LIBRARIES] + ([round_label] if round_label else [])
    labels = pruned + [k + suffix for suffix in VARIANTS for k in pruned
                       if any(k + suffix in r["speedup"].get(key, {}) for r in done)]
    tp_tried = [r for r in done if "tp" in r and not r["tp"].get("error", "").startswith("not run")]
    return {
        "models": len(rows), "measured": len(done),
        "fxprune_ok": sum(_fx_ok(r) for r in done), "tp_tried": len(tp_tried), "tp_ok": sum(_tp_ok(r) for r in done),
        "tp_exact": sum(_tp_ok(r) and r["tp"].get("masked_error", 1) <= 1e-4 for r in done),
        "fxprune_fails": sorted(r["model"] for r in done if not _fx_ok(r)),
        "tp_fails": {r["model"]: _tp_reason(r["tp"]) for r in tp_tried if not _tp_ok(r)},
        "tp_ok_but_fxprune_fails": sorted(r["model"] for r in done if _tp_ok(r) and not _fx_ok(r)),
        "failures": {r["model"]: r["failure"] for r in rows if r.get("failure")},
        "both_ok": len(both), "median_fxprune_s": fx_time, "median_tp_s": tp_time, "median_tp_graph_s": tp_graph,
        "time_ratio": fx_time / tp_time if fx_time and tp_time else None,
        "median_fxprune_unchecked_s": fx_unchecked,
        "time_ratio_unchecked": fx_unchecked / tp_time if fx_unchecked and tp_time else None,
        "floor_models": len(traced), "median_floor_s": floor,
        "floor_ratio": floor / floor_tp if floor and floor_tp else None,
        f"median_efficiency_b{key}": {k: over(k) for k in labels},
        "median_efficiency_b1": {k: over(k, batch="1") for k in labels},
        f"median_speedup_b{key}": {k: over(k, "speedup") for k in labels},
        "round_to_gain": {b: _median([r["speedup"][b][round_label] / r["speedup"][b]["fxprune"] for r in done
                                      if round_label in r["speedup"].get(b, {})]) for b in ("1", key)},
        "latency_skipped": {r["model"]: r["latency_skipped"] for r in done if r["latency_skipped"]},
        "round_to_fails": {r["model"]: _round_to_error(r) for r in done if _round_to_error(r)},
    }


def _round_to_error(r) -> str:
    """Why pruning again with ``round_to`` failed ("" where it did not, or was not tried)."""
    rounded = r.get("fxprune", {}).get("round_to", {})
    return rounded.get("error", "") if rounded.get("ok") is False else ""


def _tp_reason(tp: dict) -> str:
    if not tp.get("ok"):
        return f"{tp.get('phase', '?')}: {tp.get('error', '?')[:120]}"
    return "output shapes changed"


def _by_label(values: dict) -> str:
    def name(label):
        suffix = variant(label)
        base = label.removesuffix(suffix)
        return LIBRARIES.get(base, base) + (" " + VARIANTS[suffix] if suffix else "")

    return ", ".join(f"{name(k)} {_fmt(v, '.2f')}" for k, v in values.items())


def summary_text(s: dict, large: int) -> str:
    eff, spd = s[f"median_efficiency_b{large}"], s[f"median_speedup_b{large}"]
    lines = [
        f"- models: {s['models']} ({s['measured']} measured); fxprune pruned {s['fxprune_ok']}; Torch-Pruning "
        f"pruned {s['tp_ok']} of {s['tp_tried']} with unchanged output shapes, {s['tp_exact']} of them exactly "
        f"(error vs masked <= 1e-4)",
        f"- Torch-Pruning fails on: {', '.join(f'{m} ({why})' for m, why in s['tp_fails'].items()) or 'none'}",
        f"- fxprune fails on: {', '.join(s['fxprune_fails']) or 'none'}; of those Torch-Pruning prunes: "
        f"{', '.join(s['tp_ok_but_fxprune_fails']) or 'none'}",
        f"- median pruning time over the {s['both_ok']} models both prune: fxprune prepare+prune+finalize "
        f"{_fmt(s['median_fxprune_s'], '.2f')} s, Torch-Pruning MagnitudePruner()+step() "
        f"{_fmt(s['median_tp_s'], '.2f')} s (its dependency graph alone {_fmt(s['median_tp_graph_s'], '.2f')} s); "
        f"ratio {_fmt(s['time_ratio'], '.2f')} (target <= 0.5); without finalize's self-check (Torch-Pruning "
        f"checks nothing) {_fmt(s.get('median_fxprune_unchecked_s'), '.2f')} s, ratio "
        f"{_fmt(s.get('time_ratio_unchecked'), '.2f')}",
        f"- floor under that time: torch.fx's symbolic_trace plus the self-check's forward passes, median "
        f"{_fmt(s.get('median_floor_s'), '.2f')} s over the {s.get('floor_models', 0)} of them plain symbolic_trace "
        f"traces, ratio {_fmt(s.get('floor_ratio'), '.2f')} to Torch-Pruning's median over the same models",
        f"- median latency efficiency at batch {large} (target >= 0.85): " + _by_label(eff)
        + f"; at batch 1: {_by_label(s['median_efficiency_b1'])}",
        f"- median speed-up at batch {large}: {_by_label(spd)}",
        "- round_to: median over models of (speed-up with it / without it) "
        + ", ".join(f"batch {b} {_fmt(v, '.2f')}" for b, v in s["round_to_gain"].items()),
    ]
    skipped = [f"{m} (b{', b'.join(sk)})" for m, sk in s["latency_skipped"].items()]
    lines.append(f"- latency not measured (--max-gmacs): {', '.join(skipped) or 'none'}")
    lines.append("- round_to fails on: " + ("; ".join(f"{m} ({why[:100]})" for m, why in s["round_to_fails"].items())
                                           or "none"))
    if s["failures"]:
        lines.append("- crashed or timed out: " + "; ".join(f"{m}: {why[:100]}" for m, why in s["failures"].items()))
    return "\n".join(lines)


SERIES = {"fxprune": ("fxprune", "tab:blue", "o"), "tp": ("Torch-Pruning", "tab:orange", "s"),
          "fxprune_round": ("fxprune, round_to", "tab:green", "^")}


def points(rows: list, batch: str, label: str) -> list:
    """(MACs before / after, speed-up, model) for every row timed at ``batch`` with ``label``."""
    out = []
    for r in rows:
        timed = r.get("speedup", {}).get(batch, {})
        key = label if label in timed else next((k for k in timed if k.startswith(label)), None)
        after = _macs_after(r, label)
        if key is not None and after:
            out.append((r["macs_before"] / after, timed[key], r["model"]))
    return out


def _macs_after(row: dict, label: str):
    if label == "fxprune_round":
        return row.get("fxprune", {}).get("round_to", {}).get("macs_after")
    return row.get(label, {}).get("macs_after")


def plot(rows: list, path, large: int = 32) -> None:
    """Write the plot to ``path``: speed-up against MACs reduction at batch 1 and at batch ``large``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = ["1", str(large)] if large != 1 else ["1"]
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 5), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        top = 1.0
        for label, (name, colour, marker) in SERIES.items():
            pts = points(rows, batch, label)
            if pts:
                xs, ys, _ = zip(*pts)
                hollow = label == "fxprune_round"
                ax.scatter(xs, ys, marker=marker, s=26, alpha=0.8, label=f"{name} ({len(pts)} models)",
                           facecolors="none" if hollow else colour, edgecolors=colour)
                top = max(top, *xs, *ys)
        ax.plot([1, top], [1, top], "k--", lw=0.8, label="efficiency 1.0")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_xlim(0.9, top * 1.05)
        ax.set_ylim(0.0, top * 1.05)
        ax.set_xlabel("MACs before / after")
        ax.set_ylabel("measured speed-up (latency before / after)")
        ax.set_title(f"batch {batch}, ratio 0.5 (l1, local)")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(True, which="both", lw=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "out/zoo/zoo.json")
    data = json.loads(source.read_text())
    print(write_report(source.parent, data["meta"], data["rows"], max(data["meta"]["batches"])))
