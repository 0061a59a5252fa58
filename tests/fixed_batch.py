"""Test helpers: a tiny plain-module student, a fixed-batch loader to inject into a Trainer, hand-written SGD.

The student uses plain ``nn.Conv2d``/``nn.BatchNorm2d`` (no ``conv_bn``), so no BatchNorm is ever folded
into its convolutions and a test (or the official scripts) can run exactly the kernels the trainer runs.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fairard.models import build_model, list_models, register_model
from fairard.train import TrainConfig, Trainer

PROBE = "probe_cnn"


def probe_cnn(num_classes=10, **kw):
    """Conv-BN-ReLU, 2x2 average pool, linear: a few hundred parameters with a train-mode BatchNorm."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes))


if PROBE not in list_models():
    register_model(probe_cnn, name=PROBE)


def save_probe(path, seed: int) -> str:
    """A probe_cnn checkpoint with some spread in the BN running statistics (a plausible frozen teacher)."""
    torch.manual_seed(seed)
    model = build_model(PROBE, 10)
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.1, 0.1)
        model[1].running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), path)
    return str(path)


def fixed_batches(n_batches: int = 1, per_class: int = 1, seed: int = 0, lo: float = 0.1):
    """Balanced batches of [lo, 1-lo] images (3x32x32, NCHW-contiguous): no eps-ball touches the [0,1] box."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        y = torch.arange(10).repeat(per_class)
        y = y[torch.randperm(len(y), generator=g)]
        x = lo + (1 - 2 * lo) * torch.rand((len(y), 3, 32, 32), generator=g)
        out.append((x.contiguous(), y))
    return out


class FixedLoader:
    """Stands in for ``Trainer.train_loader``: the same batches, in the same order, every epoch."""

    def __init__(self, batches):
        self.batches = batches
        self.num_samples = sum(len(y) for _, y in batches)
        self.dataset = range(self.num_samples)  # len() for the official scripts' kappa normalisation
        self.epochs_seen = []

    def set_epoch(self, epoch):
        self.epochs_seen.append(epoch)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        start = 0
        for x, y in self.batches:
            yield x.clone(), y.clone(), torch.arange(start, start + len(y))
            start += len(y)


def make_trainer(root, out, batches, teacher=None, **kw) -> Trainer:
    """A CPU fp32 Trainer on the probe student whose training data is exactly ``batches``."""
    base = dict(student=PROBE, data_root=str(root), epochs=1, milestones=(), monitor_n=0, device="cpu",
                amp="off", attack_steps=3, batch_size=len(batches[0][1]))
    if teacher is not None:
        base.update(teacher=PROBE, teacher_checkpoint=str(teacher))
    base.update(kw)
    trainer = Trainer(TrainConfig(**base), out, progress=False)
    trainer.train_loader = FixedLoader(batches)
    return trainer


class HandSGD:
    """torch.optim.SGD's update written out (no dampening): the reference a test checks the trainer against."""

    def __init__(self, lr, momentum, weight_decay, nesterov):
        self.lr, self.momentum, self.weight_decay, self.nesterov = lr, momentum, weight_decay, nesterov
        self.buffers = None

    def step(self, params, grads, lr=None):
        lr = self.lr if lr is None else lr
        if self.buffers is None:
            self.buffers = [None] * len(params)
        out = []
        for k, (p, g) in enumerate(zip(params, grads)):
            d = g + self.weight_decay * p
            self.buffers[k] = d.clone() if self.buffers[k] is None else self.momentum * self.buffers[k] + d
            d = d + self.momentum * self.buffers[k] if self.nesterov else self.buffers[k]
            out.append(p - lr * d)
        return out
