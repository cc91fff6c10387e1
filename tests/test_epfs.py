"""EPFS on a tiny residual model and synthetic data: masks and gates reach exact zeros."""

from copy import deepcopy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_finalized_equals_masked

import fxprune


class Tiny(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                          nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)) for _ in range(2))
        self.fc = nn.Linear(width, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.5
    x[:, y % 3, :4, :] += 1.5  # a learnable signal: which channel, which half
    x[:, 0, 4:, :] += (y // 2).float()[:, None, None]
    return x, y


def train_epfs(pm, epfs, steps=60):
    x, y = data()
    opt = torch.optim.SGD(fxprune.weight_parameters(pm), lr=0.05, momentum=0.9, weight_decay=5e-4)
    pm.train()
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (32,), generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(pm(x[idx]), y[idx]) + epfs.loss(y[idx])
        opt.zero_grad()
        epfs.zero_grad()
        loss.backward()
        opt.step()
        epfs.step()
    pm.eval()


def test_epfs_drives_masks_and_a_gate_to_exact_zero_and_finalize_stays_exact():
    torch.manual_seed(0)
    pm = fxprune.prepare(Tiny(), torch.randn(2, 3, 8, 8))
    epfs = fxprune.EPFS(pm, lr=0.1, l1=0.08, l2=1e-4, gate_l1=0.3, center=0.01, num_classes=4)
    train_epfs(pm, epfs, steps=100)
    epfs.prune()
    zeros = sum(int((m == 0).sum()) for m in fxprune.mask_parameters(pm))
    dead_gates = [n for n, g in pm.fxprune.gates.items() if float(g.detach()) == 0.0]
    assert zeros > 0 and dead_gates
    small = assert_finalized_equals_masked(pm)
    before = fxprune.count(pm, torch.randn(1, 3, 8, 8)).macs
    assert fxprune.count(small, torch.randn(1, 3, 8, 8)).macs < before
    assert not any(m._forward_pre_hooks for m in small.modules())


def test_epfs_budget_lands_within_one_point_of_the_target():
    torch.manual_seed(1)
    pm = fxprune.prepare(Tiny(width=32), torch.randn(2, 3, 8, 8))
    epfs = fxprune.EPFS(pm, lr=0.05, l1=1e-3)
    train_epfs(pm, epfs, steps=20)
    result = epfs.prune(target=0.4)
    assert abs(result.reduction - 0.4) <= 0.01
    small = fxprune.finalize(pm)
    x = pm.fxprune_state.example_inputs
    full = fxprune.count(fxprune.prepare(Tiny(width=32), x), x).macs
    assert abs(1 - fxprune.count(small, x).macs / full - 0.4) <= 0.01


def test_epfs_state_round_trips():
    """Saved and loaded into a fresh EPFS on a copy of the model, the state resumes training exactly where
    it stopped: the optimizer's moments and the class centers came back, not only the centers."""
    prepared = []
    for _ in range(2):  # two prepared models with the same weights
        torch.manual_seed(0)
        prepared.append(fxprune.prepare(Tiny(), torch.randn(2, 3, 8, 8)))
    pm, copy = prepared
    epfs = fxprune.EPFS(pm, center=0.01, num_classes=4)
    train_epfs(pm, epfs, steps=3)
    state = deepcopy(epfs.state_dict())
    copy.load_state_dict(pm.state_dict())
    again = fxprune.EPFS(copy, center=0.01, num_classes=4)
    again.load_state_dict(deepcopy(state))
    saved, loaded = again.state_dict(), state
    assert torch.equal(saved["center"]["centers"], loaded["center"]["centers"])
    assert loaded["optimizer"]["state"]  # moments to restore
    _assert_same(saved["optimizer"], loaded["optimizer"])
    train_epfs(pm, epfs, steps=3)
    train_epfs(copy, again, steps=3)
    for (name, a), (_, b) in zip(pm.state_dict().items(), copy.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name} differs after resuming")
    torch.testing.assert_close(again.center_loss.centers, epfs.center_loss.centers, rtol=0, atol=0)


def _assert_same(a, b, where="state"):
    """Nested dicts, lists and tensors, equal everywhere."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_epfs_needs_something_to_prune():
    pm = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)), torch.randn(1, 3, 4, 4))
    with pytest.raises(fxprune.FxPruneError, match="no removable residual branch"):
        fxprune.EPFS(pm, blocks=True, filters=False)


def test_epfs_budget_ranks_a_mask_against_its_own_group():
    """A group whose masks all shrank together (BatchNorm downstream cancels their common
    scale) is not pruned before a lone weak channel of a group at full scale."""
    torch.manual_seed(0)
    pm = fxprune.prepare(Tiny(), torch.randn(2, 3, 8, 8))
    epfs = fxprune.EPFS(pm, blocks=False)
    names = [g for g in pm.fxprune.masks if pm.fxprune.masks[g].numel() == 16]
    shrunk, weak = names[0], names[1]
    with torch.no_grad():
        pm.fxprune.masks[shrunk].mul_(0.1)
        pm.fxprune.masks[weak][3] = 0.5
    result = epfs.prune(target=0.02)
    assert float(pm.fxprune.masks[weak][3]) == 0.0
    assert bool((pm.fxprune.masks[shrunk] != 0).all())
    assert result.reduction >= 0.02


def test_epfs_restarts_fista_momentum_by_default():
    pm = fxprune.prepare(Tiny(), torch.randn(2, 3, 8, 8))
    assert all(g["restart"] == "gradient" for g in fxprune.EPFS(pm).optimizer.param_groups)
    assert all(g["restart"] is None for g in fxprune.EPFS(pm, restart=None).optimizer.param_groups)


def test_anneal_switches_structures_off_on_a_schedule_and_holds_them_there():
    torch.manual_seed(2)
    pm = fxprune.prepare(Tiny(width=32), torch.randn(2, 3, 8, 8))
    epfs = fxprune.EPFS(pm, lr=0.05, l1=1e-3)
    x, y = data()
    opt = torch.optim.SGD(fxprune.weight_parameters(pm), lr=0.05, momentum=0.9)
    reached, off_at_end_of_ramp = [], None
    for step in range(40):
        loss = F.cross_entropy(pm(x[:32]), y[:32]) + epfs.loss(y[:32])
        opt.zero_grad()
        epfs.zero_grad()
        loss.backward()
        opt.step()
        epfs.step()
        if step % 5 == 4:
            result = epfs.anneal(progress=(step + 1) / 40, target=0.4, until=0.5)
            reached.append(epfs._annealed)
            if step + 1 == 20:
                off_at_end_of_ramp = [(m == 0).clone() for m in fxprune.mask_parameters(pm)]
    # each step locks in what it switched off, so the schedule lands within a channel or two
    # of this small model (a channel of the residual stream is about 1% of its MACs)
    assert reached == sorted(reached) and reached[0] > 0 and abs(reached[3] - 0.4) <= 0.02
    assert result is None  # past the ramp, nothing more to switch off
    epfs.finish()
    for off, m in zip(off_at_end_of_ramp, fxprune.mask_parameters(pm)):
        assert bool((m[off] == 0).all())  # held through the steps after the ramp
    assert epfs.prune(target=0.4).reduction == reached[-1]  # nothing more to remove
    assert_finalized_equals_masked(pm)


def test_anneal_release_drops_the_penalty_once_the_target_is_off_and_keeps_the_zeros():
    torch.manual_seed(2)
    pm = fxprune.prepare(Tiny(width=32), torch.randn(2, 3, 8, 8))
    epfs = fxprune.EPFS(pm, lr=0.05, l1=1e-3)
    x, y = data()
    for step in range(20):
        loss = F.cross_entropy(pm(x[:32]), y[:32]) + epfs.loss(y[:32])
        epfs.zero_grad()
        loss.backward()
        epfs.step()
        epfs.anneal(progress=(step + 1) / 20, target=0.4, until=0.5, release=True)
        lams = [g["lam"] for g in epfs.optimizer.param_groups]
        assert all(lam == 0 for lam in lams) == (step + 1 >= 10)
    epfs.finish()
    assert abs(epfs._annealed - 0.4) <= 0.02
    assert epfs.prune(target=0.4).reduction == epfs._annealed  # the zeros were held without the penalty
    assert_finalized_equals_masked(pm)


def test_masks_of_batchnorm_normalised_groups_keep_their_largest_at_one():
    # Inner block channels feed conv + BatchNorm only: their common scale is invisible in
    # training, so EPFS holds it at 1 and l1 shrinks masks relative to their group.
    torch.manual_seed(3)
    pm = fxprune.prepare(Tiny(), torch.randn(2, 3, 8, 8))
    inner = {g.name for g in fxprune.channel_groups(pm)
             if any(p.name in ("blocks.0.0.weight", "blocks.1.0.weight") for p in g.producers)}
    stream = next(g.name for g in fxprune.channel_groups(pm) if any(p.name == "stem.weight" for p in g.producers))
    assert inner == set(fxprune.normalised_groups(pm)) and stream not in inner  # the stream feeds fc
    epfs = fxprune.EPFS(pm, lr=0.1, l1=0.05, normalise=True)
    train_epfs(pm, epfs, steps=30)
    epfs.finish()
    for name in inner:
        mask = pm.fxprune.masks[name].detach()
        assert float(mask.abs().max()) == pytest.approx(1.0) and float(mask.min()) < 1.0
    assert float(pm.fxprune.masks[stream].detach().abs().max()) < 1.0  # shrunk by l1 as before


def _inner_group(pm, block: int):
    return next(g.name for g in fxprune.channel_groups(pm)
                if any(p.name == f"blocks.{block}.0.weight" for p in g.producers))


def test_an_emptied_group_keeps_one_channel_unless_its_branch_is_removed():
    pm = fxprune.prepare(Tiny(), torch.randn(2, 3, 8, 8))
    epfs = fxprune.EPFS(pm)
    gate0 = next(b.name for b in fxprune.branches(pm) if any(n.startswith("blocks_0") for n in b.nodes))
    with torch.no_grad():
        pm.fxprune.masks[_inner_group(pm, 0)].zero_()  # its branch goes too: nothing to keep
        pm.fxprune.gates[gate0].zero_()
        pm.fxprune.masks[_inner_group(pm, 1)].zero_()  # its branch stays: one channel comes back
    with pytest.warns(UserWarning, match="emptied 1 channel group"):
        epfs.prune()
    assert int(pm.fxprune.masks[_inner_group(pm, 0)].count_nonzero()) == 0
    assert int(pm.fxprune.masks[_inner_group(pm, 1)].count_nonzero()) == 1
    assert_finalized_equals_masked(pm)
