"""CIFAR-style residual networks: the demo's model, the benchmarks' ResNet-20/56, test models.

He et al.'s CIFAR ResNet (2016, section 4.2): a 3x3 stem, three stages of ``n`` basic
blocks (stride 2 at the start of stages 2 and 3 by default), global average pooling and
a linear classifier; depth ``6n + 2``. Where a block changes shape its shortcut is a 1x1
convolution with BatchNorm (option B), so every channel of the residual stream is the
output of a layer and can be pruned; every other block's residual branch can be removed
whole.

    stem ── [block]xn ── [block]xn ── [block]xn ── pool ── fc
             16 ch        32 ch        64 ch

Example:
    >>> small_resnet()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut (identity, or 1x1 conv + BN), then ReLU.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution and of the projection.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet of depth ``6n + 2`` with option-B shortcuts.

    Args:
        blocks_per_stage: ``n``.
        num_classes: classifier outputs.
        widths: channels of the three stages.
        strides: stride of each stage's first block.

    Example:
        >>> CifarResNet(3)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64),
                 strides: Sequence[int] = (1, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride=strides[i] if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions; BatchNorm to weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def small_resnet(num_classes: int = 10) -> CifarResNet:
    """The demo's model: 14 layers, every stage strided (32x32 in, 4x4 at the end).

    0.18M parameters and 7.1M MACs for a 32x32 image: cheap enough to train on two CPU
    cores in a minute or two. Usable as a command-line model spec:
    ``fxprune inspect fxprune.demo.cifar_resnet:small_resnet --input-shape 3,32,32``.
    """
    return CifarResNet(2, num_classes, strides=(2, 2, 2))
