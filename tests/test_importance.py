"""One-shot pruning by importance: which channels go, how many, and never a whole group."""

import pytest
import torch
import torch.nn as nn
from helpers import assert_finalized_equals_masked, randomize

import fxprune


def chain():
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(),
                                    nn.Conv2d(16, 2, 1)))
    with torch.no_grad():
        model[0].weight.mul_(torch.arange(1, 9, dtype=torch.float32).view(8, 1, 1, 1))  # filter k has l1 ~ k+1
    return model


def test_l1_removes_the_filters_with_the_smallest_norm():
    model = chain()
    pm = fxprune.prepare(model, torch.randn(1, 3, 4, 4))
    fxprune.prune_by_importance(pm, 0.5, importance="l1")
    (g,) = [g for g in fxprune.channel_groups(pm) if any(p.name == "0.weight" for p in g.producers)]
    order = model[0].weight.abs().sum((1, 2, 3)).argsort()
    assert set(torch.nonzero(pm.fxprune.masks[g.name] == 0).flatten().tolist()) == set(order[:4].tolist())
    assert_finalized_equals_masked(pm)


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "random"])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_every_importance_and_scope_prunes_and_keeps_every_group(importance, scope):
    pm = fxprune.prepare(chain(), torch.randn(1, 3, 4, 4))
    removed = fxprune.prune_by_importance(pm, 0.9, importance=importance, scope=scope)
    assert sum(removed.values()) > 0
    assert all(bool(m.any()) for m in fxprune.mask_parameters(pm))
    assert_finalized_equals_masked(pm)


def test_round_to_keeps_a_multiple_of_channels():
    pm = fxprune.prepare(chain(), torch.randn(1, 3, 4, 4))
    fxprune.prune_by_importance(pm, 0.4, round_to=4)
    kept = sorted(int(m.count_nonzero()) for m in fxprune.mask_parameters(pm))
    assert kept == [4, 8]


def test_grouped_convolution_loses_whole_groups_and_keeps_their_width():
    model = nn.Sequential(nn.Conv2d(3, 48, 1), nn.Conv2d(48, 48, 3, padding=1, groups=6), nn.Conv2d(48, 10, 1))
    pm = fxprune.prepare(model, torch.randn(1, 3, 8, 8))
    fxprune.prune_by_importance(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    conv = small.get_submodule("1")
    assert (conv.in_channels, conv.out_channels, conv.groups) == (24, 24, 3)


def test_attention_loses_whole_heads_and_keeps_the_head_dim():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(24, 4, batch_first=True)  # 4 heads of 6
            self.fc = nn.Linear(24, 3)

        def forward(self, x):
            return self.fc(self.attn(x, x, x, need_weights=False)[0])

    pm = fxprune.prepare(Block(), torch.randn(2, 5, 24))
    fxprune.prune_by_importance(pm, 0.5)
    kept = {g.size: int(pm.fxprune.masks[g.name].count_nonzero()) for g in fxprune.channel_groups(pm) if g.size < 24}
    assert kept == {4: 2, 6: 6}
    small = assert_finalized_equals_masked(pm)
    assert small.attn.in_proj_weight.shape[0] == 3 * 2 * 6


@pytest.mark.parametrize("width, groups_kept", [(8, 3), (4, 4), (6, 4)])
def test_round_to_counts_the_channels_of_whole_groups_not_the_groups(width, groups_kept):
    model = nn.Sequential(nn.Conv2d(3, 6 * width, 1), nn.Conv2d(6 * width, 6 * width, 3, padding=1, groups=6),
                          nn.Conv2d(6 * width, 10, 1))
    pm = fxprune.prepare(model, torch.randn(1, 3, 8, 8))
    fxprune.prune_by_importance(pm, 0.5, round_to=8)
    conv = assert_finalized_equals_masked(pm).get_submodule("1")
    assert conv.groups == groups_kept and conv.out_channels == groups_kept * width
    assert conv.out_channels % 8 == 0


def test_with_the_groups_ignored_their_width_shrinks_instead():
    model = nn.Sequential(nn.Conv2d(3, 48, 1), nn.Conv2d(48, 48, 3, padding=1, groups=6), nn.Conv2d(48, 10, 1))
    pm = fxprune.prepare(model, torch.randn(1, 3, 8, 8))
    groups = [g.name for g in fxprune.channel_groups(pm) if g.size == 6]
    fxprune.prune_by_importance(pm, 0.5, ignore=groups)
    small = assert_finalized_equals_masked(pm)
    conv = small.get_submodule("1")
    assert conv.groups == 6 and conv.in_channels == conv.out_channels == 6 * 6  # 8 - round(8 * (1 - 0.5 ** 0.5))


def test_ignored_layers_are_left_alone():
    pm = fxprune.prepare(chain(), torch.randn(1, 3, 4, 4))
    fxprune.prune_by_importance(pm, 0.5, ignore=["2"])
    small = fxprune.finalize(pm)
    assert small.get_submodule("2").out_channels == 16 and small.get_submodule("0").out_channels == 4


def test_a_misspelt_ignore_names_the_closest_layers():
    """Regression: an unknown name in ``ignore`` was silently ignored, pruning the layer it meant."""
    model = randomize(nn.Sequential())
    model.add_module("stem", nn.Conv2d(3, 8, 1))
    model.add_module("body", nn.Conv2d(8, 16, 1))
    model.add_module("head", nn.Conv2d(16, 2, 1))
    pm = fxprune.prepare(model, torch.randn(1, 3, 4, 4))
    with pytest.raises(fxprune.FxPruneError, match=r"'bdoy'.*closest: 'body'"):
        fxprune.prune_by_importance(pm, 0.5, ignore=["bdoy"])
    assert all(bool((m == 1).all()) for m in pm.fxprune.masks.values())  # raised before zeroing anything
    fxprune.prune_by_importance(pm, 0.5, ignore=["body", "head", fxprune.channel_groups(pm)[0].name])
