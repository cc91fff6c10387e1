"""OICSR: the out-in group lasso by hand, and greedy pruning to a MACs target."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import randomize

import fxprune


class JoinAndConcat(nn.Module):
    """a and b meet in a residual add; their sum and c are concatenated into d."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1, bias=False)
        self.b = nn.Conv2d(2, 3, 1, bias=False)
        self.c = nn.Conv2d(2, 2, 1, bias=False)
        self.d = nn.Conv2d(5, 1, 1, bias=False)

    def forward(self, x):
        return self.d(torch.cat([F.relu(self.a(x) + self.b(x)), self.c(x)], dim=1))


def test_penalty_equals_a_hand_computation():
    torch.manual_seed(0)
    model = JoinAndConcat()
    pm = fxprune.prepare(model, torch.randn(1, 2, 3, 3))
    reg = fxprune.OutInGroupLasso(pm, lam=0.5)
    a, b, c, d = (getattr(model, n).weight.detach() for n in "abcd")
    expected = 0.0
    for k in range(3):  # channel k of the join: a's and b's filter k, d's input column k
        expected += math.sqrt(a[k].pow(2).sum() + b[k].pow(2).sum() + d[:, k].pow(2).sum())
    for k in range(2):  # channel k of c: c's filter k, d's input column 3 + k
        expected += math.sqrt(c[k].pow(2).sum() + d[:, 3 + k].pow(2).sum())
    torch.testing.assert_close(reg.penalty(), torch.tensor(0.5 * expected), rtol=1e-5, atol=1e-6)


def test_prox_shrinks_each_group_and_zeros_small_ones():
    pm = fxprune.prepare(JoinAndConcat(), torch.randn(1, 2, 3, 3))
    reg = fxprune.OutInGroupLasso(pm, lam=1.0)
    norms = reg.group_norms_sq().sqrt().detach()
    reg.prox(lr=float(norms.sort().values[1]))  # zeros the two weakest groups exactly
    after = reg.group_norms_sq().sqrt().detach()
    assert int((after == 0).sum()) == 2
    assert torch.all(after <= norms + 1e-6)


def test_importance_is_the_mean_energy_of_the_group():
    model = JoinAndConcat()
    pm = fxprune.prepare(model, torch.randn(1, 2, 3, 3))
    scores = fxprune.oicsr_importance(pm)
    c, d = model.c.weight.detach(), model.d.weight.detach()
    group = torch.cat([c[0].flatten(), d[:, 3].flatten()])
    assert any(abs(s - float(group.pow(2).mean())) < 1e-7 for s in scores)


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, 32, 3, padding=1))
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(x + self.body(x))
        return self.fc(x.mean((2, 3)))


def test_greedy_pruning_lands_within_a_point_and_empties_no_group():
    torch.manual_seed(0)
    pm = fxprune.prepare(randomize(Wide()), torch.randn(1, 3, 8, 8))
    steps = []
    result = fxprune.greedy_prune(pm, target=0.5, step=0.1, finetune=lambda m: steps.append(1))
    assert abs(result.reduction - 0.5) <= 0.01
    assert steps  # fine-tuning ran between iterations
    assert all(bool(m.detach().any()) for m in fxprune.mask_parameters(pm))
    small = fxprune.finalize(pm)
    x = pm.fxprune_state.example_inputs
    full = fxprune.count(Wide(), x).macs
    assert abs(1 - fxprune.count(small, x).macs / full - 0.5) <= 0.01


def test_greedy_pruning_ranks_channels_relative_to_their_group():
    # A layer whose weights are all small (a wide fan-in, weight decay) is not singled out:
    # by the raw energy, body's channels go first (33 of 48 kept) while the stem's all stay.
    torch.manual_seed(0)
    model = randomize(Wide())
    with torch.no_grad():
        for layer in (model.body[0], model.body[2]):
            layer.weight.mul_(0.01)
            layer.bias.mul_(0.01)
    pm = fxprune.prepare(model, torch.randn(1, 3, 8, 8))
    fxprune.greedy_prune(pm, target=0.3)
    share = {g.name: int((pm.fxprune.masks[g.name] != 0).sum()) / g.size for g in fxprune.channel_groups(pm)}
    body = next(g.name for g in fxprune.channel_groups(pm) if any(p.name == "body.0.weight" for p in g.producers))
    assert share[body] >= max(share.values()), share
