"""One test per coupling rule: a tiny module, the groups fxprune finds, and the central property."""


import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_finalized_equals_masked, randomize, zero_channels

import fxprune


def prepared(module, *inputs, **config):
    randomize(module)
    return fxprune.prepare(module, inputs, fxprune.PruneConfig(**config) if config else None)


def group_sizes(pm):
    return sorted(g.size for g in fxprune.channel_groups(pm))


def group_of(pm, layer: str, dim: int = 0):
    """The groups whose members include ``layer``'s weight dimension ``dim``."""
    return {g.name for g in fxprune.channel_groups(pm) for m in g.members
            if m.kind == "param" and m.name == f"{layer}.weight" and m.dim == dim}


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.bn2(self.b(F.relu(self.bn(self.a(x)))))
        return self.head(F.relu(x + y))


def test_residual_add_ties_both_operands():
    pm = prepared(Residual(), torch.randn(2, 3, 8, 8))
    assert group_of(pm, "stem") == group_of(pm, "b")
    assert group_of(pm, "a") != group_of(pm, "stem")
    assert group_sizes(pm) == [6, 8]
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.stem.out_channels == small.b.out_channels == 4
    assert small.bn2.num_features == 4 and small.head.in_channels == 4


def test_branch_gate_removes_the_whole_branch():
    pm = prepared(Residual(), torch.randn(2, 3, 8, 8))
    (branch,) = fxprune.branches(pm)
    assert "a" in branch.nodes and "b" in branch.nodes
    with torch.no_grad():
        pm.fxprune.gates[branch.name].zero_()
    small = assert_finalized_equals_masked(pm)
    assert not hasattr(small, "a") and not hasattr(small, "b")


