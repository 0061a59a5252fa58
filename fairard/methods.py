"""Training objectives: one small per-sample loss per method, behind one registry.

A method says which training attack it wants (``AttackConfig``), its default
optimisation (``OptimDefaults``), and how to turn one batch's forwards (``Forward``)
into a per-sample loss of shape (B,). The trainer multiplies that by the Fair-ARD class
weights (``fairard.fairness.FairWeighting``) and divides by B, so "fair-<name>" never
forks the loss code (papers.md section 1.3).

Formulas and conventions come from the research brief (``shared/research/papers.md`` beside the repository),
which read them in each method's official code; the section is named in every class
docstring. Notation: KL(p||q) = sum_c p_c log(p_c / q_c), sigma_t(z) = softmax(z / t),
C = number of classes, x' = the student's adversarial example.

KL reduction conventions differ between the official codes and are kept, because they
set the effective learning rate of the distillation term:

* "/C": PyTorch's ``KLDivLoss()`` default ``reduction='mean'`` divides by B*C; per sample
  that is KL/C (ARD, KDIGA, RSLAD, MTARD, ABSLD). RSLAD and MTARD multiply by 10 on
  CIFAR-100 to undo it (``kl_scale``).
* "sum": the true KL summed over classes (TRADES, IAD, CFA).

Official-code quirks are named switches whose default is the method's intended
behaviour; the quirk is one argument away for reproducing the reference runs.

Stateful methods (MTARD's loss weights, ABSLD's temperatures, CFA's class accuracies)
keep their state in buffers, so ``state_dict``/``load_state_dict`` checkpoint it, and
update it only while the method is in training mode (``method.train()``, the default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttackConfig", "OptimDefaults", "Forward", "Method", "METHODS", "register_method", "get_method",
    "list_methods", "parse_method_name", "kl_div", "cross_entropy", "input_gradient",
    "Natural", "PGDAT", "TRADES", "ARD", "IAD", "RSLAD", "MTARD", "KDIGA", "KDIGAARD", "ABSLD", "CFA",
    "FRL", "FRLRMRW", "BAT",
]

# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class AttackConfig:
    """A method's training attack, fed to ``fairard.attacks.pgd``.

    loss: "ce" (student CE against y) or "kl" (KL to ``Method.attack_target`` probabilities).
    random_start: "uniform" (U[-eps, eps]) or "normal" (x + 0.001 * N(0, I)).
    student_mode: BatchNorm mode of the student during the attack, "train" or "eval".
    """

    loss: str
    random_start: str
    student_mode: str
    steps: int = 10
    eps: float = 8 / 255
    step_size: float = 2 / 255


@dataclass(frozen=True)
class OptimDefaults:
    """The official SGD recipe of a method (lr decays x0.1 at each milestone epoch)."""

    epochs: int
    milestones: tuple[int, ...]
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    batch_size: int = 128
    cifar100_batch_size: int | None = None  # ARD and KDIGA's scripts use 256 on CIFAR-100

    def for_dataset(self, dataset: str) -> "OptimDefaults":
        """The recipe on ``dataset``. CIFAR-100: the script's own batch size where it has one. SVHN: the
        learning rate x0.1 (0.01 for the 0.1 recipes), as SVHN adversarial training commonly uses (e.g.
        Rice et al. 2020) because 0.1 diverges early; no official Fair-ARD value exists (our choice).
        Tiny-ImageNet: the CIFAR recipe unchanged (our choice)."""
        if dataset == "cifar100" and self.cifar100_batch_size:
            return dataclasses.replace(self, batch_size=self.cifar100_batch_size)
        if dataset == "svhn":
            return dataclasses.replace(self, lr=self.lr * 0.1)
        return self


_CE_UNIFORM_TRAIN = AttackConfig(loss="ce", random_start="uniform", student_mode="train")  # ARD, IAD, PGD-AT
_CE_NORMAL_EVAL = AttackConfig(loss="ce", random_start="normal", student_mode="eval")      # MTARD
_KL_NORMAL_EVAL = AttackConfig(loss="kl", random_start="normal", student_mode="eval")      # TRADES, RSLAD, ABSLD, CFA

_ARD_OPTIM = OptimDefaults(epochs=200, milestones=(100, 150))
_RSLAD_OPTIM = OptimDefaults(epochs=300, milestones=(215, 260, 285))
_AT_OPTIM = OptimDefaults(epochs=100, milestones=(75, 90), weight_decay=5e-4)

# RSLAD/MTARD/ABSLD compute the KL element-wise as p_T * (log(p_T + 1e-5) - log p_S).
_RSLAD_LOG_EPS = 1e-5

# ----------------------------------------------------------------------------- shared loss pieces


def _fp32(t: Tensor) -> Tensor:
    """Upcast half/bfloat16 logits (from autocast) so softmax/log run in fp32; keep fp32/fp64."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _column(tau: float | Tensor, like: Tensor) -> float | Tensor:
    """A scalar temperature, or a per-sample (B,) one broadcast over classes as (B, 1)."""
    return tau.to(like.dtype).unsqueeze(1) if isinstance(tau, Tensor) else tau


def kl_div(target_logits: Tensor, student_logits: Tensor, *, tau: float | Tensor = 1.0,
           student_tau: float | Tensor | None = None, reduction: str = "sum",
           target_log_eps: float = 0.0) -> Tensor:
    """Per-sample KL(sigma(target / tau) || sigma(student / student_tau)), shape (B,).

    The one KL every method uses. Gradients flow into both arguments (TRADES and IAD
    differentiate through their student target); teacher logits arrive detached.

    tau: target temperature, a float or a per-sample (B,) tensor (ABSLD's class temperatures).
    student_tau: student temperature; None means the same as ``tau`` (ARD/IAD/KDIGA).
    reduction: "sum" sums over classes; "mean" divides by C, which is what the official
    codes' ``KLDivLoss()``/element-wise mean amounts to per sample.
    target_log_eps: > 0 uses log(p + eps) for the target as RSLAD/MTARD/ABSLD do (this
    shifts the value, not the student gradient).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean' (divide by C), got {reduction!r}")
    t, s = _fp32(target_logits), _fp32(student_logits)
    student_tau = tau if student_tau is None else student_tau
    log_q = F.log_softmax(s / _column(student_tau, s), dim=1)
    if target_log_eps > 0:
        p = F.softmax(t / _column(tau, t), dim=1)
        log_p = torch.log(p + target_log_eps)
    else:
        log_p = F.log_softmax(t / _column(tau, t), dim=1)
        p = log_p.exp()
    kl = (p * (log_p - log_q)).sum(dim=1)
    return kl / t.shape[1] if reduction == "mean" else kl


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy (B,), computed in fp32 under autocast."""
    return F.cross_entropy(_fp32(logits), y, reduction="none")


