"""ImageNet-style ResNet-18/34 adapted to 32x32 CIFAR inputs.

Layout of the widely used CIFAR ResNet of the pytorch-cifar collection (Kuang Liu), which the ARD, RSLAD and
Fair-ARD code bases train: a 3x3 stride-1 stem without max-pool, four stages of basic blocks (64-128-256-512,
strides 1-2-2-2), 1x1-conv + BN projection shortcuts, global average pooling and a ``linear`` classifier.
State-dict keys (``conv1``, ``bn1``, ``layer1..4.<i>.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}``, ``linear``)
follow that code so its checkpoints load strictly. Default PyTorch initialisation, as there.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._common import CifarNet, conv_bn, make_stages, relu, shortcut_conv_bn
from ._registry import register_model

__all__ = ["BasicBlock", "ResNet", "resnet18", "resnet34"]


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # An empty Sequential (no keys) for identity, as in the original, keeps the checkpoint naming.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = relu(conv_bn(self.conv1, self.bn1, x))
        out = conv_bn(self.conv2, self.bn2, out)
        return relu(out + shortcut_conv_bn(self.shortcut, x))


class ResNet(CifarNet):
    classifier_name = "linear"

    def __init__(self, num_blocks: tuple[int, ...], num_classes: int = 10, mean=None, std=None):
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages = make_stages(BasicBlock, 64, (64, 128, 256, 512), num_blocks)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = relu(conv_bn(self.conv1, self.bn1, self.normalize(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@register_model
def resnet18(num_classes: int = 10, **kwargs) -> ResNet:
    """ResNet-18 for CIFAR (11.17M parameters at 10 classes)."""
    return ResNet((2, 2, 2, 2), num_classes, **kwargs)


@register_model
def resnet34(num_classes: int = 10, **kwargs) -> ResNet:
    """ResNet-34 for CIFAR (21.28M parameters at 10 classes)."""
    return ResNet((3, 4, 6, 3), num_classes, **kwargs)
