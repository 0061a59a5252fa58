"""The graph engine (``TrainConfig(engine="graph")``, ``--engine graph``): the training step replayed from a CUDA graph.

At batch 128 a Fair-ARD step is about twelve forward/backward passes of the student plus a teacher forward:
thousands of small kernels, each launched from Python. On a GPU the step is bound by those launches, not by
arithmetic (``benchmarks/README.md``: 36 s per CIFAR-10 epoch on an H100, ~5 % of its bf16 peak). A CUDA
graph records the kernels of one step once; each batch then costs one launch.

What is captured is the trainer's own step, ``Trainer._train_step``, unchanged: the training attack with
kappa, the frozen teacher's forward, the method's per-sample loss times the class weights, backward, the
optimiser's step and the per-class statistics. The loader, the attack's random start (drawn before the step
from the run's seeded generator), the per-epoch class-weight update, logging and checkpoints stay eager.
For the replays to see each batch and to carry the run forward:

* the batch, the labels and the random start are copied into static tensors (``StaticStep.inputs``);
* every tensor the step reads or writes across batches is persistent and updated in place: parameters,
  momentum buffers, BatchNorm running statistics, the method's buffers, the class weights
  (``FairWeighting.weights``), the epoch's statistics (``Trainer.stats``) and loss sum (``Trainer.loss_sum``);
* the learning rate is a scalar argument of SGD's foreach kernels (the default on CUDA, kept so that the
  updates are the eager path's), so a graph belongs to one learning rate: the step is re-captured when an
  epoch's learning rate differs (1 + the milestones a run passes). A tensor learning rate would need
  ``SGD(fused=True)``, a different kernel whose rounding is not shown equal to foreach's;
* autocast keeps its weight-cast cache: its region opens and closes inside the captured step, so the student's
  bf16 weight copies are made anew in the graph at every replay. (``cache_enabled=False`` would change the
  arithmetic: a weight used by two forwards, as RSLAD's and TRADES' clean and adversarial ones, then gets two
  bf16 gradients cast to fp32 one by one instead of one bf16 sum; the CPU test below caught it);
* eval-mode attacks fold BatchNorm inside the graph (``conv_bn`` folds at each attack's first forward, from
  the current weights); the frozen teachers are folded once and their convolution and linear weights, folded
  or not, cast to bf16 once (``cast_frozen_to_bf16``): autocast would cast them at every forward, to the same
  values;
* nothing syncs the host inside an epoch (the divergence check runs at the epoch's end).

The first ``WARMUP_STEPS`` steps of a run are real training steps run eagerly on a side stream (cuDNN picks
its algorithms, the optimiser creates its momentum buffers); the next batch is captured, then replayed.

``StaticStep(trainer, capture=False)`` runs the same static-buffer step uncaptured on any device ("static
eager"): ``tests/test_graph_step.py`` checks on CPU that it trains bit-identically to the eager trainer, and
on CUDA that the captured graph does.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["GRAPH_METHODS", "WARMUP_STEPS", "check_graph_engine", "engine_for", "cast_frozen_to_bf16", "StaticStep"]

# Methods whose step has no host-side control flow that depends on data or on the epoch (IAD and CFA switch
# terms on at an epoch, CFA's radius is per sample, KDIGA differentiates fp32 input gradients of the teacher).
GRAPH_METHODS = ("natural", "pgd_at", "trades", "ard", "rslad", "mtard", "absld")
WARMUP_STEPS = 3


def check_graph_engine(cfg, device: torch.device, world: int) -> None:
    """Raise a ValueError, before any work, when ``engine="graph"`` cannot serve this run."""
    if device.type != "cuda":
        raise ValueError(f"engine 'graph' replays the training step from a CUDA graph and needs a CUDA device; this "
                         f"run's device is {device}. Use engine 'eager' (the default, --engine eager): it trains "
                         f"to the same weights")
    if world > 1:
        raise ValueError("engine 'graph' runs in one process; multi-process (torchrun) runs use --engine eager")
    base = cfg.method[5:] if cfg.method.startswith("fair-") else cfg.method
    if base not in GRAPH_METHODS:
        raise ValueError(f"engine 'graph' does not support method {cfg.method!r} (its step branches on the epoch or "
                         f"on data); supported: {', '.join(GRAPH_METHODS)} and their fair- versions. "
                         f"Use --engine eager")


def engine_for(requested: str, method: str) -> str:
    """The engine a run of ``method`` uses when a profile asks for ``requested``: a method the graph cannot capture
    runs eager (the engine is not part of the run key: both give the same weights)."""
    base = method[5:] if method.startswith("fair-") else method
    return requested if base in GRAPH_METHODS else "eager"


@torch.no_grad()
def cast_frozen_to_bf16(model: nn.Module, example: torch.Tensor, autocast) -> None:
    """Fold a frozen model's BatchNorms (one forward of ``example`` under ``autocast``, in fp32 as the eager
    path folds) and cast the folded weights and every convolution and linear weight to bf16 in place.

    Autocast casts these to bf16 at every forward; cast once, the bf16 kernels see the same values. The
    model must stay folded and under autocast from then on (``Trainer`` never re-toggles a teacher)."""
    with autocast:
        model(example)
    for m in model.modules():
        if getattr(m, "folded", None) is not None:
            m.folded = tuple(t.to(torch.bfloat16) for t in m.folded)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            for p in (m.weight, m.bias):
                if p is not None:
                    p.data = p.data.to(torch.bfloat16)


class StaticStep:
    """``Trainer._train_step`` on static input tensors; with ``capture=True`` (CUDA) replayed from a CUDA graph.

    A drop-in for the trainer's step: ``trainer._step = StaticStep(trainer)`` (the graph engine does this).
    ``captures`` counts the graphs captured, ``eager_steps`` the steps run uncaptured."""

    def __init__(self, trainer, capture: bool = True):
        if capture and trainer.device.type != "cuda":
            raise ValueError(f"capture needs a CUDA device, the trainer runs on {trainer.device}")
        self.trainer, self.capture = trainer, capture
        self.inputs: tuple | None = None   # static (x, y, x_start)
        self.graph, self.key = None, None
        self.captures = self.eager_steps = 0
        self._side = None

    def _prepare(self, x, y, x_start) -> None:
        t = self.trainer
        self.inputs = (torch.empty_like(x), torch.empty_like(y), None if x_start is None else torch.empty_like(x_start))
        if t.amp:
            for frozen in (t.teacher, t.nat_teacher):
                if frozen is not None:
                    cast_frozen_to_bf16(frozen, x[:1], t._autocast())

    def _copy_in(self, x, y, x_start) -> None:
        sx, sy, sstart = self.inputs
        if x.shape != sx.shape or (x_start is None) != (sstart is None):
            raise ValueError(f"a static step needs batches of one shape: got {tuple(x.shape)} after {tuple(sx.shape)} "
                             f"(the training loader drops its last partial batch)")
        sx.copy_(x)
        sy.copy_(y)
        if sstart is not None:
            sstart.copy_(x_start)

    def _run(self, eps, epoch) -> None:
        self.trainer._train_step(*self.inputs, eps, epoch)

    def __call__(self, x, y, x_start, eps, epoch: int) -> None:
        if torch.is_tensor(eps):
            raise ValueError("a static step needs one attack radius for every sample (a float)")
        if self.inputs is None:
            self._prepare(x, y, x_start)
        if not self.capture:
            self._copy_in(x, y, x_start)
            self._run(eps, epoch)
            self.eager_steps += 1
            return
        if self.eager_steps < WARMUP_STEPS:
            self._warmup(x, y, x_start, eps, epoch)
            return
        key = (self.trainer.optimizer.param_groups[0]["lr"], eps)
        self._copy_in(x, y, x_start)
        if self.graph is None or key != self.key:
            self._capture(eps, epoch, key)
        self.graph.replay()

    def _warmup(self, x, y, x_start, eps, epoch) -> None:
        """A real training step, uncaptured, on a side stream (as CUDA graph capture wants its warm-up)."""
        current = torch.cuda.current_stream(self.trainer.device)
        if self._side is None:
            self._side = torch.cuda.Stream(self.trainer.device)
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side):
            self._copy_in(x, y, x_start)
            self._run(eps, epoch)
        current.wait_stream(self._side)
        self.eager_steps += 1

    def _capture(self, eps, epoch, key) -> None:
        """Record the step (capture executes nothing; the caller replays it for the current batch)."""
        self.graph = None  # the previous learning rate's graph and its memory pool go first
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._run(eps, epoch)
        self.graph, self.key = graph, key
        self.captures += 1
