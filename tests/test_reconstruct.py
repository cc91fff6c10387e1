"""fxprune.reconstruct: removed channels made up for by the kept ones, and finalize still exact."""

import json

import pytest
import torch
import torch.nn as nn
from helpers import assert_finalized_equals_masked, benchmark_script, randomize

import fxprune
from fxprune.methods.reconstruct import JointMoments

TARGETS = pytest.mark.parametrize("target", ["dense", "removed"])


def low_rank(width: int = 8) -> nn.Module:
    """Every activation a 1x1 convolution of the 3 input channels: any 3 channels of a site span the others."""
    return randomize(nn.Sequential(nn.Conv2d(3, width, 1), nn.Conv2d(width, width, 1), nn.Conv2d(width, 4, 3)))


def calibration(n: int = 4, size: int = 6, seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, size, size, generator=gen) for _ in range(n)]


def zero_half(pm) -> None:
    with torch.no_grad():
        for mask in fxprune.mask_parameters(pm):
            mask[mask.numel() // 2:] = 0


@TARGETS
def test_channels_that_are_linear_in_the_kept_ones_are_recovered_exactly(target):
    model = low_rank()
    pm = fxprune.prepare(model, torch.randn(1, 3, 6, 6))
    x = torch.randn(5, 3, 6, 6)
    dense = model(x)
    zero_half(pm)
    assert (pm(x) - dense).abs().max() > 0.1  # pruning alone changes the output
    result = fxprune.reconstruct(pm, calibration(), ridge=1e-10, target=target)
    assert {f.site for f in result.fits} == {"s0", "s1"} and all(f.unexplained < 1e-6 for f in result.fits)
    torch.testing.assert_close(pm(x), dense, atol=1e-4, rtol=1e-4)
    small = assert_finalized_equals_masked(pm)  # the reconstructed masked model is what finalize reproduces
    torch.testing.assert_close(small(x), dense, atol=1e-4, rtol=1e-4)
    assert small.get_submodule("1").in_channels == 4


@TARGETS
def test_the_intercept_goes_into_the_batchnorm_after_a_layer_without_bias(target):
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6)))
    model.eval()
    pm = fxprune.prepare(model, torch.randn(1, 3, 6, 6))
    x = torch.randn(5, 3, 6, 6)
    dense = model(x)
    zero_half(pm)
    fxprune.reconstruct(pm, calibration(), ridge=1e-10, target=target)
    torch.testing.assert_close(pm.eval()(x), dense, atol=1e-4, rtol=1e-4)
    assert_finalized_equals_masked(pm)


