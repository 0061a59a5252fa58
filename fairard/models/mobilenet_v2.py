"""MobileNetV2 (Sandler et al. 2018), CIFAR variant.

Layout of the pytorch-cifar MobileNetV2 (Kuang Liu) that ARD and its successors use as the small student:
the stem conv has stride 1 and the second stage (24 channels) stride 1 instead of 2, so a 32x32 input reaches the
head at 4x4 (stem stride 1, stage strides 1,1,2,2,1,2,1: /8 overall). Two details of that variant kept for checkpoint
compatibility: every block, including the expansion-1 one, has its 1x1 expansion conv (``conv1``/``bn1``), and a
stride-1 block whose width changes gets a 1x1-conv + BN shortcut (``shortcut.0/.1``) rather than no residual.
Keys: ``conv1``, ``bn1``, ``layers.<i>.{conv1,bn1,conv2,bn2,conv3,bn3,shortcut}``, ``conv2``, ``bn2``, ``linear``.
About 2.30M parameters at 10 classes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._common import CifarNet, conv_bn, relu, shortcut_conv_bn
from ._registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]

# (expansion, out_planes, num_blocks, first stride) per stage; the second stage's stride is 1 for CIFAR (2 on ImageNet).
CIFAR_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual only at stride 1."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = relu(conv_bn(self.conv1, self.bn1, x))
        out = relu(conv_bn(self.conv2, self.bn2, out))
        out = conv_bn(self.conv3, self.bn3, out)
        return out + shortcut_conv_bn(self.shortcut, x) if self.stride == 1 else out


class MobileNetV2(CifarNet):
    classifier_name = "linear"

    def __init__(self, num_classes: int = 10, cfg=CIFAR_CFG, mean=None, std=None):
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, in_planes = [], 32
        for expansion, out_planes, n, stride in cfg:
            for s in [stride] + [1] * (n - 1):
                blocks.append(InvertedResidual(in_planes, out_planes, expansion, s))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_planes, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = relu(conv_bn(self.conv1, self.bn1, self.normalize(x)))
        return relu(conv_bn(self.conv2, self.bn2, self.layers(x)))


@register_model
def mobilenet_v2(num_classes: int = 10, **kwargs) -> MobileNetV2:
    """MobileNetV2, CIFAR variant (stem and second stage at stride 1)."""
    return MobileNetV2(num_classes, **kwargs)
