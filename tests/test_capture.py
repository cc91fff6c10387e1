"""Capture by torch.export: the same pass as symbolic tracing, for models tracing cannot follow."""

import pytest
import torch
import torch.nn as nn
import torchvision
from families import FAMILIES
from helpers import assert_finalized_equals_masked, outputs, randomize, zero_channels

import fxprune
from fxprune.core.ir import ExampleInputs, state_of
from fxprune.testing import small_input

SAME_GROUPS = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5", "regnet_y_400mf",
               "convnext_tiny", "googlenet", "swin_t"]


def _structure(pm):
    return sorted((g.size, tuple(sorted(str(m) for m in g.members if m.kind == "param")))
                  for g in fxprune.channel_groups(pm))


@pytest.mark.parametrize("name", SAME_GROUPS)
def test_both_front_ends_find_the_same_channel_groups(name):
    model = randomize(torchvision.models.get_model(name).eval())
    x = small_input(name)
    traced = fxprune.prepare(model, x, fxprune.PruneConfig(capture="fx"))
    exported = fxprune.prepare(model, x, fxprune.PruneConfig(capture="export"))
    assert state_of(traced).capture == "fx" and state_of(exported).capture == "export"
    assert _structure(exported) == _structure(traced)
    assert len(fxprune.branches(exported)) >= len(fxprune.branches(traced))
    zero_channels(exported, 0.5)
    small = assert_finalized_equals_masked(exported)
    assert small(small_input(name, batch=3)).shape[0] == 3  # the batch stayed dynamic


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_prunes_half_its_channels_exactly_and_takes_other_shapes(family):
    case = FAMILIES[family]()
    pm = fxprune.prepare(randomize(case.model), case.example)
    if family != "swin3d_t":  # symbolic tracing takes swin3d_t; every other family needs torch.export
        assert state_of(pm).capture == "export"
    assert fxprune.prunable_share(pm) > 0.5, fxprune.report.frozen_table(pm)
    fxprune.prune_by_importance(pm, 0.5, importance="l1", scope="local")
    small = assert_finalized_equals_masked(pm)
    for other in case.others:  # another batch size, and for token models another length
        with torch.no_grad():
            got, want = outputs(small, ExampleInputs.of(other)), outputs(pm, ExampleInputs.of(other))
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * max(1.0, float(w.abs().max())))


def test_grouped_query_attention_loses_whole_key_value_heads_with_their_query_heads():
    case = FAMILIES["hf_llama"]()
    pm = fxprune.prepare(randomize(case.model), case.example)
    fxprune.prune_by_importance(pm, 0.5, importance="l1", scope="local")
    small = assert_finalized_equals_masked(pm)
    attention = small.get_submodule("model.layers.0.self_attn")
    q, k, v = (getattr(attention, f"{p}_proj").weight.shape[0] for p in "qkv")
    assert k == v and k < 32 and q == 2 * k  # 4 query heads over 2 key/value heads of 16: the ratio stays


def test_tied_embedding_and_head_share_their_channels():
    case = FAMILIES["hf_gpt2"]()
    pm = fxprune.prepare(case.model, case.example)
    records = [r for r in state_of(pm).index.params if ("lm_head", "weight") in r.refs]
    assert len(records) == 1 and ("transformer.wte", "weight") in records[0].refs


class Lengthwise(nn.Module):
    """Control flow on a size: torch.fx cannot trace it, torch.export can."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Linear(8, 2)

    def forward(self, x, scale=None):
        y = torch.relu(self.a(x))
        if y.shape[-1] > 4:
            y = self.b(y)
        y = y.mean((2, 3))
        return self.head(y if scale is None else y * scale)


def test_auto_falls_back_to_export_and_says_so():
    model = randomize(Lengthwise().eval())
    with pytest.raises(fxprune.TraceError):
        fxprune.prepare(model, torch.randn(1, 3, 8, 8), fxprune.PruneConfig(capture="fx"))
    pm = fxprune.prepare(model, torch.randn(1, 3, 8, 8))
    assert state_of(pm).capture == "export" and state_of(pm).dynamic == {"x": [0]}
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    assert small(torch.randn(4, 3, 8, 8)).shape == (4, 2)


def test_keyword_example_inputs():
    model = randomize(Lengthwise().eval())
    example = {"x": torch.randn(2, 3, 8, 8), "scale": torch.full((1, 8), 2.0)}
    pm = fxprune.prepare(model, example)
    assert state_of(pm).example_kwargs.keys() == {"x", "scale"}
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    torch.testing.assert_close(small(**example), pm(**example))


def test_batch_norm_in_an_exported_model_follows_train_and_eval():
    model = randomize(torchvision.models.resnet18(num_classes=4).eval())
    pm = fxprune.prepare(model, torch.randn(2, 3, 32, 32), fxprune.PruneConfig(capture="export"))
    assert isinstance(pm.get_submodule("layer1.0.bn1"), nn.BatchNorm2d)  # the module is called again
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        pm.train()
        model.train()
        torch.testing.assert_close(pm(x), model(x))


def test_a_model_neither_capture_takes_gets_a_clear_error():
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=64,
                                                                  max_size=64, num_classes=3).eval()
    with pytest.raises(fxprune.TraceError) as e:
        fxprune.prepare(model, ([torch.randn(3, 64, 64)],))
    message = str(e.value)
    assert "torch.export could not capture" in message and "depends on tensor values" in message
    assert "batched_nms" in message and "model.backbone" in message


def test_an_unknown_capture_is_refused():
    with pytest.raises(fxprune.FxPruneError, match="capture='jit'"):
        fxprune.prepare(nn.Conv2d(3, 3, 1), torch.randn(1, 3, 4, 4), fxprune.PruneConfig(capture="jit"))


def test_an_input_of_a_size_the_export_did_not_keep_dynamic_is_refused_not_miscomputed():
    model = randomize(Lengthwise().eval())
    pm = fxprune.prepare(model, torch.randn(2, 3, 8, 8))  # width 8 takes the branch through self.b
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    for m in (pm, small):
        with pytest.raises(AssertionError, match="Guard failed"):
            m(torch.randn(2, 3, 8, 2))  # at width 2 the model itself would skip self.b


class Scaled(nn.Module):
    """A module whose forward takes an argument beside its input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x, scale: float = 1.0):
        return self.conv(x) * scale


class CallsScaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.scaled, self.head = nn.Conv2d(3, 4, 1), Scaled(), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.scaled(self.stem(x), scale=3.0))


def test_a_module_called_with_more_than_its_input_is_not_lifted(monkeypatch):
    from fxprune.core.rules import registry
    from fxprune.core.rules.elementwise import Unary

    monkeypatch.setitem(registry._MODULES, Scaled, Unary())  # a handler, so lifting is considered
    model = randomize(CallsScaled().eval())
    x = torch.randn(2, 3, 4, 4)
    pm = fxprune.prepare(model, x, fxprune.PruneConfig(capture="export"))
    assert not any(n.op == "call_module" and n.target == "scaled" for n in pm.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(pm(x), model(x))  # scale=3.0 kept
