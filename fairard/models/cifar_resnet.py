"""CIFAR ResNet-{8,14,20,32,44,56,110} of He et al. 2016 ("Deep Residual Learning", section 4.2).

3x3 stem (16 channels), three stages of n = (depth - 2) / 6 basic blocks at widths 16/32/64 (scaled by
``width / 16``; ``width`` defaults to 16), global average pooling and a ``linear`` classifier.
Shortcut choice: option A of the paper, a parameter-free identity that subsamples by 2 and zero-pads the new
channels, as in the paper's CIFAR experiments and in the akamaster/pytorch_resnet_cifar10 ResNet that the
Fair-MTARD code uses for its resnet_56 (so resnet20 has 0.27M and resnet56 0.85M parameters, as reported there).
Key names (``conv1``, ``bn1``, ``layer1..3.<i>.{conv1,bn1,conv2,bn2}``, ``linear``) match that code, and so does its
init (He normal on conv and linear weights).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import CifarNet, conv_bn, make_stages, relu
from ._registry import register_model

__all__ = ["PadShortcut", "BasicBlock", "CifarResNet"]


class PadShortcut(nn.Module):
    """Option-A shortcut: take every ``stride``-th pixel and zero-pad the extra channels evenly on both sides."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        lo = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.extra - lo))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity() if stride == 1 and in_planes == planes else PadShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = relu(conv_bn(self.conv1, self.bn1, x))
        out = conv_bn(self.conv2, self.bn2, out)
        return relu(out + self.shortcut(x))


class CifarResNet(CifarNet):
    classifier_name = "linear"

    def __init__(self, depth: int = 20, num_classes: int = 10, width: int = 16, mean=None, std=None):
        super().__init__(mean, std)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet needs depth = 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110), got {depth}")
        if width < 1:
            raise ValueError(f"width (channels of the first stage) must be >= 1, got {width}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        widths = (width, 2 * width, 4 * width)
        self.layer1, self.layer2, self.layer3 = make_stages(BasicBlock, width, widths, (n, n, n))
        self.linear = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = relu(conv_bn(self.conv1, self.bn1, self.normalize(x)))
        return self.layer3(self.layer2(self.layer1(x)))


def _create_cifar_resnet(depth: int, num_classes: int = 10, **kwargs) -> CifarResNet:
    return CifarResNet(depth, num_classes, **kwargs)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(functools.partial(_create_cifar_resnet, _depth), name=f"resnet{_depth}")