def input_gradient(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *,
                   create_graph: bool) -> tuple[Tensor, Tensor]:
    """Logits and d(sum_i CE_i)/dx on a fresh leaf copy of x.

    Row i is the per-sample input gradient dCE_i/dx_i whenever samples do not interact
    (eval-mode BatchNorm); with train-mode BatchNorm it also carries the batch-statistics
    coupling, exactly like the official code's gradient of the batch loss.
    ``create_graph=True`` keeps the graph so a loss on the gradient can be backpropagated
    into the model's parameters (double backprop).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(cross_entropy(logits, y).sum(), x, create_graph=create_graph)
    return logits, grad


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{option}={value!r} is not valid; choose one of {list(choices)}")
    return value


def _kl_scale(kl_scale: float | None, num_classes: int) -> float:
    """None -> C / 10 above 10 classes, else 1: x10 on CIFAR-100 as the RSLAD README / MTARD CIFAR-100
    script (undoing the /C down to CIFAR-10's /10), and by the same rule x20 on Tiny-ImageNet's 200
    classes (our choice: no official value exists)."""
    if kl_scale is not None:
        return float(kl_scale)
    return num_classes / 10 if num_classes > 10 else 1.0


def _all_reduce_mean_(t: Tensor) -> Tensor:
    """Average a tensor over processes in place when torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def _all_reduce_sum_(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t

# ----------------------------------------------------------------------------- forwards


def _frozen_forward(model: nn.Module | None, x: Tensor | None, what: str) -> Tensor:
    if model is None:
        raise ValueError(f"this method needs the {what}; pass {what}=... to Forward")
    if x is None:
        raise ValueError("x_adv is not set; run the method's attack and set Forward.x_adv before the loss")
    with torch.no_grad():
        return model(x)


class Forward:
    """Lazily computed, cached forwards of one batch; a loss asks only for what it needs.

    The student runs with grad (in whatever mode the trainer set, normally train); the
    teachers run under no_grad and must be frozen in eval mode. Any attribute may be
    pre-set to share a forward, e.g. ``f.t_clean = logits`` after the attack used them,
    and ``x_adv`` may be set after construction (the attack target is asked for first).
    """

    def __init__(self, student: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None = None,
                 teacher: nn.Module | None = None, nat_teacher: nn.Module | None = None,
                 epoch: int = 0, num_classes: int = 10):
        self.student, self.teacher, self.nat_teacher = student, teacher, nat_teacher
        self.x, self.y, self.x_adv = x, y, x_adv
        self.epoch, self.num_classes = epoch, num_classes

    @cached_property
    def s_adv(self) -> Tensor:
        """student(x') with grad."""
        if self.x_adv is None:
            raise ValueError("x_adv is not set; run the method's attack and set Forward.x_adv before the loss")
        return self.student(self.x_adv)

    @cached_property
    def s_clean(self) -> Tensor:
        """student(x) with grad."""
        return self.student(self.x)

    @cached_property
    def t_clean(self) -> Tensor:
        """teacher(x) under no_grad."""
        return _frozen_forward(self.teacher, self.x, "teacher")

    @cached_property
    def t_adv(self) -> Tensor:
        """teacher(x') under no_grad."""
        return _frozen_forward(self.teacher, self.x_adv, "teacher")

    @cached_property
    def nt_clean(self) -> Tensor:
        """nat_teacher(x) under no_grad (MTARD's clean teacher)."""
        return _frozen_forward(self.nat_teacher, self.x, "nat_teacher")

# ----------------------------------------------------------------------------- method base and registry


class Method(nn.Module):
    """Base class: a per-sample training loss plus the attack and recipe it trains with.

    Constructor keyword arguments are the method's options (``get_method`` validates
    them); each is stored as an attribute of the same name (see ``hparams``).
    """

    name: ClassVar[str] = ""
    attack: ClassVar[AttackConfig | None] = None
    optim: ClassVar[OptimDefaults] = _ARD_OPTIM
    needs_teacher: ClassVar[bool] = True
    needs_nat_teacher: bool = False
    needs_init_checkpoint: ClassVar[bool] = False  # fine-tunes a given robust model (FRL's hot start)
    needs_validation: ClassVar[bool] = False       # begin_epoch reads the validation split (FRL)
    # Raised when a method's fixed recipe (attack, loss) changes, so that its cached runs are retrained
    # (part of the run key when > 0; other methods' keys stay as they were).
    revision: ClassVar[int] = 0

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.num_classes = int(num_classes)

    @classmethod
    def option_defaults(cls) -> dict[str, object]:
        """The method's options and their defaults (constructor keywords except num_classes)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in params if p.name not in ("self", "num_classes")}

    @property
    def hparams(self) -> dict[str, object]:
        """Options in use (resolved, e.g. kl_scale), for logs and provenance."""
        return {k: getattr(self, k) for k in self.option_defaults()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())

    def attack_target(self, f: Forward) -> Tensor | None:
        """Target probabilities for a "kl" attack (None for "ce" attacks)."""
        return None

    def attack_eps(self, y: Tensor, epoch: int) -> float | Tensor:
        """Attack radius: a float, or a per-sample (B,) tensor (CFA's class-wise margins)."""
        if self.attack is None:
            raise ValueError(f"method {self.name!r} trains without an attack")
        return self.attack.eps

    def watch_attack(self, f: Forward):
        """An ``observe(x_adv, logits)`` callable for the training attack's iterates, or None (BAT's early stops)."""
        return None

    def attack_done(self, f: Forward, x_adv: Tensor, watcher) -> Tensor:
        """The adversarial example the loss uses, given the attack's final iterate and ``watch_attack``'s watcher."""
        return x_adv

    def per_sample_loss(self, f: Forward) -> Tensor:
        raise NotImplementedError

    def forward(self, f: Forward) -> Tensor:
        return self.per_sample_loss(f)

    def begin_epoch(self, epoch: int, validate: Callable[[], tuple[Tensor, Tensor, Tensor]] | None = None) -> None:
        """Called before each training epoch; ``validate()`` gives (y, clean_correct, robust_correct) on the
        validation split (PGD-20, eval mode, fp32) for methods with ``needs_validation``."""

    def end_epoch(self, epoch: int, stats=None) -> None:
        """Called once after each training epoch with that epoch's ``ClassStats``."""

    def on_lr_decay(self) -> None:
        """Called at each learning-rate milestone."""


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a Method subclass under ``cls.name``."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return list(METHODS)


def parse_method_name(name: str) -> tuple[str, bool]:
    """'fair-ard' -> ('ard', True), 'ard' -> ('ard', False); unknown base -> ValueError."""
    fair = name.startswith("fair-")
    base = name[len("fair-"):] if fair else name
    if base not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {list_methods()} (each also as 'fair-<name>')")
    return base, fair


def get_method(name: str, num_classes: int = 10, **options) -> Method:
    """Build a method by name. ``fair-<name>`` gives the same loss as ``<name>``: the class
    weighting is the trainer's FairWeighting. Options set to None are dropped so unset
    command-line flags keep the method's defaults; an unknown option raises and lists the
    valid ones."""
    base, _ = parse_method_name(name)
    cls = METHODS[base]
    valid = cls.option_defaults()
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {base!r}; valid options (defaults): {valid}")
    return cls(num_classes=num_classes, **options)

# ----------------------------------------------------------------------------- teachers' training objectives


@register_method
class Natural(Method):
    """Standard training, CE(f(x), y); no attack. Used for natural (clean) teachers."""

    name = "natural"
    attack = None
    optim = _AT_OPTIM
    needs_teacher = False

    def per_sample_loss(self, f: Forward) -> Tensor:
        return cross_entropy(f.s_clean, f.y)


@register_method
class PGDAT(Method):
    """PGD adversarial training (Madry et al.), CE(f(x'), y); CE attack, uniform start, train mode."""

    name = "pgd_at"
    attack = _CE_UNIFORM_TRAIN
    optim = _AT_OPTIM
    needs_teacher = False

    def per_sample_loss(self, f: Forward) -> Tensor:
        return cross_entropy(f.s_adv, f.y)


@register_method
class TRADES(Method):
    """TRADES: CE(f(x), y) + beta * KL(sigma(f(x)) || sigma(f(x'))), KL summed over classes.

    Official TRADES code: ``KLDivLoss(size_average=False)`` / batch size, i.e. the summed
    KL per sample; the clean target is not detached. Attack: KL to sigma(f(x)) (computed
    with the student in eval mode), 0.001 N(0, I) start. TRADES's own CIFAR script uses
    eps 0.031 and step 0.007; this registry defaults to 8/255 and 2/255 as the other methods, and the
    options ``eps`` / ``step_size`` set the script's values (the ``paper`` profile's teacher does).
    """

    name = "trades"
    attack = _KL_NORMAL_EVAL
    optim = _AT_OPTIM
    needs_teacher = False

    def __init__(self, num_classes: int = 10, beta: float = 6.0, eps: float | None = None,
                 step_size: float | None = None):
        super().__init__(num_classes)
        self.beta, self.eps, self.step_size = beta, eps, step_size
        if eps is not None or step_size is not None:  # e.g. the TRADES script's eps 0.031, step 0.007
            self.attack = dataclasses.replace(type(self).attack, eps=type(self).attack.eps if eps is None else eps,
                                              step_size=type(self).attack.step_size if step_size is None else step_size)

    def _mix(self, f: Forward) -> tuple[float | Tensor, float | Tensor]:
        """(CE weight, KL weight), scalars or per-sample tensors."""
        return 1.0, self.beta

    def attack_target(self, f: Forward) -> Tensor:
        # Fresh no-grad forward in the attack's (eval) mode; must not fill the cached s_clean.
        with torch.no_grad():
            return F.softmax(_fp32(f.student(f.x)), dim=1)

    def per_sample_loss(self, f: Forward) -> Tensor:
        ce_w, kl_w = self._mix(f)
        return ce_w * cross_entropy(f.s_clean, f.y) + kl_w * kl_div(f.s_clean, f.s_adv, reduction="sum")

# ----------------------------------------------------------------------------- distillation methods


@register_method
class ARD(Method):
    """ARD (Goldblum et al., AAAI 2020; papers.md 3.1, 1.6 Fair-ARD).

    alpha * tau^2 * KL(sigma_tau(T(x)) || sigma_tau(S(x'))) / C + (1 - alpha) * CE(S(x), y).
    KL convention: ``KLDivLoss()`` mean over B*C -> per sample /C, times tau^2 (=900 at
    tau=30). No CIFAR-100 rescaling. Teacher on clean x. Attack: student CE, uniform
    start, student in train mode. With alpha=1 the CE term (and its clean forward) is skipped.

    Switch ``official_clean_forward`` (default False): the ARD and Fair-ARD scripts run the clean
    train-mode student forward every batch even at alpha=1, where its output is unused. It changes
    nothing but the BatchNorm running statistics (about 14 % of the eval-time statistics then come
    from clean batches: EMA 0.1 over the batch's train-mode forwards, the clean one last).
    """

    name = "ard"
    attack = _CE_UNIFORM_TRAIN
    optim = dataclasses.replace(_ARD_OPTIM, cifar100_batch_size=256)

    def __init__(self, num_classes: int = 10, tau: float = 30.0, alpha: float = 1.0,
                 official_clean_forward: bool = False):
        super().__init__(num_classes)
        self.tau, self.alpha, self.official_clean_forward = tau, alpha, official_clean_forward

    def per_sample_loss(self, f: Forward) -> Tensor:
        loss = self.alpha * self.tau ** 2 * kl_div(f.t_clean, f.s_adv, tau=self.tau, reduction="mean")
        if self.alpha != 1:
            loss = loss + (1 - self.alpha) * cross_entropy(f.s_clean, f.y)
        elif self.official_clean_forward:
            _unused_forward(f.student, f.x)
        return loss


def _unused_forward(model: nn.Module, x: Tensor) -> None:
    """A forward whose output the official script never uses: it only moves train-mode BatchNorm running statistics."""
    with torch.no_grad():
        model(x)


@register_method
class IAD(Method):
    """IAD-I (Zhu et al., ICLR 2022; papers.md 3.2, 1.6 Fair-IAD).

    tau^2 * KL(sigma_tau(T(x)) || sigma_tau(S(x'))), and from epoch ``begin`` on
    + (1 - a_i) * KL(sigma(S(x)) || sigma(S(x'))) with a_i = P_T(y_i | x'_i)^beta
    (teacher confidence at the student's x', detached; S(x) is *not* detached),
    + (1 - alpha) * CE(S(x'), y). KL convention: summed over classes (true KL), batch mean.
    Attack as ARD.

    Switch ``official_clean_forward`` (default False): the IAD and Fair-IAD scripts run, every batch,
    the clean train-mode student forward (unused before ``begin``) and one more, unused, forward on
    x'; they change nothing but the BatchNorm running statistics.
    """

    name = "iad"
    attack = _CE_UNIFORM_TRAIN
    optim = _ARD_OPTIM

    def __init__(self, num_classes: int = 10, tau: float = 1.0, alpha: float = 1.0, beta: float = 0.1,
                 begin: int = 60, official_clean_forward: bool = False):
        super().__init__(num_classes)
        self.tau, self.alpha, self.beta, self.begin = tau, alpha, beta, begin
        self.official_clean_forward = official_clean_forward

    def per_sample_loss(self, f: Forward) -> Tensor:
        loss = self.tau ** 2 * kl_div(f.t_clean, f.s_adv, tau=self.tau, reduction="sum")
        if f.epoch >= self.begin:
            with torch.no_grad():
                trust = F.softmax(_fp32(f.t_adv), dim=1).gather(1, f.y[:, None]).squeeze(1) ** self.beta
            loss = loss + (1 - trust) * kl_div(f.s_clean, f.s_adv, reduction="sum")
        elif self.official_clean_forward:
            _unused_forward(f.student, f.x)
        if self.official_clean_forward:
            _unused_forward(f.student, f.x_adv)  # the script's `basic_net(pert_inputs).detach()`
        if self.alpha != 1:
            loss = loss + (1 - self.alpha) * cross_entropy(f.s_adv, f.y)
        return loss


@register_method
class RSLAD(Method):
    """RSLAD (Zi et al., ICCV 2021; papers.md 3.3, 1.6 Fair-RSLAD).

    kl_scale * [5/6 * KL(sigma(T(x)) || sigma(S(x'))) / C + 1/6 * KL(sigma(T(x)) || sigma(S(x))) / C]
    with log(p_T + 1e-5) inside the KL, as the code computes it. KL convention: element-wise
    mean over B*C -> per sample /C; ``kl_scale`` None = x10 on CIFAR-100 (RSLAD README).
    Attack: KL to sigma(T(x)), 0.001 N(0, I) start, student in eval mode.
    """

    name = "rslad"
    attack = _KL_NORMAL_EVAL
    optim = _RSLAD_OPTIM

    def __init__(self, num_classes: int = 10, kl_scale: float | None = None):
        super().__init__(num_classes)
        self.kl_scale = _kl_scale(kl_scale, self.num_classes)

    def attack_target(self, f: Forward) -> Tensor:
        return F.softmax(_fp32(f.t_clean), dim=1)

    def per_sample_loss(self, f: Forward) -> Tensor:
        kl = functools.partial(kl_div, f.t_clean, reduction="mean", target_log_eps=_RSLAD_LOG_EPS)
        return self.kl_scale * (5 / 6 * kl(f.s_adv) + 1 / 6 * kl(f.s_clean))


@register_method
class MTARD(Method):
    """MTARD (Zhao et al., ECCV 2022; papers.md 3.4, 1.6 Fair-MTARD).

    ``kl_scale * [lambda_adv * KL(sigma(T_adv(x')) || sigma(S(x'))) / C
    + lambda_nat * KL(sigma(T_nat(x)) || sigma(S(x))) / C]``,
    KL with log(p + 1e-5) and /C as RSLAD; ``kl_scale`` None = x10 on CIFAR-100 (MTARD's
    CIFAR-100 script). Attack: student CE, 0.001 N(0, I) start, eval mode.

    Normalisation loss balance, every training batch: L^(0) = the first batch's batch-mean
    KLs (buffers, with a flag buffer), L^ = L / L^(0),
    lambda_nat <- lambda_nat - eta * (lambda_nat - L^_nat / (L^_adv + L^_nat)),
    lambda_adv = 1 - lambda_nat. As in the official script the batch's loss already uses the
    updated lambdas. The batch means are unweighted (no class weights) and averaged over
    processes. ``eta`` (0.025) is multiplied by 0.1 at each lr decay.

    Switch ``mtard_clean_target``: "natural_teacher" (MTARD's intent: T_nat(x)) or
    "robust_teacher_adv" (the Fair-MTARD script's quirk: the clean-logit target is the
    robust teacher on x', and the natural teacher is unused).
    """

    name = "mtard"
    attack = _CE_NORMAL_EVAL
    optim = _RSLAD_OPTIM

    def __init__(self, num_classes: int = 10, eta: float = 0.025, mtard_clean_target: str = "natural_teacher",
                 kl_scale: float | None = None):
        super().__init__(num_classes)
        self.eta = eta
        self.mtard_clean_target = _check_choice("mtard_clean_target", mtard_clean_target,
                                                ("natural_teacher", "robust_teacher_adv"))
        self.needs_nat_teacher = mtard_clean_target == "natural_teacher"
        self.kl_scale = _kl_scale(kl_scale, self.num_classes)
        self.register_buffer("lambda_adv", torch.tensor(0.5))
        self.register_buffer("lambda_nat", torch.tensor(0.5))
        self.register_buffer("eta_now", torch.tensor(float(eta)))
        self.register_buffer("init_loss", torch.zeros(2))  # L^(0) = (adv, nat)
        self.register_buffer("init_loss_set", torch.tensor(False))

    @torch.no_grad()
    def _balance(self, loss_adv: Tensor, loss_nat: Tensor) -> None:
        losses = _all_reduce_mean_(torch.stack([loss_adv, loss_nat]).float())
        # torch.where instead of an `if` on the flag: no host sync in the hot loop.
        self.init_loss.copy_(torch.where(self.init_loss_set, self.init_loss, losses))
        self.init_loss_set.fill_(True)
        rel = losses / self.init_loss
        self.lambda_nat.sub_(self.eta_now * (self.lambda_nat - rel[1] / rel.sum()))
        self.lambda_adv.copy_(1 - self.lambda_nat)

    def per_sample_loss(self, f: Forward) -> Tensor:
        nat_target = f.nt_clean if self.mtard_clean_target == "natural_teacher" else f.t_adv
        kl_adv = kl_div(f.t_adv, f.s_adv, reduction="mean", target_log_eps=_RSLAD_LOG_EPS)
        kl_nat = kl_div(nat_target, f.s_clean, reduction="mean", target_log_eps=_RSLAD_LOG_EPS)
        if self.training:
            self._balance(kl_adv.detach().mean(), kl_nat.detach().mean())
        # Clones: the buffers change in place next batch, autograd must not see them move.
        return self.kl_scale * (self.lambda_adv.clone() * kl_adv + self.lambda_nat.clone() * kl_nat)

    def on_lr_decay(self) -> None:
        self.eta_now.mul_(0.1)


@register_method
class KDIGA(Method):
    """KDIGA: KD with input gradient alignment (Shao et al., arXiv 2110.12072; papers.md 2.2).

    Clean inputs only, no attack:
    alpha * tau^2 * KL(sigma_tau(T(x)) || sigma_tau(S(x))) / C + (1 - alpha) * CE(S(x), y)
    + gamma * align_i. KL convention: ``KLDivLoss()`` mean -> /C, times tau^2.

    g = dCE/dx per sample; the student's with create_graph=True (double backprop, so the
    alignment term trains the student), the teacher's on its own fresh leaf and detached.
    One student clean forward serves the KL, the CE and the gradient, and the teacher's
    gradient forward also provides T(x), as in the author's code.

    Switch ``grad_align``: "per_sample" (the paper's intent, align_i = ||g_S,i - g_T,i||_2) or
    "official_batch" (the author's fork: gamma/B * ||G_S - G_T||_F with G the gradient of
    the batch-MEAN CE, a batch scalar returned as every sample's share so the trainer's
    mean over B reproduces it; the fork's gamma differs between commits).

    ``fp32_grad`` (default True) runs the gradient forwards with autocast disabled: bf16
    input gradients are too coarse to take a small difference of.

    The two forms are not comparable value for value: the batch form is
    gamma / B^1.5 * rms_i ||g_S,i - g_T,i||, the per-sample one gamma * mean_i ||g_S,i - g_T,i||,
    so the author's gamma = 0.5 at B = 128 equals a per-sample gamma of about 0.5 / 1448 = 3.5e-4
    (exactly so when every sample's gap has the same norm, more when they differ:
    ``per_sample_gamma``). The default gamma = 0.5 per sample is therefore about three orders of
    magnitude stronger than the author's code at its default.
    """

    @staticmethod
    def per_sample_gamma(batch_gamma: float, batch_size: int) -> float:
        """The per-sample gamma that equals the author's batch form at ``batch_gamma`` when every sample's
        gradient gap has the same norm (rms = mean): batch_gamma / B^1.5."""
        return batch_gamma / batch_size ** 1.5

    name = "kdiga"
    attack = None
    optim = dataclasses.replace(_ARD_OPTIM, cifar100_batch_size=256)

    def __init__(self, num_classes: int = 10, alpha: float = 0.5, tau: float = 1.0, gamma: float = 0.5,
                 grad_align: str = "per_sample", fp32_grad: bool = True):
        super().__init__(num_classes)
        self.alpha, self.tau, self.gamma, self.fp32_grad = alpha, tau, gamma, fp32_grad
        self.grad_align = _check_choice("grad_align", grad_align, ("per_sample", "official_batch"))

    def _kd_pair(self, f: Forward) -> tuple[Tensor, Tensor]:
        """(teacher logits, student logits) of the distillation KL."""
        return f.t_clean, f.s_clean

    def _gradient_terms(self, f: Forward) -> tuple[Tensor, Tensor]:
        """(g_S with graph, g_T detached); fills f.s_clean and f.t_clean from the same forwards."""
        # Disable autocast only when asked; never switch it on when the trainer has it off.
        precision = torch.autocast(f.x.device.type, enabled=False) if self.fp32_grad else contextlib.nullcontext()
        with precision:
            t_logits, g_t = input_gradient(f.teacher, f.x, f.y, create_graph=False)
            s_logits, g_s = input_gradient(f.student, f.x, f.y, create_graph=True)
        if "t_clean" not in f.__dict__:
            f.t_clean = t_logits.detach()
        f.s_clean = s_logits
        return g_s, g_t.detach()

    def alignment(self, g_s: Tensor, g_t: Tensor) -> Tensor:
        """Per-sample alignment term (B,) before gamma."""
        diff = (g_s - g_t).flatten(1)
        if self.grad_align == "per_sample":
            return torch.linalg.vector_norm(diff, dim=1)
        batch = diff.shape[0]
        # ||G_S - G_T||_F with G = diff / B (gradient of the batch-mean CE), times 1/B.
        share = torch.linalg.vector_norm(diff / batch) / batch
        return share.expand(batch)

    def per_sample_loss(self, f: Forward) -> Tensor:
        if f.teacher is None:
            raise ValueError("kdiga needs the teacher; pass teacher=... to Forward")
        g_s, g_t = self._gradient_terms(f)
        target, student = self._kd_pair(f)
        loss = self.alpha * self.tau ** 2 * kl_div(target, student, tau=self.tau, reduction="mean")
        loss = loss + (1 - self.alpha) * cross_entropy(f.s_clean, f.y)
        return loss + self.gamma * self.alignment(g_s, g_t)


@register_method
class KDIGAARD(KDIGA):
    """KDIGA-ARD (author's fork, ``distill_method='kdiga_ard'``; papers.md 2.2).

    KDIGA with the clean KD term replaced by ARD's adversarial one:
    alpha * tau^2 * KL(sigma_tau(T(.)) || sigma_tau(S(x'))) / C + (1 - alpha) * CE(S(x), y)
    + gamma * align (on clean x). Attack: student CE, uniform start, train mode (ARD's).

    Attack step 1.6/255 (the fork's ``--step_size 16/255/10`` for ``kdiga_ard``), not ARD's 2/255.

    Switch ``kdiga_ard_teacher_input``: "clean" (ARD's teacher on x, the default) or "adv"
    (the fork's quirk: teacher on x').
    """

    name = "kdiga_ard"
    attack = dataclasses.replace(_CE_UNIFORM_TRAIN, step_size=1.6 / 255)
    revision = 1  # 1: attack step 2/255 -> 1.6/255

    def __init__(self, num_classes: int = 10, alpha: float = 0.5, tau: float = 1.0, gamma: float = 0.5,
                 grad_align: str = "per_sample", fp32_grad: bool = True, kdiga_ard_teacher_input: str = "clean"):
        super().__init__(num_classes, alpha=alpha, tau=tau, gamma=gamma, grad_align=grad_align, fp32_grad=fp32_grad)
        self.kdiga_ard_teacher_input = _check_choice("kdiga_ard_teacher_input", kdiga_ard_teacher_input,
                                                     ("clean", "adv"))

    def _kd_pair(self, f: Forward) -> tuple[Tensor, Tensor]:
        return (f.t_clean if self.kdiga_ard_teacher_input == "clean" else f.t_adv), f.s_adv


@register_method
class ABSLD(Method):
    """ABSLD (Zhao et al., NeurIPS 2024; papers.md 5.2): RSLAD with class-wise teacher temperatures.

    ``kl_scale * [5/6 * KL(sigma(T(x) / tau_adv[y]) || sigma(S(x'))) / C
    + 1/6 * KL(sigma(T(x) / tau_nat[y]) || sigma(S(x))) / C]``,
    student temperature 1, KL with log(p + 1e-5) and /C as RSLAD. ``kl_scale`` None = x10 on
    CIFAR-100, inherited from RSLAD (ABSLD's code has CIFAR-10 only). Attack: KL to
    sigma(T(x) / tau_adv[y]), 0.001 N(0, I) start, eval mode.

    During training the class sums of the student's CE on x' and on x accumulate in
    buffers; ``end_epoch`` applies, separately for adv and nat,
    ``tau_k <- clip(tau_k - r * (L_k - mean L) / max_j |L_j - mean L|, tau_min, tau_max)``
    and resets the sums. r (0.1) is multiplied by 0.1 at each lr decay; the official
    script decays r *before* the temperature update of the milestone epoch.

    Switch ``absld_temperature``: "separate" (the paper) or "official_product" (the code's
    in-place division makes both terms and the attack target use tau_adv * tau_nat).
    """

    name = "absld"
    attack = _KL_NORMAL_EVAL
    optim = _RSLAD_OPTIM

    def __init__(self, num_classes: int = 10, r: float = 0.1, tau_min: float = 0.5, tau_max: float = 5.0,
                 absld_temperature: str = "separate", kl_scale: float | None = None):
        super().__init__(num_classes)
        self.r, self.tau_min, self.tau_max = r, tau_min, tau_max
        self.absld_temperature = _check_choice("absld_temperature", absld_temperature,
                                               ("separate", "official_product"))
        self.kl_scale = _kl_scale(kl_scale, self.num_classes)
        c = self.num_classes
        self.register_buffer("tau_adv", torch.ones(c))
        self.register_buffer("tau_nat", torch.ones(c))
        self.register_buffer("r_now", torch.tensor(float(r)))
        self.register_buffer("ce_sum_adv", torch.zeros(c))
        self.register_buffer("ce_sum_nat", torch.zeros(c))

    def temperatures(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample teacher temperatures (adv, nat), each (B,)."""
        t_adv, t_nat = self.tau_adv[y], self.tau_nat[y]
        if self.absld_temperature == "official_product":
            t_adv = t_nat = t_adv * t_nat
        return t_adv, t_nat

    def attack_target(self, f: Forward) -> Tensor:
        t_adv, _ = self.temperatures(f.y)
        t = _fp32(f.t_clean)
        return F.softmax(t / t_adv.to(t.dtype)[:, None], dim=1)

    def per_sample_loss(self, f: Forward) -> Tensor:
        t_adv, t_nat = self.temperatures(f.y)
        kl = functools.partial(kl_div, f.t_clean, student_tau=1.0, reduction="mean", target_log_eps=_RSLAD_LOG_EPS)
        loss = self.kl_scale * (5 / 6 * kl(f.s_adv, tau=t_adv) + 1 / 6 * kl(f.s_clean, tau=t_nat))
        if self.training:
            with torch.no_grad():
                self.ce_sum_adv.index_add_(0, f.y, cross_entropy(f.s_adv.detach(), f.y).to(self.ce_sum_adv.dtype))
                self.ce_sum_nat.index_add_(0, f.y, cross_entropy(f.s_clean.detach(), f.y).to(self.ce_sum_nat.dtype))
        return loss

    @torch.no_grad()
    def end_epoch(self, epoch: int, stats=None) -> None:
        for tau, sums in ((self.tau_adv, self.ce_sum_adv), (self.tau_nat, self.ce_sum_nat)):
            _all_reduce_sum_(sums)
            gap = sums - sums.mean()
            scale = gap.abs().max()
            # All classes equal (or no data): no update, where the official code would divide 0/0.
            step = torch.where(scale > 0, gap / scale.clamp_min(torch.finfo(gap.dtype).tiny), torch.zeros_like(gap))
            tau.sub_(self.r_now * step).clamp_(self.tau_min, self.tau_max)
            sums.zero_()

    def on_lr_decay(self) -> None:
        self.r_now.mul_(0.1)


@register_method
class CFA(TRADES):
    """CFA on TRADES (Wei et al., CVPR 2023; papers.md 4.3; PKU-ML/CFA train.py, attack.py).

    Per-sample (1 - beta_k) * CE(f(x), y) + beta_k * KL(sigma(f(x)) || sigma(f(x'))), KL summed
    over classes (TRADES convention). R_k = previous epoch's training robust accuracy of
    class k (``end_epoch(epoch, stats)`` reads ``stats.mean("robust_acc")``).
    From epoch ``begin`` (10) on, once R exists:
    CCR beta_k = (lambda2 + R_k) * beta / (1 + (lambda2 + R_k) * beta),
    CCM eps_k = (lambda1 + R_k) * eps (``attack_eps`` returns a per-sample tensor).
    Before that, beta_k = beta / (1 + beta) for every class and eps is uniform, as in the
    official script. FAWA (weight EMA gated on validation worst-class robust accuracy) is
    the trainer's job; ``fawa_decay`` and ``fawa_threshold`` (README value 0.2; the
    script's default is 0.24) are exposed for it.
    """

    name = "cfa"
    optim = OptimDefaults(epochs=200, milestones=(100, 150), weight_decay=5e-4)

    def __init__(self, num_classes: int = 10, beta: float = 6.0, lambda1: float = 0.5, lambda2: float = 0.5,
                 begin: int = 10, ccm: bool = True, ccr: bool = True, fawa_decay: float = 0.88,
                 fawa_threshold: float = 0.2):
        super().__init__(num_classes, beta=beta)
        self.lambda1, self.lambda2, self.begin, self.ccm, self.ccr = lambda1, lambda2, begin, ccm, ccr
        self.fawa_decay, self.fawa_threshold = fawa_decay, fawa_threshold
        self.register_buffer("class_robust_acc", torch.zeros(self.num_classes))
        self.register_buffer("has_stats", torch.tensor(False))

    def class_beta(self, y: Tensor, epoch: int) -> float | Tensor:
        """beta_k of each sample's class (a float before calibration starts)."""
        base = self.beta / (1 + self.beta)
        if not (self.ccr and epoch >= self.begin):
            return base
        s = (self.lambda2 + self.class_robust_acc[y]) * self.beta
        return torch.where(self.has_stats, s / (1 + s), torch.full_like(s, base))

    def _mix(self, f: Forward) -> tuple[float | Tensor, float | Tensor]:
        beta_k = self.class_beta(f.y, f.epoch)
        return 1 - beta_k, beta_k

    def attack_eps(self, y: Tensor, epoch: int) -> float | Tensor:
        eps = self.attack.eps
        if not (self.ccm and epoch >= self.begin):
            return eps
        eps_k = (self.lambda1 + self.class_robust_acc[y]) * eps
        return torch.where(self.has_stats, eps_k, torch.full_like(eps_k, eps))

    @torch.no_grad()
    def end_epoch(self, epoch: int, stats=None) -> None:
        if stats is None:
            raise ValueError("cfa.end_epoch needs the epoch's ClassStats with robust_correct recorded "
                             "(ClassStats.update(y, robust_correct=...))")
        stats.all_reduce()
        self.class_robust_acc.copy_(stats.mean("robust_acc").to(self.class_robust_acc.device))
        self.has_stats.fill_(True)


# ----------------------------------------------------------------------------- robust-fairness baselines


def frl_class_weights(lmbda: Tensor) -> Tensor:
    """FRL's cost-sensitive class weights from multipliers lambda (C,): w_k = 1/C + lambda_k - sum_j lambda_j / C."""
    c = lmbda.numel()
    return 1 / c + lmbda - lmbda.sum() / c


def frl_project(lmbda: Tensor, limit: float) -> Tensor:
    """Clamp the multipliers at 0 and, if they sum above ``limit``, rescale them to sum to it."""
    lmbda = lmbda.clamp(min=0)
    total = lmbda.sum()
    return torch.where(total > limit, lmbda * limit / total.clamp_min(torch.finfo(lmbda.dtype).tiny), lmbda)


@register_method
class FRL(Method):
    """FRL-RW, fair robust learning by reweighting (Xu et al., ICML 2021; papers.md 4.1;
    hannxu123/fair_robust ``frlrw.py``, ``utils_frl.py``).

    Fine-tunes a robust model (``TrainConfig.init_checkpoint``, the official hot start: a PGD-AT
    model of the same architecture) with a class-weighted TRADES loss, normalised by the weights
    of the batch: ``sum_i (w0_{y_i} CE(f(x_i), y_i) + beta w1_{y_i} KL(sigma(f(x_i)) || sigma(f(x'_i))))
    / sum_i (w0_{y_i} + w1_{y_i})``, returned per sample as B times sample i's share, so that the
    trainer's mean over B reproduces it (over several processes each normalises by its own share of the
    batch). KL summed over classes; the clean target is not detached.
    Attack: TRADES' (KL to sigma(f(x)), 0.001 N(0, I) start, eval mode, 10 x 2/255), radius eps * w2_y.

    Before every epoch (``begin_epoch``), on the validation split (PGD-20, 2/255, uniform start, eval
    mode; the script holds out 300 images per class): per-class clean error e0_k and boundary error
    e1_k = clean acc - PGD acc, their totals over the split, violations g = e_k - e_total - bound,
    then lambda0 <- P(lambda0 + rate1 g0), lambda1 <- P(lambda1 + 2 rate1 g1) (P: clamp at 0, rescale
    to sum ``limit`` if above it; g0 clipped below at -1000 as the code does), w0 = w(lambda0),
    w1 = w(lambda1) (``frl_class_weights``); all multipliers start at 0 (weights 1/C). ``rate1`` is
    halved every 40 epochs (before the update of the 40th, 80th, ... epoch, 1-indexed, as the script).
    Defaults are the scripts' argparse defaults: beta 1, bound 0.1 for both constraints, rate1 0.05,
    rate2 0.1, limit 0.5; SGD lr 0.001, wd 5e-4, 120 epochs, x0.1 after epochs 40 and 80.
    (papers.md quotes beta 1.5 and bound 0.07 for RMRW; the scripts' defaults are used here.)
    """

    name = "frl-rw"
    attack = _KL_NORMAL_EVAL
    optim = OptimDefaults(epochs=120, milestones=(40, 80), lr=0.001, weight_decay=5e-4)
    needs_teacher = False
    needs_init_checkpoint = True
    needs_validation = True
    remargin: ClassVar[bool] = False

    def __init__(self, num_classes: int = 10, beta: float = 1.0, bound_clean: float = 0.1,
                 bound_boundary: float = 0.1, rate1: float = 0.05, rate2: float = 0.1, limit: float = 0.5,
                 rate1_halving: int = 40):
        super().__init__(num_classes)
        self.beta, self.bound_clean, self.bound_boundary = beta, bound_clean, bound_boundary
        self.rate1, self.rate2, self.limit, self.rate1_halving = rate1, rate2, limit, rate1_halving
        c = self.num_classes
        self.register_buffer("lambda_clean", torch.zeros(c))
        self.register_buffer("lambda_boundary", torch.zeros(c))
        self.register_buffer("lambda_margin", torch.zeros(c))

    @property
    def weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """(w0 clean-loss weights, w1 boundary-loss weights, w2 radius multipliers), each (C,)."""
        margin = (torch.exp(2 * self.lambda_margin).clamp(0.98, 2.5) if self.remargin
                  else torch.ones_like(self.lambda_margin))
        return frl_class_weights(self.lambda_clean), frl_class_weights(self.lambda_boundary), margin

    def rate1_at(self, epoch: int) -> float:
        return self.rate1 * 0.5 ** ((epoch + 1) // self.rate1_halving)

    @torch.no_grad()
    def update_multipliers(self, epoch: int, y: Tensor, clean_correct: Tensor, robust_correct: Tensor) -> None:
        """One constraint update from validation predictions (y, clean_correct, robust_correct), each (N,)."""
        counts = torch.bincount(y, minlength=self.num_classes).clamp_min(1).to(self.lambda_clean.dtype)
        per_class = lambda v: torch.zeros_like(counts).index_add_(0, y, v.to(counts.dtype)) / counts  # noqa: E731
        clean_acc, robust_acc = per_class(clean_correct), per_class(robust_correct)
        total_clean, total_robust = clean_correct.float().mean(), robust_correct.float().mean()
        gap_clean = (1 - clean_acc) - (1 - total_clean) - self.bound_clean
        gap_boundary = (clean_acc - robust_acc) - (total_clean - total_robust) - self.bound_boundary
        rate1 = self.rate1_at(epoch)
        self.lambda_clean.copy_(frl_project(self.lambda_clean + rate1 * gap_clean.clamp(min=-1000), self.limit))
        self.lambda_boundary.copy_(frl_project(self.lambda_boundary + 2 * rate1 * gap_boundary.clamp(min=-1000),
                                               self.limit))
        if self.remargin:
            self.lambda_margin.add_(self.rate2 * gap_boundary)

    def begin_epoch(self, epoch: int, validate=None) -> None:
        if validate is None:
            raise ValueError(f"{self.name} updates its multipliers on a validation split: set val_per_class > 0")
        self.update_multipliers(epoch, *validate())

    def attack_target(self, f: Forward) -> Tensor:
        return TRADES.attack_target(self, f)

    def attack_eps(self, y: Tensor, epoch: int) -> float | Tensor:
        return self.attack.eps * self.weights[2][y] if self.remargin else self.attack.eps

    def per_sample_loss(self, f: Forward) -> Tensor:
        w_clean, w_boundary, _ = self.weights
        w0, w1 = w_clean[f.y], w_boundary[f.y]
        share = f.y.numel() / (w0 + w1).sum()
        return share * (w0 * cross_entropy(f.s_clean, f.y) + self.beta * w1 * kl_div(f.s_clean, f.s_adv))


@register_method
class FRLRMRW(FRL):
    """FRL-RMRW: FRL-RW plus re-margining (``frlrmrw.py``, ``utils_frl2.py``): also
    lambda2 <- lambda2 + rate2 * g1 (not projected) and the attack radius of class k is
    eps * clip(exp(2 lambda2_k), 0.98, 2.5)."""

    name = "frl-rmrw"
    remargin = True


@register_method
class BAT(TRADES):
    """BAT, balance adversarial training (Sun et al., AAAI 2023; papers.md 4.2; the authors' ``train.py``,
    ``train_mode/stop_to_{firstadv,lastclean}.py``).

    Per sample: CE(f(x_lc), y) + beta * KL(sigma(f(x)) || sigma(f(x_fa))) + KL(sigma(f(x_lc)) || U)
    + KL(sigma(f(x_fa)) || U), KLs summed over classes (the code's sum / B), U uniform, all three
    forwards in train mode; the clean target is not detached. x_fa and x_lc are the first-adversarial
    and last-clean iterates of a TRADES KL attack (0.001 N(0, I) start, eval mode, 10 x 0.007, eps
    0.031), chosen by ``fairard.attacks.EarlyStops`` with FAT's ``tau`` = 1 as the script calls it.
    One attack trajectory serves both (the script runs two, each from its own 0.001 N start: equal in
    distribution up to that noise, half the attack cost). beta 6; SGD 0.1, wd 2e-4, 200 epochs,
    lr x0.1 from the 75th, 90th and 100th epoch (1-indexed, the script's ``epoch >= 75`` ...).
    """

    name = "bat"
    attack = AttackConfig(loss="kl", random_start="normal", student_mode="eval", eps=0.031, step_size=0.007)
    optim = OptimDefaults(epochs=200, milestones=(74, 89, 99))

    def __init__(self, num_classes: int = 10, beta: float = 6.0, tau: int = 1):
        super().__init__(num_classes, beta=beta)
        self.tau = tau

    def watch_attack(self, f: Forward):
        from .attacks import EarlyStops

        return EarlyStops(f.y, self.tau)

    def attack_done(self, f: Forward, x_adv: Tensor, watcher) -> Tensor:
        f.x_adv_first, f.x_last_clean = watcher.result(x_adv)
        return f.x_adv_first

    def per_sample_loss(self, f: Forward) -> Tensor:
        if "x_last_clean" not in f.__dict__:
            raise ValueError("bat needs its early-stopped attack: run it through Trainer (or set f.x_last_clean)")
        s_last_clean, s_first_adv, s_clean = f.student(f.x_last_clean), f.s_adv, f.s_clean  # the script's order
        uniform = torch.zeros_like(_fp32(s_last_clean))  # log-softmax of equal logits: log(1/C)
        return (cross_entropy(s_last_clean, f.y) + self.beta * kl_div(s_clean, s_first_adv)
                + kl_div(s_last_clean, uniform) + kl_div(s_first_adv, uniform))
