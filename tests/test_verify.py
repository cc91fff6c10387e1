"""finalize's exactness check: what it lets through and what it stops.

Wrong results are made on purpose with handlers that lie about a layer (registered for
the test only), so that each of the check's paths has to fire.
"""

import warnings

import pytest
import torch
import torch.nn as nn
from helpers import randomize

import fxprune
from fxprune.core.finalize.verify import random_like, relative_error
from fxprune.core.rules import registry


class Flip(nn.Module):
    """Reverses the channels; the handler registered below claims it keeps them in place."""

    def forward(self, x):
        return x.flip(1)


class Squash(nn.Module):
    """Sums over the spatial dimensions: ``[N, C, H, W] -> [N, C]``."""

    def forward(self, x):
        return x.sum((2, 3))


class PassesThrough(registry.Handler):
    def flow(self, ctx):
        return ctx.layout(0)  # a lie for Flip: channel i comes from channel C-1-i


class Unrelated(registry.Handler):
    def flow(self, ctx):
        return ctx.empty_out()  # a lie for Squash: its output's channels are its input's


@pytest.fixture
def lying_handlers():
    registry.register(Flip)(PassesThrough)
    registry.register(Squash)(Unrelated)
    yield
    registry.unregister(Flip, Squash)


class Flipped(nn.Module):
    def __init__(self, out=6, integer=False):
        super().__init__()
        self.a, self.flip, self.b = nn.Conv2d(3, 8, 1), Flip(), nn.Conv2d(8, out, 1)
        self.integer = integer

    def forward(self, x):
        y = self.b(self.flip(self.a(x))).mean((2, 3))
        return y.argmax(1) if self.integer else y


def _pruned(model, x):
    """Prepared, with the first half of every mask zeroed (not a palindrome, which a flip would keep)."""
    pm = fxprune.prepare(randomize(model.eval()), x)
    with torch.no_grad():
        for mask in pm.fxprune.masks.values():
            mask[: mask.numel() // 2] = 0
    return pm


def test_a_wrong_result_raises(lying_handlers):
    pm = _pruned(Flipped(), torch.randn(2, 3, 4, 4))
    with pytest.raises(fxprune.EquivalenceError, match="on the example input, output 0 .* differs"):
        fxprune.finalize(pm)
    assert fxprune.finalize(pm, check=False) is not None


def test_a_wrong_integer_output_raises(lying_handlers):
    pm = _pruned(Flipped(out=32, integer=True), torch.randn(16, 3, 4, 4))
    with pytest.raises(fxprune.EquivalenceError, match="differs .* by inf"):
        fxprune.finalize(pm)


class Squashed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.squash = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1), Squash()

    def forward(self, x):
        h = self.a(x)
        return self.b(h).mean((2, 3)), self.squash(h)  # the lie leaves the second output's channels prunable


def test_a_wrong_output_shape_raises(lying_handlers):
    pm = _pruned(Squashed(), torch.randn(2, 3, 4, 4))
    with pytest.raises(fxprune.EquivalenceError, match="do not have the masked model's shapes"):
        fxprune.finalize(pm)


def test_error_is_relative_to_each_outputs_scale():
    a = torch.full((4,), 1e-3)
    assert relative_error(a, a * (1 + 1e-3)) == pytest.approx(1e-3, rel=1e-3)  # was 1e-6: an absolute tolerance
    big, small = torch.tensor([1e3]), torch.tensor([1e-3])
    assert relative_error(small, small + 1e-5) == pytest.approx(1e-2, rel=1e-3)
    assert relative_error(big, big + 1e-5) < 1e-7
    zeros = torch.zeros(3)
    assert relative_error(zeros, zeros) == 0.0
    assert relative_error(zeros, zeros + 1e-3) > 1e-4  # a floor at float32's epsilon, not 1


@pytest.mark.parametrize("reference, result", [
    ([float("inf"), 1.0], [3.0, 1.0]),             # was NaN, which max() dropped
    ([float("inf"), 1.0], [float("-inf"), 1.0]),
    ([float("nan"), 1.0], [0.0, 1.0]),
    ([0.0, 1.0], [float("nan"), 1.0]),
    ([1.0, 1.0], [float("inf"), 1.0]),
])
def test_any_non_finite_mismatch_is_infinite(reference, result):
    assert relative_error(torch.tensor(reference), torch.tensor(result)) == float("inf")


def test_matching_non_finite_values_agree():
    t = torch.tensor([float("inf"), float("-inf"), float("nan"), 2.0])
    assert relative_error(t, t.clone()) == 0.0


class FirstLayerOnZeros(nn.Module):
    """On zeros, ``a`` (no bias) gives zeros whichever of its channels go where: only ``b``'s bias
    reaches the output."""

    def __init__(self):
        super().__init__()
        self.a, self.flip, self.b = nn.Conv2d(3, 8, 1, bias=False), Flip(), nn.Conv2d(8, 6, 1)

    def forward(self, x):
        return self.b(self.flip(self.a(x))).mean((2, 3))


def test_a_constant_example_input_is_checked_on_a_random_one_too(lying_handlers):
    pm = _pruned(FirstLayerOnZeros(), torch.zeros(2, 3, 4, 4))
    with pytest.raises(fxprune.EquivalenceError, match="on a random input .* because the example input is constant"):
        fxprune.finalize(pm)


def test_random_input_keeps_shapes_dtypes_and_integer_inputs():
    x, ids = torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 5, dtype=torch.long)
    rx, rids = random_like((x, ids))
    assert rx.shape == x.shape and rx.dtype == x.dtype and rx.std() > 0.1
    assert rids is ids
    torch.testing.assert_close(random_like((x,))[0], rx)  # seeded


class TwoHeads(nn.Module):
    """``normed`` reads a LayerNorm over the hidden channels, ``plain`` does not."""

    def __init__(self):
        super().__init__()
        self.fc, self.norm, self.head = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)
        self.other, self.flip, self.out = nn.Linear(4, 6), Flip(), nn.Linear(6, 3)

    def forward(self, x):
        normed = self.head(self.norm(self.fc(x)))
        plain = self.out(self.flip(self.other(x)))
        return normed, plain


def _masks_of(pm, layer):
    """The masks whose group holds ``layer``'s output channels."""
    return [pm.fxprune.masks[g.name] for g in fxprune.channel_groups(pm)
            if any(str(m).startswith(f"{layer}.weight:0") for m in g.members)]


def test_approximate_norms_warns_only_where_a_norm_lost_channels():
    pm = fxprune.prepare(randomize(TwoHeads().eval()), torch.randn(5, 4), fxprune.PruneConfig(approximate_norms=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = fxprune.finalize(pm)  # no norm lost a channel: exact, no warning
    assert small.fxprune_equivalence_error < 1e-5
    with torch.no_grad():
        _masks_of(pm, "fc")[0][:3] = 0
    with pytest.warns(UserWarning, match=r"normalisation\(s\) norm, which lost channels"):
        small = fxprune.finalize(pm)
    assert small.fxprune_equivalence_error > 1e-4


def test_approximate_norms_still_checks_outputs_that_read_no_lossy_norm(lying_handlers):
    pm = fxprune.prepare(randomize(TwoHeads().eval()), torch.randn(5, 4), fxprune.PruneConfig(approximate_norms=True))
    with torch.no_grad():
        _masks_of(pm, "fc")[0][:3] = 0
        _masks_of(pm, "other")[0][:2] = 0
    with pytest.raises(fxprune.EquivalenceError, match="output 1 "):
        fxprune.finalize(pm)