def test_surviving_mask_and_gate_values_fold_into_weights():
    pm = prepared(Residual(), torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        for mask in pm.fxprune.masks.values():
            mask.uniform_(0.5, 1.5)
            mask[0] = 0
        pm.fxprune.gates["b0"].fill_(0.7)
    small = assert_finalized_equals_masked(pm)
    assert all(n.op != "get_attr" or not n.target.startswith("folded") for n in small.graph.nodes)


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.out = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        x = F.relu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.out(x * s)


def test_broadcast_mul_ties_squeeze_excitation_to_its_input():
    pm = prepared(SqueezeExcite(), torch.randn(2, 3, 9, 9))
    assert group_of(pm, "conv") == group_of(pm, "fc2")
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.fc2.out_channels == small.conv.out_channels == 4


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.out = nn.Conv2d(10, 3, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.out(F.relu(self.bn(y)))


def test_cat_keeps_each_input_its_own_group():
    pm = prepared(Concat(), torch.randn(1, 3, 6, 6))
    assert group_of(pm, "a") != group_of(pm, "b")
    assert group_sizes(pm) == [4, 6]
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.bn.num_features == 5 and small.out.in_channels == 5


class Split(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.left = nn.Conv2d(3, 3, 1)
        self.right = nn.Conv2d(5, 3, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        a, b = torch.split(y, [3, 5], dim=1)
        c = y[:, 2:6]
        return self.left(a) + self.right(b) + c.sum(dim=1, keepdim=True)


def test_split_and_slicing_follow_channel_offsets():
    pm = prepared(Split(), torch.randn(1, 3, 5, 5))
    zero_channels(pm, 0.5, seed=3)
    small = assert_finalized_equals_masked(pm)
    assert small.left.in_channels + small.right.in_channels < 8


class FlattenHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


def test_flatten_into_linear_removes_every_position_of_a_channel():
    pm = prepared(FlattenHead(), torch.randn(2, 3, 6, 6))
    assert group_sizes(pm) == [6]
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.fc.in_features == 3 * 16


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 6, 1)
        self.b = nn.Conv2d(4, 6, 1)
        self.out = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.out(y)


def test_channel_shuffle_ties_the_same_position_of_both_halves():
    pm = prepared(Shuffle(), torch.randn(1, 4, 3, 3))
    assert group_of(pm, "a") == group_of(pm, "b")
    assert group_sizes(pm) == [6]
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.a.out_channels == small.b.out_channels == 3


class ConvShuffle(nn.Module):
    """One conv's channels shuffled in two groups, with the group size computed at run time."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 1)
        self.out = nn.Conv2d(channels, 2, 1)

    def forward(self, x):
        y = F.gelu(self.conv(x))
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.out(y)


@pytest.mark.parametrize("channels", [2, 4, 6])
def test_channel_shuffle_sizes_computed_from_the_channel_count_follow_the_kept_layout(channels):
    # Found by the long fuzz run: with two channels and one pruned, the model's own ``c // 2``
    # is 0; with whole groups pruned, ``c // 2`` halves the wrong factor.
    x = torch.randn(2, 3, 4, 4)
    model = randomize(ConvShuffle(channels))
    for name in fxprune.prepare(model, x).fxprune.masks:
        pm = fxprune.prepare(model, x)
        with torch.no_grad():
            pm.fxprune.masks[name][0] = 0
        small = assert_finalized_equals_masked(pm)
        assert small.conv.out_channels == small.out.in_channels < channels
        assert small(torch.randn(3, 3, 6, 5)).shape == (3, 2, 6, 5)  # batch and resolution stay free


class Depthwise(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        self.bn = nn.BatchNorm2d(8)
        self.project = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.project(F.relu(self.bn(self.grouped(F.relu(self.expand(x))))))


def test_depthwise_conv_ties_input_and_output_channels():
    pm = prepared(Depthwise(groups=8), torch.randn(1, 3, 5, 5))
    assert group_of(pm, "expand") == group_of(pm, "grouped")
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.grouped.groups == small.grouped.in_channels == small.grouped.out_channels == 4


def test_an_atom_refined_into_one_factor_becomes_that_factor_frozen_or_not():
    from fxprune.core.atoms import AtomTable

    atoms = AtomTable()
    outputs, groups = atoms.new_space(2, "dw.weight:0"), atoms.new_space(2, "groups@dw")
    atoms.freeze(groups[1:], "reaches the output")
    atoms.refine(outputs, [groups])  # a depthwise convolution: one group per channel, one channel per group
    assert not atoms.refined  # a union, so later unions with these channels take the fast path
    assert atoms.leaves(outputs[0]) == atoms.leaves(groups[0]) and len(atoms.leaves(outputs[0])) == 1
    assert atoms.leaves(outputs[1]) == () and atoms.frozen_reason(int(outputs[1, 0])) == "reaches the output"


def test_grouped_conv_prunes_whole_groups_and_positions_within_groups():
    pm = prepared(Depthwise(groups=2), torch.randn(1, 3, 5, 5))
    assert group_sizes(pm) == [2, 4, 4]  # groups, input position in a group, output position in a group
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.grouped.groups == 1 and small.grouped.in_channels == 2


class MismatchedGroups(nn.Module):
    """3 groups of 2 outputs feeding 2 groups of 3 inputs: the two products do not line up."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 9, 1)
        self.b = nn.Conv2d(9, 6, 1, groups=3)
        self.c = nn.Conv2d(6, 2, 1, groups=2)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        y = self.c(F.gelu(self.b(F.gelu(self.a(x)))))
        return self.fc(F.adaptive_avg_pool2d(F.gelu(y), 1).flatten(1))


def test_grouped_convs_whose_groups_do_not_line_up_never_lose_a_whole_layer():
    # Found by the long fuzz run: tying the rows left one channel that every input of c
    # depended on; switching it off removed the layer (a ZeroDivisionError in finalize).
    x = torch.randn(2, 1, 4, 4)
    model = randomize(MismatchedGroups())
    for group in fxprune.channel_groups(fxprune.prepare(model, x)):
        for i in range(group.size if group.size > 1 else 0):
            pm = fxprune.prepare(model, x)
            with torch.no_grad():
                pm.fxprune.masks[group.name][i] = 0
            small = assert_finalized_equals_masked(pm)
            assert min(small.b.out_channels, small.c.in_channels, small.c.out_channels) > 0


class LayerScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.gamma = nn.Parameter(torch.rand(6, 1, 1) + 0.5)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.out(self.gamma * self.conv(x))


def test_per_channel_parameter_used_in_the_graph_is_sliced():
    pm = prepared(LayerScale(), torch.randn(1, 3, 4, 4))
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.gamma.shape == (3, 1, 1)


class PassThrough(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = F.max_pool2d(F.gelu(self.conv(x)), 2)
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear")
        y = F.pad(F.dropout(y, 0.3, self.training), (1, 1, 1, 1))
        return self.out(F.avg_pool2d(y, 2))


def test_pooling_interpolation_padding_dropout_and_activations_pass_channels_through():
    pm = prepared(PassThrough(), torch.randn(1, 3, 10, 10))
    assert group_sizes(pm) == [6]
    zero_channels(pm, 0.5)
    assert_finalized_equals_masked(pm)


class Attention(nn.Module):
    def __init__(self, batch_first=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)

    def forward(self, x):
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.fc2(F.gelu(self.fc1(y)))


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_heads_and_head_dims_are_prunable(batch_first):
    pm = prepared(Attention(batch_first), torch.randn(2, 5, 16))
    sizes = group_sizes(pm)
    assert 4 in sizes and 32 in sizes  # heads, MLP hidden
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.fc1.out_features == 16


class Normalised(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 12)
        self.norm = nn.LayerNorm(12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


def test_layer_norm_freezes_its_channels_unless_approximate():
    pm = prepared(Normalised(), torch.randn(4, 8))
    assert group_sizes(pm) == []
    rows = {r.layer: r for r in fxprune.report.layer_rows(pm)}
    assert any("LayerNorm" in why for why in rows["fc1.weight"].frozen)
    pm = prepared(Normalised(), torch.randn(4, 8), approximate_norms=True)
    assert group_sizes(pm) == [12]
    zero_channels(pm, 0.5)
    with pytest.warns(UserWarning, match="approximate_norms"):
        small = fxprune.finalize(pm)
    assert small.norm.normalized_shape == (6,) and small.fxprune_equivalence_error > 0


def test_inputs_and_outputs_are_never_pruned():
    pm = prepared(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)), torch.randn(2, 5))
    assert group_sizes(pm) == [7]
    rows = {r.layer: r for r in fxprune.report.layer_rows(pm)}
    assert rows["2.weight"].prunable == 0 and rows["2.weight"].reaches_output


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.out(torch.fft.fft(self.conv(x)).real)


def test_unknown_op_is_a_barrier_with_a_reason_and_strict_raises():
    pm = prepared(Unknown(), torch.randn(1, 3, 4, 4))
    assert group_sizes(pm) == []
    (barrier,) = pm.fxprune_state.barriers
    assert "fft" in barrier.op and "no rule" in barrier.reason
    with pytest.raises(fxprune.UnsupportedOpError, match="fft") as e:
        prepared(Unknown(), torch.randn(1, 3, 4, 4), strict=True)
    # prepare traces without source lines (faster) and traces again to name the user's line
    assert "test_rules.py" in str(e.value) and "torch.fft.fft(self.conv(x))" in str(e.value)


class Contract(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(6, 8)
        self.k = nn.Linear(6, 8)
        self.v = nn.Linear(6, 10)
        self.o = nn.Linear(10, 6)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        a = torch.einsum("bid,bjd->bij", q, k).softmax(-1)
        b = torch.softmax(q @ k.transpose(1, 2), dim=-1)
        c = F.scaled_dot_product_attention(q, k, v)
        return self.o(a @ v + b @ v + c)


def test_contractions_tie_query_and_key_channels():
    pm = prepared(Contract(), torch.randn(2, 4, 6))
    assert group_of(pm, "q") == group_of(pm, "k")
    assert group_of(pm, "v") != group_of(pm, "q")
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.q.out_features == small.k.out_features == 4


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x, y):
        return self.out(self.conv(x)) + self.out(self.conv(y))


def test_module_called_twice_shares_one_group_and_two_inputs_work():
    pm = prepared(Shared(), torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3))
    assert group_sizes(pm) == [6]
    zero_channels(pm, 0.5)
    assert_finalized_equals_masked(pm)


def test_dependency_graph_links_producer_and_consumer_of_a_channel():
    pm = prepared(Residual(), torch.randn(1, 3, 8, 8))
    G = fxprune.dependency_graph(pm)
    (g,) = group_of(pm, "a")
    unit = ("channel", g, 2)
    assert G.has_edge(("param", "a.weight", 0, 2), unit)
    assert G.has_edge(("param", "b.weight", 1, 2), unit)
    assert G.has_edge(("param", "bn.running_mean", 0, 2), unit)


class TwoMaskedDims(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(4, 5)
        self.out = nn.Linear(1, 2)

    def forward(self, x):
        y = self.a(x).unsqueeze(2) * self.b(x).unsqueeze(1)  # [N, 6, 5]: two channel dimensions
        return self.out(y.sum(dim=(1, 2)).unsqueeze(1))


def test_one_op_consuming_two_channel_dimensions_gets_two_masks():
    pm = prepared(TwoMaskedDims(), torch.randn(3, 4))
    assert group_sizes(pm) == [5, 6]
    zero_channels(pm, 0.5)
    with torch.no_grad():
        for mask in pm.fxprune.masks.values():
            mask[mask != 0] = 0.5
    small = assert_finalized_equals_masked(pm)
    assert small.a.out_features == 3


class InPlaceAfterJoin(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.relu = nn.ReLU(inplace=True)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.out(self.relu(x + self.branch(x)))


def test_removed_branch_keeps_training_when_an_in_place_op_followed_the_join():
    pm = prepared(InPlaceAfterJoin(), torch.randn(2, 3, 5, 5))
    with torch.no_grad():
        pm.fxprune.gates["b0"].zero_()
    small = assert_finalized_equals_masked(pm)
    small.train()
    small(torch.randn(2, 3, 5, 5)).sum().backward()  # the ReLU no longer writes into the stem's output
