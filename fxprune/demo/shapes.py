"""Shapes: a small learnable image dataset generated on the fly, for the demo and tests.

Ten classes of 32x32 colour images, drawn procedurally: a shape of random size,
position, rotation and colour on a background of another random colour with a
gradient and pixel noise. Colours carry no information, so a network has to learn
the shapes; a small CNN gets most of them right after a few epochs. Nothing is
downloaded: the same seed gives the same images on every machine.

    disc   ring   square   frame   triangle   cross   h-stripes   v-stripes   checker   two blobs

Example:
    >>> images, labels = make_shapes(20, seed=0)
    >>> images.shape, images.dtype, labels[:10].tolist()
    (torch.Size([20, 3, 32, 32]), torch.uint8, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
"""

from __future__ import annotations

import math
from typing import Callable

import torch

CLASSES = ("disc", "ring", "square", "frame", "triangle", "cross", "h-stripes", "v-stripes", "checker", "two blobs")
SIZE = 32

# Each drawer maps rotated, centred coordinates (u, v), a radius r and a line width w (all [n, 1, 1]
# or broadcastable) and a per-sample period to a boolean [n, H, W] foreground.
Drawer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _disc(u, v, r, w, p):
    return u * u + v * v < r * r


def _ring(u, v, r, w, p):
    return ((u * u + v * v).sqrt() - r).abs() < w


def _square(u, v, r, w, p):
    return torch.maximum(u.abs(), v.abs()) < 0.8 * r


def _frame(u, v, r, w, p):
    return (torch.maximum(u.abs(), v.abs()) - 0.8 * r).abs() < w


def _triangle(u, v, r, w, p):
    inside = torch.ones_like(u, dtype=torch.bool)
    for k in range(3):
        a = math.pi / 2 + 2 * math.pi * k / 3
        inside &= u * math.cos(a) + v * math.sin(a) > -0.5 * r
    return inside


def _cross(u, v, r, w, p):
    return ((u.abs() < w) & (v.abs() < r)) | ((v.abs() < w) & (u.abs() < r))


def _h_stripes(u, v, r, w, p):
    return torch.sin(2 * math.pi * v / p) > 0


def _v_stripes(u, v, r, w, p):
    return torch.sin(2 * math.pi * u / p) > 0


def _checker(u, v, r, w, p):
    return torch.sin(2 * math.pi * u / p) * torch.sin(2 * math.pi * v / p) > 0


def _two_blobs(u, v, r, w, p):
    h = 0.5 * r
    return ((u - r) ** 2 + v * v < h * h) | ((u + r) ** 2 + v * v < h * h)


DRAWERS: tuple = (_disc, _ring, _square, _frame, _triangle, _cross, _h_stripes, _v_stripes, _checker, _two_blobs)


def make_shapes(n: int, seed: int = 0, noise: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of the ten shape classes, in class order ``0, 1, ..., 9, 0, 1, ...``.

    Args:
        n: number of images.
        seed: the random seed; the same seed gives the same images.
        noise: standard deviation of the pixel noise (images lie in ``[0, 1]``).

    Returns:
        ``(images, labels)``: uint8 ``[n, 3, 32, 32]`` and int64 ``[n]``.

    Example:
        >>> a, _ = make_shapes(10, seed=3); b, _ = make_shapes(10, seed=3)
        >>> bool((a == b).all())
        True
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    images = torch.empty(n, 3, SIZE, SIZE, dtype=torch.uint8)
    for label, draw in enumerate(DRAWERS):
        idx = (labels == label).nonzero().flatten()
        if idx.numel():
            images[idx] = _draw(draw, idx.numel(), gen, noise)
    return images, labels


def _draw(draw: Drawer, n: int, gen: torch.Generator, noise: float) -> torch.Tensor:
    """``n`` uint8 images of one class."""
    def uniform(lo, hi):
        return (lo + (hi - lo) * torch.rand(n, 1, 1, generator=gen))

    grid = torch.arange(SIZE, dtype=torch.float32) - (SIZE - 1) / 2
    y, x = grid.view(1, SIZE, 1), grid.view(1, 1, SIZE)
    cx, cy = uniform(-6, 6), uniform(-6, 6)
    angle = uniform(-math.pi / 6, math.pi / 6)
    dx, dy = x - cx, y - cy
    u = torch.cos(angle) * dx + torch.sin(angle) * dy
    v = -torch.sin(angle) * dx + torch.cos(angle) * dy
    foreground = draw(u, v, uniform(6, 10), uniform(1.2, 2.5), uniform(4, 8)).unsqueeze(1).float()
    fg, bg = _contrasting_colours(n, gen)
    slope = (torch.rand(n, 3, 1, 1, generator=gen) - 0.5) * 0.3
    background = bg + slope * (x + y).unsqueeze(0) / SIZE
    image = foreground * fg + (1 - foreground) * background
    image = image + noise * torch.randn(n, 3, SIZE, SIZE, generator=gen)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def _contrasting_colours(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background colours ``[n, 3, 1, 1]`` that differ in brightness by at least 0.25."""
    fg = torch.rand(n, 3, 1, 1, generator=gen)
    bg = torch.rand(n, 3, 1, 1, generator=gen)
    gap = fg.mean(1, keepdim=True) - bg.mean(1, keepdim=True)
    push = (0.25 - gap.abs()).clamp_min(0) * torch.where(gap >= 0, 1.0, -1.0) / 2
    return (fg + push).clamp(0, 1), (bg - push).clamp(0, 1)
