"""Pieces shared by every family: in-model normalisation and the timm-style features/head split."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Normalize", "make_normalize", "CifarNet", "make_stages"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with NON-persistent buffers.

    Non-persistent so that the state dict holds only the network's own tensors: TRADES/RobustBench checkpoints
    (trained on un-normalised [0,1] inputs) load strictly whether or not a model was built with ``mean``/``std``.
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if mean_t.numel() != std_t.numel():
            raise ValueError(f"mean has {mean_t.numel()} channels but std has {std_t.numel()}")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive, got {std_t.flatten().tolist()}")
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def make_normalize(mean=None, std=None) -> nn.Module:
    """``Normalize(mean, std)``, or an identity when both are None (the TRADES / official Fair-ARD default)."""
    if mean is None and std is None:
        return nn.Identity()
    if mean is None or std is None:
        raise ValueError("pass both mean and std (or neither, for models trained on raw [0,1] inputs)")
    return Normalize(mean, std)


class CifarNet(nn.Module):
    """Base class: ``forward = forward_head(forward_features(x))`` on [0,1] NCHW inputs.

    Subclasses build their layers, set ``classifier_name`` to the attribute holding the final ``nn.Linear``
    (its name is fixed by the original code's state-dict keys: ``linear`` or ``fc``) and implement
    ``forward_features`` (which starts with ``self.normalize``) returning the last feature map.
    """

    classifier_name = "fc"

    def __init__(self, mean=None, std=None):
        super().__init__()
        self.normalize = make_normalize(mean, std)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # Global average pooling equals the originals' avg_pool2d(4 or 8) on 32x32 inputs and also works on other sizes.
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer with a freshly initialised one for ``num_classes`` outputs."""
        old = self.get_classifier()
        setattr(self, self.classifier_name, nn.Linear(old.in_features, num_classes).to(old.weight.device))


def make_stages(block, in_planes: int, widths, num_blocks) -> list[nn.Sequential]:
    """ResNet stages: ``num_blocks[i]`` blocks of width ``widths[i]``; every stage but the first starts with stride 2.

    ``block(in_planes, planes, stride)`` builds one residual block.
    """
    stages = []
    for i, (planes, n) in enumerate(zip(widths, num_blocks)):
        blocks = []
        for j in range(n):
            blocks.append(block(in_planes, planes, 2 if i > 0 and j == 0 else 1))
            in_planes = planes
        stages.append(nn.Sequential(*blocks))
    return stages
