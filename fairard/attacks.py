"""White-box L-inf attacks with explicit budgets: FGSM and PGD (CE, CW-inf, KL losses).

Each attack is a pure function of ``(model, x, y, budget)``.  Inputs live in [0, 1]; the
adversarial example is projected onto the eps-ball around ``x`` and onto [0, 1] after every step.

The attack never touches the model's train/eval mode (ARD attacks a student in train mode,
RSLAD one in eval mode: the caller decides) nor its parameter gradients (it differentiates with
``torch.autograd.grad`` with respect to the input only).  It runs in fp32 for evaluation and under
``torch.autocast`` (bf16) for training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "cw", "kl")
RANDOM_STARTS = ("uniform", "normal", None)
CW_CONFIDENCE = 50.0  # the TRADES / GAIRAT "CW-inf" convention


def _check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(repr, valid))}")


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce",
                target_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample loss the attacker maximises.

    - ``ce``: cross-entropy to the true label.
    - ``cw``: ``-relu(z_y - max_{j != y} z_j + 50)``, the margin loss of the TRADES/GAIRAT CW-inf attack.
    - ``kl``: ``KL(target_probs || softmax(logits))`` summed over classes (RSLAD's attack toward the
      teacher's soft label; TRADES' attack when target_probs = softmax of the clean logits).
    """
    logits = logits.float()
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "cw":
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
        return -(true - other + CW_CONFIDENCE).clamp(min=0)
    if loss == "kl":
        if target_probs is None:
            raise ValueError("loss='kl' needs target_probs (e.g. the teacher's softmax on clean x)")
        log_q = F.log_softmax(logits, dim=1)
        return F.kl_div(log_q, target_probs.float(), reduction="none").sum(1)
    _check_choice("attack loss", loss, LOSSES)


def start_point(x: torch.Tensor, eps, kind: str | None, generator: torch.Generator | None = None):
    """The attack's first iterate x^(0): uniform in the eps-ball, x + 0.001*N(0, I), or x itself."""
    _check_choice("random_start", kind, RANDOM_STARTS)
    if kind is None:
        return x.clone()
    if kind == "uniform":
        noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    else:
        noise = 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + noise).clamp(0, 1)


def as_radius(value, x: torch.Tensor):
    """A float, or a per-sample tensor (B,) broadcast over C, H, W (CFA's class-wise radius)."""
    if torch.is_tensor(value):
        return value.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return float(value)


def pgd(model, x: torch.Tensor, y: torch.Tensor, *, eps=8 / 255, step_size=2 / 255, steps: int = 10,
        loss: str = "ce", target_probs: torch.Tensor | None = None, random_start: str | None = "uniform",
        return_kappa: bool = False, generator: torch.Generator | None = None, x_start: torch.Tensor | None = None,
        observe=None):
    """Projected gradient ascent on ``attack_loss`` in the L-inf ball of radius ``eps``.

    Returns ``x_adv`` or, with ``return_kappa=True``, ``(x_adv, kappa)`` where ``kappa[i]`` counts the
    iterates x^(0), ..., x^(K-1) that the model classifies correctly, each checked before its step
    (Fair-ARD's / GAIRAT's geometric difficulty; the final iterate is not counted).  The count reuses
    the forward pass the step needs anyway.

    ``eps`` and ``step_size`` may be floats or per-sample tensors of shape (B,).  ``x_start`` replaces
    the random start by a given first iterate (the trainer draws it for a whole global batch so that a
    batch split over processes attacks exactly as a single process would).  ``observe(x_adv, logits)``, if
    given, is called with each checked iterate x^(t) and its logits, before its step (``EarlyStops``).
    """
    _check_choice("attack loss", loss, LOSSES)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    x = x.detach()
    eps_t, step_t = as_radius(eps, x), as_radius(step_size, x)
    lower, upper = (x - eps_t).clamp(min=0), (x + eps_t).clamp(max=1)
    x_adv = start_point(x, eps_t, random_start, generator) if x_start is None else x_start.detach()
    x_adv = torch.max(torch.min(x_adv, upper), lower)
    kappa = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if return_kappa else None
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        if return_kappa:
            kappa += (logits.detach().argmax(1) == y).long()
        if observe is not None:
            observe(x_adv.detach(), logits.detach())
        objective = attack_loss(logits, y, loss, target_probs).sum()
        (grad,) = torch.autograd.grad(objective, x_adv)
        x_adv = x_adv.detach() + step_t * grad.sign()
        x_adv = torch.max(torch.min(x_adv, upper), lower)
    x_adv = x_adv.detach()
    return (x_adv, kappa) if return_kappa else x_adv



class EarlyStops:
    """FAT-style early-stopped iterates of one PGD run (Zhang et al. 2020, as BAT uses them), watched
    through ``pgd(..., observe=...)``; ``result(x_final)`` returns ``(first_adv, last_clean)``.

    Each iterate x^(t), t = 0..K-1, is checked before its step (the final x^(K) never is):

    - last clean: the iterate before the first misclassified one (x^(0) itself if that is already
      misclassified), or x^(K) if none is misclassified (BAT's ``stop_to_lastclean``);
    - first adversarial: with ``tau`` = 0, the first misclassified iterate; FAT's ``tau`` lets a sample
      take ``tau`` more steps, so it stops at its (tau+1)-th misclassified check, or x^(K) if it has fewer
      (BAT's ``stop_to_firstadv`` with its ``tau=1``).
    """

    def __init__(self, y: torch.Tensor, tau: int = 1):
        self.y, self.tau, self.previous = y, tau, None
        self.first_adv = self.last_clean = None
        self.misses = torch.zeros_like(y)
        self.adv_done = torch.zeros_like(y, dtype=torch.bool)
        self.clean_done = torch.zeros_like(y, dtype=torch.bool)

    def __call__(self, x_adv: torch.Tensor, logits: torch.Tensor) -> None:
        if self.first_adv is None:
            self.first_adv, self.last_clean, self.previous = x_adv.clone(), x_adv.clone(), x_adv
        wrong = logits.argmax(1) != self.y
        stop_clean = (wrong & ~self.clean_done).view(-1, *([1] * (x_adv.dim() - 1)))
        self.last_clean = torch.where(stop_clean, self.previous, self.last_clean)
        self.clean_done |= wrong
        stop_adv = wrong & ~self.adv_done & (self.misses >= self.tau)
        self.first_adv = torch.where(stop_adv.view_as(stop_clean), x_adv, self.first_adv)
        self.misses += (wrong & ~self.adv_done & ~stop_adv).long()
        self.adv_done |= stop_adv
        self.previous = x_adv

    def result(self, x_final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.first_adv is None:  # zero steps: nothing was checked
            return x_final, x_final
        shape = (-1, *([1] * (x_final.dim() - 1)))
        return (torch.where(self.adv_done.view(shape), self.first_adv, x_final),
                torch.where(self.clean_done.view(shape), self.last_clean, x_final))


def fgsm(model, x, y, *, eps=8 / 255, random_start: str | None = "normal", generator=None):
    """One signed-gradient step of size eps, from x + 0.001*N(0, I) as in Fair-ARD's eval.py."""
    return pgd(model, x, y, eps=eps, step_size=eps, steps=1, loss="ce",
               random_start=random_start, generator=generator)
