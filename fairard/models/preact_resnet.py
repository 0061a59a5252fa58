"""Pre-activation ResNet-18 (He et al., "Identity Mappings in Deep Residual Networks", 2016) for CIFAR.

Layout of the PreActResNet18 used in robust-training code (Rice et al. 2020 "Overfitting in adversarially robust
deep learning", as packaged by RobustBench): 3x3 stride-1 stem, pre-activation basic blocks whose 1x1 projection
shortcut (``shortcut.0``, no BN) reads the block's pre-activation, and a final BN-ReLU (``bn``) before pooling.
Decision worth knowing: Kuang Liu's pytorch-cifar variant omits that final ``bn``; we keep it, as the identity-
mapping paper and Rice et al. do, so the last residual sum is normalised before the ``linear`` classifier.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._common import CifarNet, make_stages, relu
from ._registry import register_model

__all__ = ["PreActBlock", "PreActResNet", "preact_resnet18"]


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(CifarNet):
    classifier_name = "linear"

    def __init__(self, num_blocks: tuple[int, ...], num_classes: int = 10, mean=None, std=None):
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        stages = make_stages(PreActBlock, 64, (64, 128, 256, 512), num_blocks)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.normalize(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return relu(self.bn(x))


@register_model
def preact_resnet18(num_classes: int = 10, **kwargs) -> PreActResNet:
    """PreAct ResNet-18 for CIFAR (11.17M parameters at 10 classes)."""
    return PreActResNet((2, 2, 2, 2), num_classes, **kwargs)
