"""Class weighting for Fair-ARD: per-class statistics and the re-weighting rule.

Fair-ARD (Yue et al., NeurIPS 2023) keeps a base distillation loss and multiplies each
sample's loss by a weight of its class (research brief, papers.md sections 1.3-1.5):

    w~_k = (1 / (d_k + eps)) ** beta,   w^_k = C * w~_k / sum_j w~_j,   w_k = clip(w^_k, 5/6, 5/2)

where d_k is an "easiness" score of class k: in the paper the epoch-average geometric
kappa (how many PGD steps a sample stayed correctly classified), here also the other
measures of DIFFICULTY_MEASURES for ablations. Weights start at one and the statistics
of epoch e give the weights used in epoch e+1 (no warm-up, no EMA).

Everything here is a pure tensor computation on the training device: ClassStats sums
per-sample values with ``index_add_`` so the hot loop never synchronises, and it is
all-reduced across processes once per epoch (the pattern of DINO's centre buffer).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DIFFICULTY_MEASURES", "ClassStats", "FairWeighting", "class_weights"]

# Every measure is turned into an easiness score (higher = easier class) so that one
# weighting formula serves all of them; see ClassStats.easiness.
DIFFICULTY_MEASURES = ("kappa", "robust_acc", "adv_loss", "clean_acc")

# Per-sample statistics ClassStats accumulates (the keyword names of ClassStats.update).
_STAT_NAMES = ("kappa", "robust_correct", "adv_loss", "clean_correct")
# Measure name -> statistic it averages.
_MEASURE_STAT = {"kappa": "kappa", "robust_acc": "robust_correct", "adv_loss": "adv_loss",
                 "clean_acc": "clean_correct"}
# ClassStats.mean accepts both the statistic and the measure name ("robust_acc" reads better).
_MEAN_ALIASES = {**{s: s for s in _STAT_NAMES}, **_MEASURE_STAT}


def class_weights(difficulty: Tensor, beta: float = 2.0, clamp: tuple[float, float] | None = (5 / 6, 5 / 2),
                  eps: float = 1e-5) -> Tensor:
    """Fair-ARD class weights from a per-class easiness score (papers.md section 1.5).

    ``difficulty`` (C,) is "higher = easier" (mean kappa, accuracy, or 1/loss), so hard
    classes get large weights. The normalisation makes the weights sum to C (mean 1)
    *before* the clamp; after clamping the sum generally differs from C, exactly as in
    the official code. ``clamp=None`` disables the clamp; ``beta=0`` gives all ones (the
    base method). ``eps=0`` reproduces Fair-RSLAD's script, which omits the 1e-5.
    """
    if difficulty.dim() != 1 or difficulty.numel() == 0:
        raise ValueError(f"difficulty must be a non-empty 1-D tensor (one value per class), got shape "
                         f"{tuple(difficulty.shape)}")
    if not torch.isfinite(difficulty).all() or (difficulty < 0).any():
        raise ValueError(f"difficulty must be finite and >= 0 (an easiness score such as mean kappa or "
                         f"accuracy), got {difficulty.tolist()}")
    # float64: (1/1e-5)**beta overflows nothing here, but low-precision sums would bias the normalisation.
    d = difficulty.detach().double()
    raw = (1.0 / (d + eps)) ** beta
    w = difficulty.numel() * raw / raw.sum()
    if clamp is not None:
        lo, hi = clamp
        if not lo <= hi:
            raise ValueError(f"clamp must be (low, high) with low <= high, got {clamp}")
        w = w.clamp(lo, hi)
    return w.to(difficulty.dtype if difficulty.is_floating_point() else torch.float32)


class ClassStats:
    """Per-class sums and counts of per-sample training statistics for one epoch.

    ``update`` takes per-sample tensors of the current batch; sums live on ``device`` and
    nothing is copied to the host until ``mean``/``as_dict`` is asked for, once per epoch.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        # One row per statistic so the epoch-end all-reduce is a single call.
        self.sums = torch.zeros(len(_STAT_NAMES), self.num_classes, device=self.device)
        self.counts = torch.zeros(len(_STAT_NAMES), self.num_classes, device=self.device)
        self._reduced = False

    def reset(self) -> None:
        """Zero all sums and counts (call at the start of every epoch)."""
        self.sums.zero_()
        self.counts.zero_()
        self._reduced = False

    @torch.no_grad()
    def update(self, y: Tensor, *, kappa: Tensor | None = None, robust_correct: Tensor | None = None,
               adv_loss: Tensor | None = None, clean_correct: Tensor | None = None) -> None:
        """Add per-sample values (each shaped like ``y``; bool correctness flags are fine)."""
        y = y.to(self.device)
        ones = None
        for row, value in enumerate((kappa, robust_correct, adv_loss, clean_correct)):
            if value is None:
                continue
            if value.shape != y.shape:
                raise ValueError(f"ClassStats.update: {_STAT_NAMES[row]} has shape {tuple(value.shape)}, "
                                 f"expected one value per sample {tuple(y.shape)}")
            if ones is None:
                ones = torch.ones(y.shape, device=self.device)
            self.sums[row].index_add_(0, y, value.detach().to(self.device, torch.float32))
            self.counts[row].index_add_(0, y, ones)
        self._reduced = False

    def all_reduce(self) -> None:
        """Sum the statistics over all processes when torch.distributed is initialised.

        Idempotent until the next ``update``, so both the trainer and FairWeighting may call it.
        """
        if self._reduced or not (dist.is_available() and dist.is_initialized()):
            return
        both = torch.cat([self.sums, self.counts])
        dist.all_reduce(both, op=dist.ReduceOp.SUM)
        self.sums.copy_(both[: len(_STAT_NAMES)])
        self.counts.copy_(both[len(_STAT_NAMES):])
        self._reduced = True

    def _row(self, name: str) -> int:
        if name not in _MEAN_ALIASES:
            raise ValueError(f"unknown statistic {name!r}; valid: {sorted(_MEAN_ALIASES)}")
        return _STAT_NAMES.index(_MEAN_ALIASES[name])

    def mean(self, name: str) -> Tensor:
        """Class-wise mean of a statistic, (C,). ``name`` is a statistic ("robust_correct") or
        measure ("robust_acc"). A class without samples gets the overall mean, so no NaN."""
        row = self._row(name)
        sums, counts = self.sums[row], self.counts[row]
        total = counts.sum()
        if total == 0:
            raise ValueError(f"ClassStats has no {_STAT_NAMES[row]!r} values this epoch; pass "
                             f"{_STAT_NAMES[row]}=... to ClassStats.update during training")
        overall = sums.sum() / total
        return torch.where(counts > 0, sums / counts.clamp_min(1), overall)

    def easiness(self, measure: str) -> Tensor:
        """Per-class easiness score (higher = easier) for ``class_weights``.

        kappa: mean kappa; robust_acc / clean_acc: mean accuracy; adv_loss: 1 / mean loss.
        """
        if measure not in DIFFICULTY_MEASURES:
            raise ValueError(f"unknown difficulty measure {measure!r}; valid: {list(DIFFICULTY_MEASURES)}")
        m = self.mean(measure)
        if measure == "adv_loss":
            m = 1.0 / m.clamp_min(1e-12)
        return m

    def has(self, name: str) -> bool:
        """True when at least one value of this statistic was recorded."""
        return bool(self.counts[self._row(name)].sum() > 0)

    def state_dict(self) -> dict:
        return {"sums": self.sums.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        for key in ("sums", "counts"):
            if state[key].shape != getattr(self, key).shape:
                raise ValueError(f"ClassStats state {key!r} has shape {tuple(state[key].shape)}, expected "
                                 f"{tuple(getattr(self, key).shape)} (num_classes={self.num_classes})")
            getattr(self, key).copy_(state[key])
        self._reduced = False

    def as_dict(self) -> dict[str, list[float]]:
        """Class-wise means of every recorded statistic plus per-class counts, as lists (JSON logs)."""
        out: dict[str, list[float]] = {}
        for row, name in enumerate(_STAT_NAMES):
            if self.counts[row].sum() > 0:
                out[name] = self.mean(name).tolist()
        out["count"] = self.counts.max(0).values.tolist()
        return out


class FairWeighting:
    """The pluggable Fair-ARD weighting: current class weights, updated once per epoch.

    ``weights`` start at ones (the first epoch is the plain base method). ``end_epoch``
    recomputes them from that epoch's ClassStats; they are then used for the next epoch.
    """

    def __init__(self, num_classes: int, beta: float = 2.0, clamp: tuple[float, float] | None = (5 / 6, 5 / 2),
                 measure: str = "kappa", device: torch.device | str = "cpu", eps: float = 1e-5):
        if measure not in DIFFICULTY_MEASURES:
            raise ValueError(f"unknown difficulty measure {measure!r}; valid: {list(DIFFICULTY_MEASURES)}")
        self.num_classes, self.beta, self.clamp, self.measure, self.eps = int(num_classes), beta, clamp, measure, eps
        self.weights = torch.ones(self.num_classes, device=device)

    def sample_weights(self, y: Tensor) -> Tensor:
        """Per-sample weights ``weights[y]``, (B,)."""
        return self.weights[y]

    def end_epoch(self, stats: ClassStats) -> Tensor:
        """Recompute the weights from this epoch's statistics (all-reduced first); returns them."""
        stats.all_reduce()
        easiness = stats.easiness(self.measure).to(self.weights.device)
        # In place: a captured training step (fairard.graph_step) reads this very tensor at every replay.
        self.weights.copy_(class_weights(easiness, beta=self.beta, clamp=self.clamp, eps=self.eps))
        return self.weights.clone()

    def state_dict(self) -> dict:
        return {"weights": self.weights.clone(), "measure": self.measure}

    def load_state_dict(self, state: dict) -> None:
        if state.get("measure", self.measure) != self.measure:
            raise ValueError(f"checkpoint weights were computed with measure {state['measure']!r}, this run uses "
                             f"{self.measure!r}; use the same --measure to resume")
        if state["weights"].shape != self.weights.shape:
            raise ValueError(f"checkpoint has {state['weights'].numel()} class weights, expected {self.num_classes}")
        self.weights.copy_(state["weights"])
