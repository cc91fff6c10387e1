"""prepare and finalize as a user meets them: what they promise, and how they fail."""

import copy
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from helpers import assert_finalized_equals_masked, randomize, zero_channels
from test_rules import Residual

import fxprune


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(y + self.bn2(self.conv2(y)))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def net():
    return randomize(Net())


def snapshot(model):
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}, model.training


def test_prepare_and_finalize_never_change_the_callers_model():
    model = net()
    before = snapshot(model)
    pm = fxprune.prepare(model, torch.randn(2, 3, 8, 8))
    torch.optim.SGD(pm.parameters(), lr=0.1).zero_grad()
    pm.train()
    pm(torch.randn(2, 3, 8, 8)).sum().backward()
    torch.optim.SGD(pm.parameters(), lr=0.1).step()
    zero_channels(pm, 0.5)
    fxprune.finalize(pm)
    after = snapshot(model)
    assert before[0] == after[0] and before[2] == after[2]
    for k, v in before[1].items():
        assert torch.equal(v, after[1][k]), k


def test_prepared_model_computes_what_the_model_computes_in_both_modes():
    model = net()
    x = torch.randn(4, 3, 8, 8)
    pm = fxprune.prepare(model, x)
    for mode in (False, True):
        model.train(mode)
        pm.train(mode)
        torch.testing.assert_close(pm(x), model(x), rtol=0, atol=0)


def test_finalize_leaves_the_prepared_models_code_and_masks_as_they_were():
    pm = fxprune.prepare(net(), torch.randn(2, 3, 8, 8))
    zero_channels(pm, 0.5)
    code, masks = pm.code, {k: v.clone() for k, v in pm.state_dict().items()}
    fxprune.finalize(pm, threshold=0.0)
    assert pm.code == code
    assert all(torch.equal(v, pm.state_dict()[k]) for k, v in masks.items())


def test_finalized_model_shares_no_tensor_with_the_prepared_one():
    pm = fxprune.prepare(net(), torch.randn(2, 3, 8, 8))
    zero_channels(pm, 0.25)
    small = fxprune.finalize(pm)
    before = {k: v.clone() for k, v in pm.state_dict().items()}
    with torch.no_grad():  # tensors may share memory copy-on-write, but a write never reaches the other side
        for t in list(small.parameters()) + list(small.buffers()):
            t.add_(1)
    assert all(torch.equal(v, pm.state_dict()[k]) for k, v in before.items())


def test_kept_weights_whose_mask_is_one_come_out_bit_identical():
    model = net()
    pm = fxprune.prepare(model, torch.randn(2, 3, 8, 8))
    group = next(g for g in fxprune.channel_groups(pm) if any(p.name == "conv1.weight" for p in g.producers))
    with torch.no_grad():
        pm.fxprune.masks[group.name][[1, 5]] = 0
    small = fxprune.finalize(pm)
    keep = [0, 2, 3, 4, 6, 7]
    assert torch.equal(small.conv1.weight, model.conv1.weight[keep])
    assert torch.equal(small.bn1.running_var, model.bn1.running_var[keep])


