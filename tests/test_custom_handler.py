"""A user supports their own layer by registering one handler, from outside the package."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_finalized_equals_masked, randomize, zero_channels

import fxprune
from fxprune.core.rules import unregister


class GainConv(nn.Module):
    """A 3x3 convolution with a learned gain per filter, written in a way torch.fx cannot trace into
    (the padding is chosen by Python control flow on the input's values)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3) * 0.2)
        self.gain = nn.Parameter(torch.ones(out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x):
        if bool(x.abs().sum() >= 0):  # data-dependent: a TraceError if fx traced into it
            x = F.pad(x, (1, 1, 1, 1))
        return F.conv2d(x, self.weight * self.gain.view(-1, 1, 1, 1), self.bias)


class GainConvHandler(fxprune.LayerHandler):
    """Everything fxprune needs to know about GainConv."""

    def flow(self, ctx):
        x = ctx.layout(0)
        w = ctx.param("weight", roles={0: "out", 1: "in"}, tie={1: x[1]})
        ctx.param("gain", roles={0: "out"}, tie={0: w[0]})
        ctx.param("bias", roles={0: "out"}, tie={0: w[0]})
        ctx.consume(0, 1)  # it mixes its input channels: their mask goes on its input
        return (x[0], w[0], *ctx.layout(0)[2:])

    def resize_module(self, module, in_channels):
        module.out_channels, module.in_channels = module.weight.shape[:2]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.custom = GainConv(8, 12)
        self.bn2 = nn.BatchNorm2d(12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.custom(F.relu(self.bn(self.stem(x))))
        return self.head(F.relu(self.bn2(x)).mean((2, 3)))


@pytest.fixture
def registered():
    fxprune.register_handler(GainConv)(GainConvHandler)
    yield
    unregister(GainConv)


def test_without_a_handler_the_custom_layer_cannot_be_traced():
    hint = r"inside module: custom \(GainConv\)(.|\n)*register_handler\(GainConv\)"
    with pytest.raises(fxprune.TraceError, match=hint):
        fxprune.prepare(Net(), torch.randn(2, 3, 8, 8))


def test_one_handler_makes_a_custom_layer_prunable_exactly(registered):
    model = randomize(Net().eval())
    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(model, x)
    groups = {g.name: g for g in fxprune.channel_groups(pm)}
    custom = [g for g in groups.values() if any(str(m).startswith("custom.weight:0") for m in g.members)]
    assert len(custom) == 1 and custom[0].size == 12  # its filters, gains and biases are one group
    assert {str(m) for m in custom[0].members} >= {"custom.weight:0 (out)", "custom.gain:0 (out)",
                                                   "custom.bias:0 (out)", "bn2.weight:0 (channel)"}
    zero_channels(pm, 0.5)
    small = assert_finalized_equals_masked(pm)
    layer = small.get_submodule("custom")
    assert isinstance(layer, GainConv) and layer.out_channels == 6 and layer.in_channels == 4
    assert layer.weight.shape == (6, 4, 3, 3) and layer.gain.shape == (6,)
    torch.testing.assert_close(small(torch.randn(3, 3, 8, 8)).shape, torch.Size([3, 5]))
