"""Per-layer kept and pruned channels, as a PNG plot and as a self-contained HTML page.

For every weight that produces channels (convolution filters, linear rows) the report
lists how many output channels it had, how many the finalized model keeps, how many of
them could be pruned at all and, for the others, why not. Counts are read off the
finalized model itself, so they are what ships, branch removal included.

The HTML page needs no network and no scripts: its figure is inline SVG, its style an
inline ``<style>``; it opens from disk in any browser and can be mailed as one file.

    layer                    channels  kept  pruned
    stages.0.0.conv1.weight        16     9       7   ███████████░░░░░░░

Example:
    >>> pm = fxprune.prepare(model, x); fxprune.prune_by_importance(pm, 0.5)   # doctest: +SKIP
    >>> write_html(pm, "report.html"); plot_layers(layer_channels(pm), "layers.png")   # doctest: +SKIP
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from fxprune.core.finalize import finalize
from fxprune.core.ir import state_of
from fxprune.core.masks import weight_parameters
from fxprune.report.count import count

KEPT_COLOUR = "#2b6cb0"
PRUNED_COLOUR = "#f6ad55"


@dataclass
class LayerChannels:
    """One weight's output channels before and after pruning.

    Args:
        layer: the parameter's path, e.g. ``"layer1.0.conv1.weight"``.
        channels: output channels before pruning.
        kept: output channels in the finalized model (0 when its branch was removed).
        prunable: how many of ``channels`` fxprune could prune.
        frozen: why the others could not be pruned -> how many.
    """

    layer: str
    channels: int
    kept: int
    prunable: int
    frozen: dict

    @property
    def pruned(self) -> int:
        return self.channels - self.kept


def layer_channels(pm, finalized: Optional[torch.nn.Module] = None) -> list:
    """A :class:`LayerChannels` for every channel-producing weight of a prepared model.

    Args:
        pm: a model from :func:`fxprune.prepare`, with its masks and gates as they are.
        finalized: ``fxprune.finalize(pm)``; computed (without its self-check) when None.

    Returns:
        One entry per weight, in the order of the prepared model's parameters.
    """
    state = state_of(pm)
    small = finalized if finalized is not None else finalize(pm, check=False)
    kept_params = dict(small.named_parameters())
    rows = []
    for record in state.index.params:
        if len(record.shape) < 2:
            continue  # biases follow their weight
        name = record.name
        for d, role in record.roles.items():
            if role != "out":
                continue
            cids = record.layout[d]
            prunable = int((cids >= 0).any(axis=1).sum()) if cids.shape[1] else 0
            kept = kept_params[name].shape[d] if name in kept_params else 0
            rows.append(LayerChannels(name, int(record.shape[d]), int(kept), prunable, dict(record.frozen.get(d, {}))))
    return rows


def plot_layers(rows: Sequence[LayerChannels], path: os.PathLike, title: str = "Channels kept per layer") -> Path:
    """Save a horizontal bar chart of kept and pruned channels per layer as a PNG (needs matplotlib).

    Args:
        rows: from :func:`layer_channels`.
        path: where the PNG goes (folders are created).
        title: the figure's title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.28 * len(rows)))
    draw_layers(ax, rows, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_layers(ax, rows: Sequence[LayerChannels], title: str = "Channels kept per layer") -> None:
    """Draw the kept/pruned bars of :func:`plot_layers` on a matplotlib ``Axes``."""
    y = list(range(len(rows)))
    ax.barh(y, [r.kept for r in rows], color=KEPT_COLOUR, label="kept")
    ax.barh(y, [r.pruned for r in rows], left=[r.kept for r in rows], color=PRUNED_COLOUR, label="pruned")
    ax.set_yticks(y, [r.layer.removesuffix(".weight") for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("output channels")
    ax.set_xlim(0, 1.3 * max((r.channels for r in rows), default=1))  # room for the legend
    ax.set_title(title)
    ax.legend(loc="lower right")


def layers_svg(rows: Sequence[LayerChannels], width: int = 720, bar_height: int = 16) -> str:
    """The kept/pruned bar chart as an inline ``<svg>`` element (no external assets).

    Example:
        >>> svg = layers_svg([LayerChannels("conv.weight", 8, 5, 8, {})])
        >>> svg.startswith("<svg") and svg.count('class="kept"') == 1
        True
    """
    label_width, gap = 260, 4
    widest = max((r.channels for r in rows), default=1) or 1
    scale = (width - label_width - 60) / widest
    height = len(rows) * (bar_height + gap) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="channels kept per layer" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" '
             f'font-size="11">']
    for i, r in enumerate(rows):
        y = i * (bar_height + gap)
        kept_w, pruned_w = r.kept * scale, r.pruned * scale
        name = html.escape(r.layer.removesuffix(".weight"))
        parts.append(f'<text x="{label_width - 6}" y="{y + bar_height - 4}" text-anchor="end">{name}</text>')
        parts.append(f'<rect class="kept" x="{label_width}" y="{y}" width="{kept_w:.1f}" height="{bar_height}" '
                     f'fill="{KEPT_COLOUR}"><title>{name}: {r.kept} of {r.channels} kept</title></rect>')
        parts.append(f'<rect class="pruned" x="{label_width + kept_w:.1f}" y="{y}" width="{pruned_w:.1f}" '
                     f'height="{bar_height}" fill="{PRUNED_COLOUR}"><title>{name}: {r.pruned} pruned</title></rect>')
        parts.append(f'<text x="{label_width + kept_w + pruned_w + 4:.1f}" y="{y + bar_height - 4}">'
                     f'{r.kept}/{r.channels}</text>')
    legend_y = len(rows) * (bar_height + gap) + 10
    parts.append(f'<rect x="{label_width}" y="{legend_y}" width="12" height="12" fill="{KEPT_COLOUR}"/>'
                 f'<text x="{label_width + 16}" y="{legend_y + 10}">kept</text>'
                 f'<rect x="{label_width + 60}" y="{legend_y}" width="12" height="12" fill="{PRUNED_COLOUR}"/>'
                 f'<text x="{label_width + 76}" y="{legend_y + 10}">pruned</text>')
    parts.append("</svg>")
    return "".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #1a202c; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e2e8f0; padding: 3px 10px; text-align: right; }
th:first-child, td:first-child, th:last-child, td.why { text-align: left; }
.summary td { font-size: 15px; }
"""


def write_html(pm, path: os.PathLike, finalized: Optional[torch.nn.Module] = None, stats: Optional[list] = None,
               title: str = "fxprune report") -> Path:
    """Write a self-contained HTML page: a summary, the per-layer figure and table.

    Args:
        pm: a prepared model with its masks and gates as they are.
        path: the ``.html`` file to write (folders are created).
        finalized: ``fxprune.finalize(pm)``; computed when None.
        stats: optional :class:`fxprune.report.compare.ModelStats` rows shown as the summary
            (accuracy, MACs, parameters, latency); MACs and parameters of the prepared
            and finalized models otherwise.
        title: the page's title.

    Returns:
        ``path``.
    """
    small = finalized if finalized is not None else finalize(pm, check=False)
    rows = layer_channels(pm, small)
    summary = _stats_html(stats) if stats else _cost_html(pm, small)
    body = [f"<h1>{html.escape(title)}</h1>", summary, "<h2>Channels kept per layer</h2>", layers_svg(rows),
            "<h2>Layers</h2>", _layers_table(rows)]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _layers_table(rows: Sequence[LayerChannels]) -> str:
    head = "<tr><th>layer</th><th>channels</th><th>kept</th><th>pruned</th><th>prunable</th><th>why frozen</th></tr>"
    body = []
    for r in rows:
        why = "; ".join(f"{n} {reason}" for reason, n in r.frozen.items())
        body.append(f"<tr><td>{html.escape(r.layer)}</td><td>{r.channels}</td><td>{r.kept}</td><td>{r.pruned}</td>"
                    f'<td>{r.prunable}</td><td class="why">{html.escape(why)}</td></tr>')
    return f'<table id="layers">{head}{"".join(body)}</table>'


def _cost_html(pm, small) -> str:
    inputs = state_of(pm).example
    before, after = count(pm, inputs), count(small, inputs)
    before_params = sum(p.numel() for p in weight_parameters(pm))  # without the masks and gates
    return ('<table class="summary"><tr><th></th><th>MACs</th><th>parameters</th></tr>'
            f"<tr><td>before</td><td>{before.macs:,}</td><td>{before_params:,}</td></tr>"
            f"<tr><td>after</td><td>{after.macs:,} ({after.macs / max(before.macs, 1):.2f}x)</td>"
            f"<td>{after.params:,} ({after.params / max(before_params, 1):.2f}x)</td></tr></table>")


def _stats_html(stats: list) -> str:
    head = "<tr><th>model</th><th>top-1</th><th>MACs</th><th>parameters</th><th>latency (ms)</th></tr>"
    body = []
    for s in stats:
        top1 = "-" if s.top1 is None else f"{100 * s.top1:.2f}%"
        body.append(f"<tr><td>{html.escape(s.name)}</td><td>{top1}</td><td>{s.macs:,}</td><td>{s.params:,}</td>"
                    f"<td>{s.latency_ms:.2f}</td></tr>")
    return f'<table class="summary">{head}{"".join(body)}</table>'
