"""CIFAR ResNet-20/56 (option-B shortcuts) and VGG-16-BN: shapes, sizes, init, fx tracing."""

import pytest
import torch
from torch import nn

from benchmarks.cifar_models import BasicBlock, CifarVGG, build_model, resnet20

# name: (exact parameter count here, published count, relative tolerance)
SIZES = {
    "resnet20": (272_474, 0.27e6, 0.02),  # He et al. 2016, Table 6 (option A)
    "resnet56": (855_770, 0.85e6, 0.02),
    "vgg16": (14_724_042, 14.7e6, 0.01),  # network slimming's VGG-16, one linear layer
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(SIZES))
def test_parameter_count_is_close_to_the_published_one(name):
    exact, published, tol = SIZES[name]
    count = n_params(build_model(name))
    assert count == exact
    assert abs(count - published) / published < tol


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "vgg16"])
def test_symbolic_trace_matches_eager(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(traced(x), expected, rtol=0, atol=0)
    assert expected.shape == (2, 10)
    assert not any(n.op == "call_module" and isinstance(traced.get_submodule(n.target), nn.Identity)
                   for n in traced.graph.nodes), "identity shortcuts should be plain edges"


def test_every_shape_changing_block_has_a_conv_bn_projection():
    blocks = [m for m in resnet20().modules() if isinstance(m, BasicBlock)]
    projected = [b for b in blocks if b.downsample is not None]
    assert len(blocks) == 9 and len(projected) == 2  # first block of stages 2 and 3
    for block in projected:
        conv, bn = block.downsample
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(bn, nn.BatchNorm2d)


def test_resnet_stage_widths_and_feature_map_sizes():
    model = resnet20()
    x = torch.randn(1, 3, 32, 32)
    shapes = []
    hooks = [getattr(model, f"layer{i}").register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
             for i in (1, 2, 3)]
    model(x)
    for h in hooks:
        h.remove()
    assert shapes == [(1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 8, 8)]


def test_vgg_features_end_at_512_by_1x1():
    model = CifarVGG()
    assert model.features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 512


def test_convolutions_get_kaiming_fan_out_init():
    torch.manual_seed(0)
    conv = build_model("vgg16").features[-4]  # last 512 -> 512 conv
    assert isinstance(conv, nn.Conv2d)
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