class Residual(nn.Module):
    """A residual stream (stem + branch, then a head that reads it) and a concat, all linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 8, 1)
        self.left, self.right = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        t = self.stem(x)
        t = t + self.b(self.a(t))
        y = torch.cat([self.left(t), self.right(t)], 1)
        return self.head(y.mean((2, 3)))


@TARGETS
def test_residual_and_concat_groups_are_compensated_at_each_of_their_sites(target):
    model = randomize(Residual())
    pm = fxprune.prepare(model, torch.randn(1, 3, 6, 6))
    x = torch.randn(5, 3, 6, 6)
    dense = model(x)
    zero_half(pm)
    result = fxprune.reconstruct(pm, calibration(), ridge=1e-10, target=target)
    state_sites = fxprune.core.ir.state_of(pm).sites
    by_group = {}
    for fit in result.fits:
        node = next(n for n in pm.graph.nodes if n.meta.get("fxprune", {}).get("site") == fit.site)
        for g in node.meta["fxprune"]["groups"]:
            by_group.setdefault(g, []).append(fit.site)
    assert max(len(s) for s in by_group.values()) >= 2, (by_group, state_sites)  # the stream: several sites
    assert "head" in {c for f in result.fits for c in f.consumers}  # the concat's consumer, a linear layer
    torch.testing.assert_close(pm(x), dense, atol=1e-4, rtol=1e-4)
    assert_finalized_equals_masked(pm)


@TARGETS
def test_fractional_masks_are_fitted_as_the_consumer_reads_them(target):
    model = low_rank()
    pm = fxprune.prepare(model, torch.randn(1, 3, 6, 6))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mask in fxprune.mask_parameters(pm):  # EPFS leaves masks such as these
            mask.copy_(0.3 + torch.rand(mask.shape, generator=gen))
    x = torch.randn(5, 3, 6, 6)
    before_cut = pm(x)
    reference = {name: m.detach().clone() for name, m in pm.fxprune.masks.items()}
    zero_half(pm)
    fxprune.reconstruct(pm, calibration(), ridge=1e-10, reference=reference, target=target)
    torch.testing.assert_close(pm(x), before_cut, atol=1e-4, rtol=1e-4)
    assert_finalized_equals_masked(pm)


@pytest.mark.parametrize("patches", [True, False])
def test_statistics_stay_the_same_size_however_many_batches_stream_through(patches):
    sizes = []
    for n in (2, 20):
        pm = fxprune.prepare(low_rank(), torch.randn(1, 3, 6, 6))
        zero_half(pm)
        result = fxprune.reconstruct(pm, (b for b in calibration(n)), sequential=False, patches=patches)  # read once
        assert result.images == 8 * n and result.passes == 1
        sizes.append(result.statistics_bytes)
    assert sizes[0] == sizes[1]

    def floats(kept, fitted):  # sums of z, t and t^2; z z^T; t z^T
        return kept + 2 * fitted + kept * kept + fitted * kept

    width = 9 if patches else 1  # the 3x3 convolution reads patches: 9 columns per channel
    assert sizes[0] == 8 * (floats(4, 8) + floats(4 * width, 8 * width))  # two sites of 8 channels, float64


def test_joint_moments_match_the_covariances_of_all_samples():
    z, t = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, 2, dtype=torch.float64)
    moments = JointMoments(3, 2)
    for a, b in zip(z.split(7), t.split(7)):
        moments.add(a, b)
    czz, ctz, var_t = moments.covariances()
    joint = torch.cov(torch.cat([z, t], 1).T, correction=0)
    torch.testing.assert_close(czz, joint[:3, :3])
    torch.testing.assert_close(ctz, joint[3:, :3])
    torch.testing.assert_close(var_t, joint[3:, 3:].diagonal())
    columns = JointMoments(3, 2)  # the same samples as float32 [images, columns, positions], far from zero
    for a, b in zip(z.view(8, 5, 3).transpose(1, 2).split(3), t.view(8, 5, 2).transpose(1, 2).split(3)):
        columns.add((a + 1e3).float(), (b - 1e3).float())
    for got, want in zip(columns.covariances(), (czz, ctz, var_t)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(columns.means()[0], z.mean(0) + 1e3)


def test_consumers_that_cannot_take_a_fit_are_skipped_with_a_reason():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.grouped = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.stem2, self.shared = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)

        def forward(self, x):
            a, b = self.stem(x), self.stem2(x)
            return self.grouped(a) + self.shared(a) + self.shared(b)

    pm = fxprune.prepare(randomize(Shared()), torch.randn(1, 3, 6, 6))
    zero_half(pm)
    x = torch.randn(2, 3, 6, 6)
    pruned = pm(x)
    result = fxprune.reconstruct(pm, calibration())
    assert result.fits == [] and set(result.skipped) == {"s0", "s1"}
    assert "grouped convolution (groups=2)" in result.skipped["s0"]
    assert "shared_1: not a layer called once" in result.skipped["s1"]
    torch.testing.assert_close(pm(x), pruned, rtol=0, atol=0)
    assert_finalized_equals_masked(pm)


def test_bad_input_fails_with_a_clear_message():
    pm = fxprune.prepare(low_rank(), torch.randn(1, 3, 6, 6))
    zero_half(pm)
    with pytest.raises(fxprune.FxPruneError, match="no calibration batches"):
        fxprune.reconstruct(pm, [])
    with pytest.raises(fxprune.NotPreparedError, match="fxprune.prepare"):
        fxprune.reconstruct(low_rank(), calibration())
    with pytest.raises(fxprune.FxPruneError, match="one-shot iterator"):
        fxprune.reconstruct(pm, iter(calibration()))
    with pytest.raises(fxprune.FxPruneError, match="ridge"):
        fxprune.reconstruct(pm, calibration(), ridge=0)


def test_nothing_removed_changes_nothing():
    model = low_rank()
    pm = fxprune.prepare(model, torch.randn(1, 3, 6, 6))
    weights = {k: v.clone() for k, v in pm.state_dict().items()}
    result = fxprune.reconstruct(pm, calibration())
    assert result.fits == [] and result.images == 32
    assert all(torch.equal(v, weights[k]) for k, v in pm.state_dict().items())


def test_the_dense_target_also_corrects_what_pruning_upstream_changed():
    def relu_chain():
        torch.manual_seed(0)
        return randomize(nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1),
                                       nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 4, 1)))

    x = torch.randn(16, 3, 6, 6)
    dense = relu_chain()(x).detach()
    errors = {}
    for target in ("dense", "removed"):
        pm = fxprune.prepare(relu_chain(), torch.randn(1, 3, 6, 6))
        zero_half(pm)
        fxprune.reconstruct(pm, calibration(8), ridge=1e-3, target=target)
        errors[target] = float((pm(x) - dense).detach().pow(2).mean())
        assert_finalized_equals_masked(pm)
    assert errors["dense"] < errors["removed"], errors


def test_a_consumer_with_tied_weights_is_left_alone_with_its_reason():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(3, 8)
            self.left, self.right = nn.Linear(8, 8), nn.Linear(8, 8)
            self.right.weight = self.left.weight  # one weight, two layers

        def forward(self, x):
            return self.left(self.a(x)) + self.right(self.b(x))

    pm = fxprune.prepare(randomize(Tied()), torch.randn(2, 3))
    zero_half(pm)
    result = fxprune.reconstruct(pm, [torch.randn(16, 3) for _ in range(2)])
    reasons = " ".join(result.skipped.values())
    assert result.fits == [] and "untied" in reasons, result
    assert_finalized_equals_masked(pm)


def test_reconstruction_time_benchmark_records_each_run_and_the_median(tmp_path):
    with benchmark_script("reconstruct_time") as bench:
        assert bench.main(["--images", "128", "--batch", "64", "--threads", "1", "--repeats", "2",
                           "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "reconstruct.json").read_text())
    runs = record["runs"]["1"]
    assert len(runs) == 2 and all(r["images"] == 128 and r["sites"] > 0 for r in runs)
    assert min(r["seconds"] for r in runs) <= record["median_seconds"]["1"] <= max(r["seconds"] for r in runs)
    assert record["command"].startswith("python benchmarks/reconstruct_time.py")
