"""Per-layer kept and pruned channels: counts, the PNG plot, and an HTML page a real browser renders.

The browser test needs Debian's chromium (CI: apt-get install -y chromium); it is skipped without it.
"""

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from helpers import zero_channels

import fxprune
from fxprune.demo.cifar_resnet import CifarResNet
from fxprune.report.html import KEPT_COLOUR, PRUNED_COLOUR, layer_channels, plot_layers, write_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    pm = fxprune.prepare(CifarResNet(2, widths=(8, 12, 16), strides=(2, 2, 2)), torch.randn(1, 3, 16, 16))
    zero_channels(pm, 0.5)
    with torch.no_grad():
        pm.fxprune.gates["b1"].zero_()  # the second block of the first stage goes whole
    return pm, fxprune.finalize(pm)


def test_layer_counts_are_what_the_finalized_model_keeps(pruned):
    pm, small = pruned
    rows = {r.layer: r for r in layer_channels(pm, small)}
    assert rows["layer1.1.conv1.weight"].kept == 0 and rows["layer1.1.conv2.weight"].kept == 0
    assert rows["layer2.0.conv1.weight"].kept == small.get_parameter("layer2.0.conv1.weight").shape[0] == 6
    assert rows["fc.weight"].kept == rows["fc.weight"].channels == 10
    assert rows["fc.weight"].prunable == 0 and "reaches the model output" in next(iter(rows["fc.weight"].frozen))
    assert all(r.kept + r.pruned == r.channels for r in rows.values())


def test_png_plot_is_written(pruned, tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_layers(layer_channels(pruned[0], pruned[1]), tmp_path / "layers.png")
    image = _read_png(path)
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert _pixels_of(image, KEPT_COLOUR) > 100 and _pixels_of(image, PRUNED_COLOUR) > 100


def test_html_page_is_self_contained(pruned, tmp_path):
    page = write_html(pruned[0], tmp_path / "report.html", finalized=pruned[1]).read_text()
    assert "<svg" in page and '<table id="layers">' in page
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", page), "no external assets"
    assert page.count("<tr>") == len(layer_channels(*pruned)) + 1 + 3  # layers + header, summary table


def _read_png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _pixels_of(image: np.ndarray, colour: str) -> int:
    """How many pixels of a uint8 RGB image have ``colour`` (#rrggbb), within a small tolerance."""
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    return int((np.abs(image.astype(float) - rgb).max(axis=-1) < 8).sum())


def _chromium(*args, user_data_dir) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={user_data_dir}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless browser: apt-get install -y chromium")
def test_html_page_renders_in_headless_chromium(pruned, tmp_path):
    page = write_html(pruned[0], tmp_path / "report.html", finalized=pruned[1], title="render check")
    url = page.resolve().as_uri()
    dom = _chromium("--dump-dom", url, user_data_dir=tmp_path / "profile").stdout
    assert "<title>render check</title>" in dom
    rows = re.findall(r"<tr><td>([\w.]+)</td>", dom.split('<table id="layers">')[1])
    assert rows == [r.layer for r in layer_channels(*pruned)], "the browser's DOM holds the layer table"
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1000,1400", url, user_data_dir=tmp_path / "profile")
    image = _read_png(shot)
    assert _pixels_of(image, KEPT_COLOUR) > 500, "the kept bars of the inline SVG were painted"
    assert _pixels_of(image, PRUNED_COLOUR) > 500, "the pruned bars of the inline SVG were painted"
