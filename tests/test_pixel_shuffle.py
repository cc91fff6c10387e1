"""PixelShuffle and PixelUnshuffle move r*r channels into (or out of) one channel's r x r pixels:
those channels are pruned together, one consumer channel per group of r*r producer channels."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_finalized_equals_masked, randomize, zero_channels

import fxprune


class Shuffled(nn.Module):
    """conv -> pixel_shuffle(r) -> conv (the sub-pixel upsampling of super-resolution nets)."""

    def __init__(self, r=2, functional=False):
        super().__init__()
        self.r, self.functional = r, functional
        self.a, self.b = nn.Conv2d(3, 4 * r * r, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)
        self.shuffle = nn.PixelShuffle(r)

    def forward(self, x):
        y = self.a(x)
        y = F.pixel_shuffle(y, self.r) if self.functional else self.shuffle(y)
        return self.b(torch.relu(y))


class Unshuffled(nn.Module):
    """conv -> pixel_unshuffle(r) -> conv: each channel becomes r*r consecutive channels."""

    def __init__(self, r=2, functional=False):
        super().__init__()
        self.r, self.functional = r, functional
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6 * r * r, 5, 1)
        self.unshuffle = nn.PixelUnshuffle(r)

    def forward(self, x):
        y = self.a(x)
        y = F.pixel_unshuffle(y, self.r) if self.functional else self.unshuffle(y)
        return self.b(torch.relu(y))


def _groups(pm):
    return sorted(g.size for g in fxprune.channel_groups(pm))


@pytest.mark.parametrize("functional", [False, True])
@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_prunes_groups_of_r_squared_producer_channels(r, functional):
    pm = fxprune.prepare(randomize(Shuffled(r, functional).eval()), torch.randn(2, 3, 4, 4))
    assert _groups(pm) == [4], fxprune.report.frozen_table(pm)  # was []: every channel frozen
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.a.out_channels == 2 * r * r and small.b.in_channels == 2


@pytest.mark.parametrize("functional", [False, True])
@pytest.mark.parametrize("r", [2, 3])
def test_pixel_unshuffle_prunes_one_producer_channel_per_r_squared_consumer_channels(r, functional):
    pm = fxprune.prepare(randomize(Unshuffled(r, functional).eval()), torch.randn(2, 3, 6, 6))
    assert _groups(pm) == [6], fxprune.report.frozen_table(pm)
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.a.out_channels == 3 and small.b.in_channels == 3 * r * r


def test_shuffle_then_unshuffle_round_trips_the_groups():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.PixelShuffle(2), nn.PixelUnshuffle(2), nn.Conv2d(8, 4, 1))
    pm = fxprune.prepare(randomize(model.eval()), torch.randn(2, 3, 4, 4))
    assert _groups(pm) == [2]  # channels 0-3 and 4-7 of the first conv go together
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert getattr(small, "0").out_channels == 4 and getattr(small, "3").in_channels == 4
