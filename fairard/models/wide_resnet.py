"""Wide ResNet WRN-<depth>-<width> (Zagoruyko & Komodakis 2016) with the TRADES state-dict layout.

Module names, ordering and quirks follow the WideResNet of the TRADES code (Zhang et al. 2019), the teacher
architecture of ARD/RSLAD/Fair-ARD, so its checkpoints (and RobustBench's TRADES-style ones) load strictly:
``conv1``, ``block1``/``sub_block1``/``block2``/``block3`` each ``.layer.<i>.{bn1,conv1,bn2,conv2[,convShortcut]}``,
``bn1``, ``fc``. Kept on purpose:
- ``sub_block1`` is a second copy of ``block1`` that ``forward`` never uses; it exists only so checkpoints match.
  WRN-34-10 thus stores 48.26M parameters of which 46.16M (the usually quoted size) are used. We freeze it
  (``requires_grad=False``): it never receives a gradient anyway, and DDP would otherwise reject it as unused.
- ``convShortcut`` (1x1, no BN) exists only when a block changes width, and then reads the block's
  pre-activation ``relu(bn1(x))``; equal-width blocks add the raw input.
- Convs have no bias; ``fc`` has one (zero-initialised); convs use He normal init with fan-out, as TRADES.
Any ``wrn-<depth>-<width>`` name builds (depth = 6n + 4); the common ones are also registered by name.
"""
from __future__ import annotations

import functools
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import CifarNet, ReLU
from ._registry import register_model, register_model_pattern

__all__ = ["BasicBlock", "NetworkBlock", "WideResNet"]


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.convShortcut = None  # noqa: N815  (TRADES key name)
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(out)
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """``n`` blocks in a ``layer`` Sequential (hence the ``block1.layer.0`` key prefix)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(*(
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(CifarNet):
    classifier_name = "fc"

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, drop_rate: float = 0.0,
                 mean=None, std=None):
        super().__init__(mean, std)
        if depth < 10 or (depth - 4) % 6 != 0 or widen_factor < 1:
            raise ValueError(f"WideResNet needs depth = 6n + 4 with n >= 1 and width >= 1 (e.g. wrn-34-10, "
                             f"wrn-28-10, wrn-16-4), got depth={depth}, width={widen_factor}")
        n = (depth - 4) // 6
        c = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, c[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, c[0], c[1], 1, drop_rate)
        self.sub_block1 = NetworkBlock(n, c[0], c[1], 1, drop_rate).requires_grad_(False)  # unused, keys only
        self.block2 = NetworkBlock(n, c[1], c[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, c[2], c[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(c[3])
        self.relu = ReLU()
        self.fc = nn.Linear(c[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.normalize(x))
        x = self.block3(self.block2(self.block1(x)))
        return self.relu(self.bn1(x))


def _create_wrn(depth: int, widen_factor: int, num_classes: int = 10, **kwargs) -> WideResNet:
    return WideResNet(depth, widen_factor, num_classes, **kwargs)


@register_model_pattern(r"wrn-(\d+)-(\d+)", "wrn-<depth>-<width>")
def _wrn_from_name(match: re.Match, num_classes: int = 10, **kwargs) -> WideResNet:
    return _create_wrn(int(match.group(1)), int(match.group(2)), num_classes, **kwargs)


# Registered by name too, so list_models() shows the common ones (46.16M params for wrn-34-10).
for _depth, _width in ((16, 4), (28, 10), (34, 10), (70, 16)):
    register_model(functools.partial(_create_wrn, _depth, _width), name=f"wrn-{_depth}-{_width}")
