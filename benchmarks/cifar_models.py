"""CIFAR-10 networks for the pruning benchmarks: ResNet-20/56 and VGG-16-BN.

ResNets follow He et al. 2016 ("Deep Residual Learning for Image
Recognition", section 4.2): a 3x3 stem of 16 channels, three stages of ``n``
BasicBlocks with 16, 32 and 64 channels (stride 2 at the start of stages 2
and 3), global average pooling and a linear classifier; depth ``6n + 2``.

Shortcuts are **option B** (a 1x1 convolution plus BatchNorm wherever the
shape changes), not the paper's CIFAR option A (identity with the extra
channels zero-padded and the map subsampled). Option A's padded channels are
constants, not the output of any layer, so the channel group that ties a
stage's residual stream together has members with no weights to remove: a
pruner can neither drop them nor keep the add consistent after slicing the
convolutions. Option B makes every residual channel the output of a
convolution, so whole residual groups can be pruned. It adds 2,752 parameters
to either net (ResNet-20: 0.272M, ResNet-56: 0.856M, against 0.27M and 0.85M
published).

VGG-16-BN is the CIFAR form of network slimming (Liu et al. 2017): cfg
``64,64,M,128,128,M,256x3,M,512x3,M,512x3,M``, every conv 3x3 + BN + ReLU,
then flatten and a single ``Linear(512, num_classes)`` (14.72M parameters).
We keep the single linear layer: after five poolings the map is 1x1, and a
512-512-10 head adds 0.26M parameters that pruning papers treat differently.

Initialisation: Kaiming normal (fan_out, ReLU) for convolutions; BatchNorm
weight 1 and bias 0; linear layers keep PyTorch's default (Kaiming uniform).
All models trace with ``torch.fx.symbolic_trace``.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from fxprune.demo.cifar_resnet import BasicBlock, CifarResNet, kaiming_init  # noqa: F401 (BasicBlock: re-exported)

VGG16_CFG: tuple[Union[int, str], ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs, network-slimming form.

    Args:
        cfg: conv widths, ``"M"`` for a 2x2 max-pool.
        num_classes: classifier outputs.

    Example:
        >>> CifarVGG((8, "M", 16, "M", 16, "M", 16, "M", 16, "M"))(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, cfg: Sequence[Union[int, str]] = VGG16_CFG, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                conv = nn.Conv2d(in_channels, v, 3, padding=1, bias=False)
                layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_channels, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (n = 3), option-B shortcuts: 272,474 parameters for 10 classes."""
    return CifarResNet(3, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (n = 9), option-B shortcuts: 855,770 parameters for 10 classes."""
    return CifarResNet(9, num_classes)


def vgg16_bn(num_classes: int = 10) -> CifarVGG:
    """VGG-16 with BatchNorm, CIFAR form, one linear classifier: 14,724,042 parameters."""
    return CifarVGG(VGG16_CFG, num_classes)


MODELS = {"resnet20": resnet20, "resnet56": resnet56, "vgg16": vgg16_bn}


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A model of :data:`MODELS` by name, e.g. ``build_model("resnet20")``."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes)