def test_masks_shrunk_together_fold_their_common_scale_into_the_next_batchnorm():
    # l1 shrinks a group's masks together; folded into conv2's weight, a scale of 0.05 in
    # front of bn2 would multiply conv2's effective learning rate by 400 in fine-tuning.
    model = net()
    pm = fxprune.prepare(model, torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        for mask in pm.fxprune.masks.values():
            mask.copy_(torch.linspace(0.01, 0.05, mask.numel()))
            mask[0] = 0
    small = assert_finalized_equals_masked(pm)
    # conv2's input column with the largest mask keeps its weights; bn2 carries the scale
    assert torch.equal(small.conv2.weight[:, -1], model.conv2.weight[1:, -1])  # channel 0 of the group went
    assert small.bn2.eps == pytest.approx(model.bn2.eps / 0.05**2)
    # exact in train mode too: same outputs, and the running statistics stay in step
    x = torch.randn(4, 3, 8, 8)
    masked, pruned = copy.deepcopy(pm).train(), copy.deepcopy(small).train()
    torch.testing.assert_close(pruned(x), masked(x), rtol=1e-4, atol=1e-5)
    masked.eval(), pruned.eval()
    torch.testing.assert_close(pruned(x), masked(x), rtol=1e-4, atol=1e-5)


def test_threshold_removes_small_masks_and_rejects_nonsense():
    pm = fxprune.prepare(net(), torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        for mask in pm.fxprune.masks.values():
            mask.copy_(torch.linspace(0.01, 1.0, mask.numel()))
    small = assert_finalized_equals_masked(pm, threshold=0.3)
    assert small.conv1.out_channels < 8
    with pytest.raises(fxprune.FxPruneError, match="threshold must be a number >= 0"):
        fxprune.finalize(pm, threshold=-1.0)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_masks_are_refused(value):
    pm = fxprune.prepare(net(), torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        pm.fxprune.masks["g0"][0] = value
    with pytest.raises(fxprune.MaskError, match="mask g0 holds 1 NaN or infinite"):
        fxprune.finalize(pm)


def test_emptying_a_group_is_refused_with_what_to_do():
    pm = fxprune.prepare(net(), torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        pm.fxprune.masks["g0"].zero_()
    with pytest.raises(fxprune.MaskError, match="would remove all 8 channels") as e:
        fxprune.finalize(pm)
    assert "keep at least one channel of g0" in str(e.value)


def test_emptied_group_inside_a_removed_branch_is_fine():
    pm = fxprune.prepare(randomize(Residual()), torch.randn(2, 3, 8, 8))
    (branch,) = fxprune.branches(pm)
    (inner,) = [g for g in fxprune.channel_groups(pm) if any(p.name == "a.weight" for p in g.producers)]
    with torch.no_grad():
        pm.fxprune.masks[inner.name].zero_()
    with pytest.raises(fxprune.MaskError, match=f"or zero gate {branch.name} to remove its whole branch"):
        fxprune.finalize(pm)
    with torch.no_grad():
        pm.fxprune.gates[branch.name].zero_()
    small = assert_finalized_equals_masked(pm)
    assert not hasattr(small, "a")


def test_finalize_wants_a_prepared_model():
    with pytest.raises(fxprune.NotPreparedError, match="expected a model returned by fxprune.prepare"):
        fxprune.finalize(net())


def test_ratio_outside_zero_one_is_refused():
    pm = fxprune.prepare(net(), torch.randn(2, 3, 8, 8))
    for ratio in (-0.1, 1.0, float("nan")):
        with pytest.raises(fxprune.FxPruneError, match=r"ratio must lie in \[0, 1\)"):
            fxprune.prune_by_importance(pm, ratio)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.gate = Gate()
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(self.gate(self.conv(x)))


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return x * 2
        return x


def test_untraceable_model_names_the_source_line_and_the_way_out():
    with pytest.raises(fxprune.TraceError) as e:
        fxprune.prepare(DataDependent(), torch.randn(1, 3, 4, 4))
    message = str(e.value)
    assert "test_api.py" in message and "if x.sum() > 0" in message
    assert 'leaf_modules=["gate"]' in message
    pm = fxprune.prepare(DataDependent(), torch.randn(1, 3, 4, 4), fxprune.PruneConfig(leaf_modules=["gate"]))
    assert fxprune.channel_groups(pm) == []  # the leaf froze the channels around it
    assert pm.fxprune_state.barriers[0].node == "gate"


def test_example_inputs_are_inferred_for_image_models_only():
    pm = fxprune.prepare(torchvision.models.resnet18())
    assert pm.fxprune_state.example_inputs[0].shape == (1, 3, 224, 224)
    with pytest.raises(fxprune.FxPruneError, match="pass example_inputs"):
        fxprune.prepare(nn.Sequential(nn.Linear(4, 4)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_dtypes(dtype):
    model = net().to(dtype)
    pm = fxprune.prepare(model, torch.randn(2, 3, 8, 8, dtype=dtype))
    assert pm.fxprune.masks["g0"].dtype == dtype
    zero_channels(pm, 0.5)
    tol = {torch.float64: 1e-9, torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
    small = assert_finalized_equals_masked(pm, rtol=tol, atol=tol)
    assert small.conv1.weight.dtype == dtype


def test_frozen_parameters_stay_frozen():
    model = net()
    model.conv1.weight.requires_grad_(False)
    pm = fxprune.prepare(model, torch.randn(2, 3, 8, 8))
    zero_channels(pm, 0.5)
    small = fxprune.finalize(pm)
    assert not small.conv1.weight.requires_grad and small.conv2.weight.requires_grad


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(torch.relu(self.a(x)) + torch.relu(self.b(x)))


def test_tied_parameters_stay_tied():
    pm = fxprune.prepare(randomize(Tied()), torch.randn(3, 6))
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.a.weight is small.b.weight and small.a.out_features == 3


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        z = self.out(y)
        y.relu_()
        return z + self.out(y)


def test_in_place_ops_keep_their_order():
    pm = fxprune.prepare(randomize(InPlace()), torch.randn(1, 3, 4, 4))
    zero_channels(pm, 0.5)
    assert_finalized_equals_masked(pm)


class AugmentedAssignments(nn.Module):
    """``+=`` three ways: into a BatchNorm's output (may stay in place), into a ReLU's and into a
    slice of a tensor read again later (must not: the ReLU's backward reads its output, and the
    slice is a view of ``y``; read after its add, y would be refused, see ReadThroughView)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        out = self.bn(self.conv(x))
        out += x
        y = self.relu(self.conv(out))
        y += out
        head = self.head(y)  # read before the slice's add writes into y
        part = y[:, :3]
        part += 1.0
        return head + part.mean()


def test_augmented_assignment_is_in_place_again_only_where_nothing_can_tell():
    pm = fxprune.prepare(randomize(AugmentedAssignments()), torch.randn(2, 3, 5, 5))
    assert sum(bool(n.meta.get("in_place")) for n in pm.graph.nodes) == 3  # traced as a + b, marked
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    in_place = [n for n in small.graph.nodes if n.target is operator.iadd]
    assert [n.args[0].target for n in in_place] == ["bn"]
    assert "bn += " in small.code
    small.train()
    small(torch.randn(2, 3, 5, 5)).sum().backward()  # BatchNorm's backward does not read its output
    assert small.conv.weight.grad is not None


class ReadThroughAlias(nn.Module):
    """``y += 1`` where the old ``y`` is read afterwards through a list: eager sees the sum there."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        kept = [y]
        n = y.size(1)  # a shape read is not affected
        n += 1  # not a tensor: rebound, as in the graph
        y += n
        return self.out(kept[0]) + y.mean()


def test_in_place_op_read_through_another_reference_is_refused():
    with pytest.raises(fxprune.FxPruneError) as info:
        fxprune.prepare(ReadThroughAlias(), torch.randn(1, 3, 4, 4))
    message = str(info.value)
    assert "'conv += ...'" in message and "reads afterwards through another reference" in message
    assert "y += n" in message  # the user's source line
    assert "x = x.clone(); x += y" in message


class ReadThroughView(nn.Module):
    """An in-place add and a view of the same memory read after it: the eager model sees the sum."""

    def __init__(self, case):
        super().__init__()
        self.case = case
        self.conv = nn.Conv2d(3, 4, 1)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        if self.case == "view read after":
            flat = y.flatten(1)
            y += 1
            return self.out(y) + flat.sum()
        if self.case == "base read after":
            part = y[:, :2]
            part += 1
            return self.out(y)
        if self.case == "tuple elements":  # the graph and the eager model agree: max returns new tensors
            values, indices = y.max(dim=1)
            values += 1
            return self.out(y) + values.mean() + indices.float().mean()
        flat = y.flatten(1)  # "view read before": they agree too
        total = flat.sum()
        width = flat.size(1)
        y += 1
        return self.out(y) + total + width


@pytest.mark.parametrize("case", ["view read after", "base read after"])
def test_in_place_op_read_through_a_view_is_refused(case):
    with pytest.raises(fxprune.FxPruneError) as info:
        fxprune.prepare(ReadThroughView(case), torch.randn(1, 3, 4, 4))
    assert "which may share its memory" in str(info.value)


@pytest.mark.parametrize("case", ["view read before", "tuple elements"])
def test_in_place_op_where_nothing_reads_the_old_memory_is_fine(case):
    model, x = ReadThroughView(case).eval(), torch.randn(1, 3, 4, 4)
    pm = fxprune.prepare(model, x)
    torch.testing.assert_close(pm(x), model(x))


def test_segmentation_model_with_dict_output():
    model = randomize(torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None,
                                                                               weights_backbone=None).eval())
    x = torch.randn(1, 3, 64, 64)
    pm = fxprune.prepare(model, x)
    assert isinstance(pm(x), dict)
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert set(small(x)) == {"out"}
    assert fxprune.count(small, x).macs < fxprune.count(model, x).macs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda():
    model = net().cuda()
    pm = fxprune.prepare(model, torch.randn(2, 3, 8, 8, device="cuda"))
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small.conv1.weight.is_cuda


def test_the_self_check_runs_in_full_float32_and_restores_the_settings():
    from fxprune.core.finalize.verify import ieee_float32

    conv = torch.backends.cudnn.conv if hasattr(torch.backends.cudnn, "conv") else None
    if conv is None or not hasattr(conv, "fp32_precision"):
        pytest.skip("torch < 2.9: the legacy allow_tf32 flags")
    before = conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    with ieee_float32():
        assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_with_tf32_convolutions():
    """cuDNN's TF32 default used to fail the self-check by rounding alone (1.1e-4 on a CIFAR ResNet-20)."""
    model = randomize(torchvision.models.resnet18(num_classes=10)).cuda()
    x = torch.randn(4, 3, 64, 64, device="cuda")
    pm = fxprune.prepare(model, x)
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small(x).shape == (4, 10)


class TwoInTwoOut(nn.Module):
    """Two inputs joined by a residual add, a tuple of two outputs (one of them mid-network)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(5, 6, 1)
        self.mid = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x, y):
        h = torch.relu(self.a(x) + self.b(y))
        return self.head(torch.relu(self.mid(h))), h.mean((2, 3))


def test_several_inputs_and_outputs():
    x, y = torch.randn(2, 3, 6, 6), torch.randn(2, 5, 6, 6)
    pm = fxprune.prepare(randomize(TwoInTwoOut()), (x, y))
    groups = fxprune.channel_groups(pm)
    assert len(groups) == 1  # mid's outputs; h reaches an output and stays whole
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    out, h = small(x, y)
    assert out.shape == (2, 2, 6, 6) and h.shape == (2, 6)
    assert small.mid.out_channels == 3 and small.a.out_channels == 6


def test_count_sees_the_projections_of_multihead_attention():
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    macs = fxprune.count(_SelfAttention(attention), x).macs
    projections = 2 * 5 * 16 * (3 * 16 + 16)
    assert macs >= projections
    pm = fxprune.prepare(_SelfAttention(attention), x)
    assert fxprune.count(fxprune.finalize(pm), x).macs == macs  # the lowered graph counts the same


class _SelfAttention(nn.Module):
    def __init__(self, attention):
        super().__init__()
        self.attention = attention

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


def test_finalize_leaves_the_prepared_models_modules_hooks_and_outputs_as_they_were():
    pm = fxprune.prepare(torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 32, 32))
    zero_channels(pm, 0.5)
    conv = pm.get_submodule("layer1.0.conv1")
    conv.register_forward_hook(lambda m, i, o: None)
    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in pm.state_dict().items()}
    with torch.no_grad():
        out = pm.eval()(x)
    small = fxprune.finalize(pm)
    assert conv.out_channels == 64 and len(conv._forward_hooks) == 1 and conv.weight.shape[0] == 64
    assert small.get_submodule("layer1.0.conv1") is not conv
    assert before.keys() == pm.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in pm.state_dict().items())
    assert hasattr(pm, "fxprune") and hasattr(pm, "fxprune_state") and not hasattr(small, "fxprune")
    with torch.no_grad():
        assert torch.equal(pm(x), out)
