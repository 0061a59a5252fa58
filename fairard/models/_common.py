"""Pieces shared by every family: in-model normalisation, the timm-style features/head split, and two
speed paths of the training engine: a faster bf16 ReLU on CPU (``relu``) and BatchNorm folded into the
preceding convolution where BN runs in eval mode (``conv_bn``, ``folded_batchnorm``)."""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Normalize", "make_normalize", "CifarNet", "make_stages", "relu", "ReLU", "conv_bn", "shortcut_conv_bn",
           "folded_batchnorm", "set_batchnorm_folding"]


class _Bf16SignReLU(torch.autograd.Function):
    """ReLU of a CPU bfloat16 tensor computed on its int16 bit pattern.

    PyTorch's CPU kernels widen bf16 to fp32 and back for every element-wise op; int16 kernels move
    the same 2 bytes without converting. As int16, positive numbers, +inf and +NaN are > 0, negative
    numbers and -inf are <= -128 (-0.0 is -32768), and -NaN (x86's default NaN) is in [-127, -1]. So
    ``threshold(bits, -128, 0)`` is ReLU that lets every NaN through, as torch's does: the same values
    as ``F.relu``, except that zeros come out as +0.0. The backward multiplies the int16 gradient by
    the 0/1 mask ``clamp(out, 0, 1)``, bits times 1 or 0, again exact (it differs from torch's only at
    NaN activations, whose loss stops the run anyway). Forward ~4x and backward ~1.5x faster than
    torch's bf16 ReLU, ~10% of a bf16 PGD step on CPU (benchmarks/README.md). Under ``create_graph``
    (KDIGA's double backprop) the backward is the differentiable ``threshold_backward``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = torch.threshold(x.view(torch.int16), -128, 0).view(torch.bfloat16)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        if torch.is_grad_enabled() or grad.dtype != torch.bfloat16:
            return torch.ops.aten.threshold_backward(grad, out, 0)
        # The mask first: the result takes its memory format (channels_last), not the incoming gradient's,
        # which may be an expanded view from the pooling's backward.
        return out.view(torch.int16).clamp(0, 1).mul_(grad.view(torch.int16)).view(torch.bfloat16)


def relu(x: torch.Tensor) -> torch.Tensor:
    """``F.relu``, with a faster path for bfloat16 on CPU (``_Bf16SignReLU``: same values)."""
    if x.dtype == torch.bfloat16 and x.device.type == "cpu":
        return _Bf16SignReLU.apply(x)
    return F.relu(x)


class ReLU(nn.Module):
    """Module form of ``relu``, for the families that hold their ReLUs as modules (WRN, as in TRADES' code)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu(x)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the one convolution that equals eval-mode ``bn(conv(x))``."""
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        bias = -bn.running_mean * scale
        if bn.bias is not None:
            bias = bias + bn.bias
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        return conv.weight * scale.view(-1, 1, 1, 1), bias


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``; inside ``folded_batchnorm``, an eval-mode BN is folded into the convolution.

    Folded: one convolution with weight ``w * s`` and bias ``beta + (b - mu) * s``, where
    ``s = gamma / sqrt(var + eps)``, so the BN pass and its backward disappear. Equal in exact
    arithmetic; in floating point the rounding differs (bf16: a few ulp per layer). Folding serves
    attacks and frozen models, whose parameters do not change meanwhile: the folded weights are
    computed once per folding toggle (not at every attack step) and pass no gradient to the
    parameters. After changing the weights of a model that stays folded, toggle again
    (``set_batchnorm_folding``).
    """
    if bn.training or not getattr(bn, "fold", False) or bn.running_var is None:
        return bn(conv(x))
    if getattr(bn, "folded", None) is None:
        bn.folded = _fold(conv, bn)
    weight, bias = bn.folded
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def shortcut_conv_bn(shortcut: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A residual shortcut kept as in the original code: an empty ``Sequential`` (identity) or
    ``Sequential(conv, bn)`` (projection), the latter through ``conv_bn`` so that it folds too."""
    return conv_bn(*shortcut, x) if len(shortcut) else x


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _set_folding(bns: list[nn.Module], flags) -> None:
    for m, fold in zip(bns, flags):
        m.fold, m.folded = fold, None  # a toggle drops the folded weights: the next conv_bn folds anew


def set_batchnorm_folding(model: nn.Module, fold: bool = True) -> list[bool]:
    """Turn ``conv_bn`` folding on or off for every BatchNorm of ``model``; returns the previous flags."""
    bns = _batchnorms(model)
    previous = [getattr(m, "fold", False) for m in bns]
    _set_folding(bns, [fold] * len(bns))
    return previous


@contextlib.contextmanager
def folded_batchnorm(model: nn.Module):
    """Within the block, every eval-mode BatchNorm that directly follows a convolution (``conv_bn``) is
    folded into it; a train-mode BN (batch statistics) never is. The trainer wraps every training
    attack in it, so the eval-mode ones (RSLAD, MTARD, ABSLD, TRADES) fold, and folds the frozen
    teachers; evaluation never folds. Pre-activation BNs (PreAct ResNet, WRN) follow an addition, not
    a convolution, and stay as they are."""
    previous = set_batchnorm_folding(model, True)
    try:
        yield model
    finally:
        _set_folding(_batchnorms(model), previous)


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
