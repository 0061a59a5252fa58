"""BatchNorm over the global batch when one run is split across processes (``torchrun``).

Under torchrun every process trains on its ``rank::world`` share of each global batch.  A plain BatchNorm
would normalise each share by its own mean and variance, so the network would compute something else than
on one device.  ``sync_batchnorm`` makes every BatchNorm of a model use the statistics of the global batch:
each process all-reduces the per-channel sum, sum of squares and count of its share (one differentiable
all-reduce per layer, so gradients flow to every process's inputs as on one device) and updates its running
statistics with the global values.  Unlike ``torch.nn.SyncBatchNorm`` it also runs on CPU (gloo), which is
how the tests check it.  Eval mode is untouched (running statistics, folded into the convolutions).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose backward sums the gradients of every process: each process's inputs get the
    gradient of every process's loss through the shared statistics, as on one device."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are those of the batch of every process."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        xf = x.double()  # E[x²] - E[x]² in fp64: in fp32 its cancellation alone moved trained weights by ~1e-4
        local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), xf.new_full((1,), x.numel() / channels)])
        total = _SumOverProcesses.apply(local)
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels:2 * channels] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps)
        shape = (1, channels, 1, 1)
        y = (x - mean.to(x.dtype).view(shape)) * scale.to(x.dtype).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every ``nn.BatchNorm2d`` of ``model`` becomes a ``GlobalBatchNorm2d`` in place (same parameters,
    buffers and state-dict keys, so checkpoints load either way); returns the model."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
    return model
