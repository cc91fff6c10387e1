"""Shape-only propagation: stand-ins for the heavy ops must give the shapes and groups a real run gives."""

import pytest
import torch
import torch.nn as nn
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from fxprune.config import PruneConfig
from fxprune.core.prepare.group import resolve
from fxprune.core.prepare.lower import lower_modules
from fxprune.core.prepare.propagate import ChannelFlow
from fxprune.core.prepare.trace import trace
from fxprune.core.rules.layers import _zeros_like_conv


def flows(model, *inputs):
    gm = trace(model.eval(), PruneConfig())
    lower_modules(gm)
    return [ChannelFlow(gm, PruneConfig()).propagate(*inputs, shape_only=s) for s in (True, False)]


def signature(flow):
    index = resolve(flow)
    return [(g.size, sorted(str(m) for m in g.members)) for g in index.groups], flow.barriers


class Chain(nn.Module):
    """Convolutions of every padding kind, each followed by shape-keeping modules."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.SiLU()
        self.b = nn.Conv2d(8, 8, 4, padding="same", dilation=2, groups=4)
        self.drop = nn.Dropout(0.5)
        self.c = nn.Conv2d(8, 6, 3, padding="valid", padding_mode="circular")
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.act(self.bn(self.a(x)))
        y = self.drop(self.b(y)) + y
        return self.relu(self.c(y)).sum(dim=(2, 3))


@pytest.mark.parametrize("build, size", [(Chain, 13), (torchvision.models.resnet18, 64),
                                         (torchvision.models.mobilenet_v3_small, 64),
                                         (torchvision.models.efficientnet_b0, 64)])
def test_stand_ins_give_the_shapes_and_groups_of_a_real_run(build, size):
    fast, real = flows(build(), torch.randn(1, 3, size, size))
    assert fast.fake  # the stand-ins were used
    assert fast.shapes == real.shapes
    assert signature(fast) == signature(real)


def test_a_batch_norm_fed_the_wrong_shape_still_says_so():
    model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="4D"):
        flows(model, torch.randn(1, 3, 8))


@settings(max_examples=60, deadline=None)
@given(dims=st.integers(1, 3), size=st.integers(1, 9), kernel=st.integers(1, 4), stride=st.integers(1, 3),
       dilation=st.integers(1, 2), padding=st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid"])),
       batched=st.booleans())
def test_the_computed_convolution_shape_is_the_convolutions(dims, size, kernel, stride, dilation, padding, batched):
    if padding == "same":
        stride = 1
    conv = [nn.Conv1d, nn.Conv2d, nn.Conv3d][dims - 1](2, 3, kernel, stride=stride, dilation=dilation,
                                                         padding=padding)
    x = torch.randn(*([1] if batched else []), 2, *[size] * dims)
    try:
        expected = conv(x).shape
    except RuntimeError:  # too small for the kernel: the stand-in must not pretend otherwise
        assert _zeros_like_conv(x, conv) is None
        return
    assert _zeros_like_conv(x, conv).shape == expected
