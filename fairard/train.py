"""One training loop for every teacher and student.

Per batch: (1) the method's training attack on the student (``fairard.attacks.pgd``, which also
returns Fair-ARD's geometric kappa for free; an eval-mode attack runs with BatchNorm folded into the
convolutions, as does the frozen teacher: ``fairard.models.folded_batchnorm``), (2) the method's per-sample loss
(``fairard.methods``), (3) optional class weights w_y (``fairard.fairness.FairWeighting``;
``fair-<method>`` turns it on), mean over the batch (divided by B as in the official code),
backward, step.  Statistics stay on the device; the host syncs once every ``SYNC_EVERY`` steps to
stop a diverged run early.

State that changes during training (model, optimiser, method buffers, class weights, FAWA average)
is checkpointed atomically at the end of every epoch.  Everything random is drawn from generators
seeded by ``(seed, epoch)``, and the learning rate is a pure function of the epoch, so a resumed run
reaches the same weights as an uninterrupted one.

Multi-process (torchrun): each rank takes its ``rank::world`` share of every global batch, gradients
are averaged with one flat all-reduce after backward, per-class statistics are summed before the
class weights are recomputed, and only rank 0 writes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import checks
from . import data as D
from .attacks import as_radius, pgd, start_point
from .distributed import sync_batchnorm
from .fairness import ClassStats, FairWeighting
from .methods import METHODS, AttackConfig, Forward, get_method
from .models import (CheckpointError, build_model, folded_batchnorm, load_checkpoint, read_checkpoint,
                     set_batchnorm_folding)
from .utils import provenance, quarantine, resolve_device, save_torch, write_json, write_text

SYNC_EVERY = 50  # steps between host syncs for the divergence check
# Part of every run key. Raised when the training arithmetic changes so that a cached run or a checkpoint
# from older code is retrained instead of reused or resumed. 2: BatchNorm folded into the convolutions
# of the frozen teachers and of eval-mode training attacks (models.conv_bn).
TRAINING_ARITHMETIC = 2
LR_SCHEDULES = ("step", "official_single_decay")
AMP_MODES = ("auto", "bf16", "off")
ENGINES = ("eager", "graph")  # graph: the whole training step replayed from a CUDA graph (fairard.graph_step)


class TrainingDiverged(RuntimeError):
    """The loss, the weights or the class weights became nan/inf; the last good checkpoint is kept
    (a non-finite state is never checkpointed)."""


@dataclass
class TrainConfig:
    """Everything that defines a run; ``None`` means the method's official default.

    Every field is checked when the config is made (``fairard.checks.check_train_config``): counts, epochs,
    batch size and attack steps are integers >= 1 (``n_per_class`` None or 'all': the whole training set),
    ``val_per_class``/``monitor_n`` >= 0 (0: off), lr > 0, beta >= 0, clamp None or 0 < low <= high."""
    method: str                                   # e.g. "ard", "fair-ard", "rslad", "trades"
    student: str = "resnet18"                     # the model being trained (a teacher for teacher methods)
    teacher: str | None = None                    # robust teacher arch (distillation methods)
    teacher_checkpoint: str | None = None
    nat_teacher: str | None = None                # MTARD's natural teacher
    nat_teacher_checkpoint: str | None = None
    init_checkpoint: str | None = None            # start from these weights (FRL fine-tunes a robust model)
    dataset: str = "cifar10"
    data_root: str | None = None
    n_per_class: int | None = None                # class-balanced training subset (None or 'all': all)
    val_per_class: int = 0                        # held-out validation split (CFA's FAWA needs one)
    epochs: int | None = None
    milestones: tuple | None = None               # lr x0.1 at these epochs
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    nesterov: bool | None = None                  # None: True for Fair-* (as the Fair-ARD scripts), else official
    batch_size: int | None = None
    lr_schedule: str = "step"                     # "official_single_decay": ARD/IAD scripts' quirk (decay once)
    beta: float = 2.0                             # Fair-* weighting sharpness
    clamp: tuple | None = (5 / 6, 5 / 2)
    difficulty: str = "kappa"                     # kappa | robust_acc | adv_loss | clean_acc
    attack_steps: int | None = None               # training attack steps (None: the method's, 10)
    method_options: dict = field(default_factory=dict)
    student_kwargs: dict = field(default_factory=dict)
    teacher_kwargs: dict = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"                             # bf16 autocast for attack + training; evaluation stays fp32
    channels_last: bool | None = None             # None: on when amp is on
    pad_mode: str = "zeros"                       # crop padding: zeros (torchvision/official) or reflect
    monitor_n: int = 500                          # held-out test images for the per-epoch clean/PGD monitor
    engine: str = "eager"                         # "graph" (CUDA): same arithmetic, replayed from a CUDA graph

    def __post_init__(self):
        checks.check_train_config(self)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"unknown amp {self.amp!r}; valid: {', '.join(AMP_MODES)}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; valid: {', '.join(ENGINES)}")

    @property
    def base_method(self) -> str:
        return self.method[5:] if self.fair else self.method

    @property
    def fair(self) -> bool:
        return self.method.startswith("fair-")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Hash of the configuration; the device, the data root and the engine do not enter (amp does: it changes
        the numbers; the graph engine replays the eager step's kernels, tests/test_graph_step.py)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("device", "data_root", "engine")}
        d["training_arithmetic"] = TRAINING_ARITHMETIC
        revision = _method_revision(self.base_method)
        if revision:  # only methods whose recipe changed: every other cached run keeps its key
            d["method_revision"] = revision
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _method_revision(name: str) -> int:
    return getattr(METHODS.get(name), "revision", 0)


def lr_at(epoch: int, base_lr: float, milestones, schedule: str = "step") -> float:
    """Learning rate of an epoch: x0.1 at each milestone ('step'), or only ever once
    ('official_single_decay', what the ARD/IAD/Fair-ARD/Fair-IAD scripts effectively do)."""
    passed = sum(epoch >= m for m in milestones)
    if schedule == "official_single_decay":
        passed = min(passed, 1)
    return base_lr * 0.1 ** passed


def _seeded(seed: int, epoch: int, stream: int, device) -> torch.Generator:
    s = int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(s)


def default_amp(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _freeze(model):
    """A teacher: eval mode, no parameter gradients, BatchNorm folded into its convolutions for speed."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    set_batchnorm_folding(model, True)
    return model


def init_distributed() -> tuple[int, int]:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1); returns (rank, world).
    gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return _dist_info()


def _dist_info():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_mean_(tensors) -> None:
    """Average a list of tensors over ranks with one flat all-reduce."""
    _, world = _dist_info()
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


class Trainer:
    """Builds the run from a TrainConfig and trains it; ``fit()`` resumes from ``out_dir`` if it can."""

    def __init__(self, cfg: TrainConfig, out_dir, *, progress: bool = True, recover: bool = False):
        self.cfg, self.out_dir, self.progress = cfg, Path(out_dir), progress
        self.recover = recover  # an unreadable checkpoint: moved aside and recomputed (the store) instead of an error
        self.rank, self.world = _dist_info()
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 32x32 shapes: cuDNN's autotuned kernels pay off at once
        self.amp = default_amp(self.device) if cfg.amp == "auto" else cfg.amp == "bf16"
        self.channels_last = self.amp if cfg.channels_last is None else cfg.channels_last
        self.num_classes = D.NUM_CLASSES[cfg.dataset] if cfg.dataset in D.NUM_CLASSES else None
        if self.num_classes is None:
            raise ValueError(f"unknown dataset {cfg.dataset!r}; valid: {', '.join(D.NUM_CLASSES)}")

        self.method = get_method(cfg.base_method, num_classes=self.num_classes, **cfg.method_options)
        checks.check_model_kwargs(cfg.student, self.num_classes, cfg.student_kwargs, "student_kwargs (--student-kw)")
        if self.method.needs_teacher and cfg.teacher is not None:
            checks.check_model_kwargs(cfg.teacher, self.num_classes, cfg.teacher_kwargs, "teacher_kwargs (--teacher-kw)")
        if cfg.engine == "graph":  # before any data or model is loaded: a CPU or an unsupported method fails at once
            from .graph_step import check_graph_engine
            check_graph_engine(cfg, self.device, self.world)
        od = self.method.optim.for_dataset(cfg.dataset)
        self.epochs = cfg.epochs if cfg.epochs is not None else od.epochs
        self.milestones = cfg.milestones if cfg.milestones is not None else od.milestones
        self.batch_size = cfg.batch_size if cfg.batch_size is not None else od.batch_size
        self.base_lr = cfg.lr if cfg.lr is not None else od.lr
        nesterov = cfg.nesterov if cfg.nesterov is not None else (cfg.fair or od.nesterov)

        self.teacher = self._load_teacher(cfg.teacher, cfg.teacher_checkpoint, "teacher",
                                          self.method.needs_teacher)
        self.nat_teacher = self._load_teacher(cfg.nat_teacher, cfg.nat_teacher_checkpoint, "nat_teacher",
                                              getattr(self.method, "needs_nat_teacher", False))
        self._build_data()
        if self.method.needs_validation and self.val is None:
            raise ValueError(f"method {cfg.method!r} needs a validation split: set val_per_class > 0 (--val-per-class)")
        torch.manual_seed(cfg.seed)
        self.student = self._to_device(self._initial_student())
        if self.world > 1:  # BatchNorm over the global batch, as on one device (fairard.distributed)
            sync_batchnorm(self.student)
        self.method.to(self.device)
        self.optimizer = torch.optim.SGD(
            self.student.parameters(), lr=self.base_lr,
            momentum=cfg.momentum if cfg.momentum is not None else od.momentum,
            weight_decay=cfg.weight_decay if cfg.weight_decay is not None else od.weight_decay,
            nesterov=nesterov)
        self.weighting = (FairWeighting(self.num_classes, beta=cfg.beta, clamp=cfg.clamp, measure=cfg.difficulty,
                                        device=self.device) if cfg.fair else None)
        self.fawa = None  # CFA's fairness-aware weight average (a state_dict), if the method asks for it
        # The epoch's per-class statistics and loss sum live in tensors reset each epoch, so that a captured
        # step (graph engine) accumulates into the same memory at every replay.
        self.stats = ClassStats(self.num_classes, self.device)
        self.loss_sum = torch.zeros((), device=self.device)
        self._step = self._train_step
        if cfg.engine == "graph":
            from .graph_step import StaticStep
            self._step = StaticStep(self, capture=True)
        self.start_epoch = 0
        self.history: list[dict] = []

    # ---- construction -------------------------------------------------------------------------
    def _build_data(self):
        cfg = self.cfg
        x, y = D.load_split(cfg.dataset, "train", cfg.data_root)
        where = f"the {cfg.dataset} training split under {D.data_root(cfg.data_root)}"
        D.check_per_class(y, self.num_classes, 1, where=where)  # a class without images: refused, not skipped
        idx = np.arange(len(y))
        if cfg.n_per_class is not None:
            D.check_per_class(y, self.num_classes, cfg.n_per_class, where=where, what="n_per_class (--n-per-class)")
            idx = D.balanced_subset(y, cfg.n_per_class, seed=cfg.seed)
        val_idx = None
        if cfg.val_per_class:
            fewest = int(np.bincount(y[idx], minlength=self.num_classes).min())
            if cfg.val_per_class >= fewest:
                raise checks.InputError(f"val_per_class (--val-per-class) = {cfg.val_per_class} leaves no training "
                                        f"images in a class of {fewest}; use at most {fewest - 1}")
            tr, va = D.split_validation(y[idx], cfg.val_per_class, seed=cfg.seed)
            idx, val_idx = idx[tr], idx[va]
        self.train_loader = D.DeviceLoader(x[idx], y[idx], batch_size=self.batch_size, train=True,
                                           device=self.device, seed=cfg.seed, pad_mode=cfg.pad_mode,
                                           channels_last=self.channels_last, num_classes=self.num_classes,
                                           **D.AUGMENTATION[cfg.dataset])
        if len(self.train_loader) == 0:
            raise ValueError(f"the training set has {len(idx)} images, fewer than one batch of {self.batch_size}: "
                             f"raise --n-per-class or lower --batch-size")
        self.val = None if val_idx is None else self._float_images(x[val_idx], y[val_idx])
        self.monitor = None
        if cfg.monitor_n:
            xt, yt = D.load_split(cfg.dataset, "test", cfg.data_root)
            per_class = max(1, min(cfg.monitor_n // self.num_classes, int(np.bincount(yt).min())))
            m_idx = D.balanced_subset(yt, per_class, seed=cfg.seed)
            self.monitor = self._float_images(xt[m_idx], yt[m_idx])

    def _initial_student(self):
        model = build_model(self.cfg.student, self.num_classes, **self.cfg.student_kwargs)
        if self.method.needs_init_checkpoint and not self.cfg.init_checkpoint:
            raise ValueError(f"method {self.cfg.method!r} fine-tunes a robust model: pass --init-checkpoint PATH "
                             f"(e.g. a pgd_at run of {self.cfg.student} from `python -m fairard train-teacher`)")
        if self.cfg.init_checkpoint:
            load_checkpoint(model, self.cfg.init_checkpoint, num_classes=self.num_classes).train()
        return model

    def _validation_predictions(self, epoch: int):
        """(y, clean_correct, robust_correct) on the validation split: PGD-20 (2/255, uniform start), eval mode, fp32."""
        from .evaluate import eval_mode
        x, y = self.val
        with eval_mode(self.student):
            with torch.no_grad():
                clean = self.student(x).argmax(1) == y
            x_adv = pgd(self.student, x, y, steps=20, generator=_seeded(self.cfg.seed, epoch, 4, self.device))
            with torch.no_grad():
                robust = self.student(x_adv).argmax(1) == y
        return y, clean, robust

    def _float_images(self, x, y):
        x = torch.from_numpy(np.ascontiguousarray(x)).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        return x.contiguous(), torch.from_numpy(np.asarray(y)).long().to(self.device)

    def _to_device(self, model):
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def _load_teacher(self, arch, path, role, needed):
        if not needed:
            return None
        if arch is None or path is None:
            raise ValueError(f"method {self.cfg.method!r} needs a {role}: pass --{role.replace('_', '-')} ARCH "
                             f"and --{role.replace('_', '-')}-checkpoint PATH (train one with "
                             f"`python -m fairard train-teacher`)")
        kwargs = self.cfg.teacher_kwargs if role == "teacher" else {}
        model = load_checkpoint(build_model(arch, self.num_classes, **kwargs), path, num_classes=self.num_classes)
        return _freeze(self._to_device(model))

    # ---- checkpointing ------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def state_dict(self, epoch: int) -> dict:
        return {
            "epoch": epoch, "config": self.cfg.to_dict(), "config_key": self.cfg.key(),
            "student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "weighting": self.weighting.state_dict() if self.weighting else None,
            "fawa": self.fawa, "history": json.dumps(self.history),
            "teacher_ref": {"arch": self.cfg.teacher, "checkpoint": self.cfg.teacher_checkpoint},
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        needed = ("epoch", "config_key", "student", "optimizer", "method", "weighting", "fawa", "history", "torch_rng")
        if not isinstance(state, dict) or any(k not in state for k in needed):
            raise CheckpointError(f"{self.checkpoint_path} is not a fairard training checkpoint (it lacks "
                                  f"{[k for k in needed if not isinstance(state, dict) or k not in state]}); "
                                  "remove it to start over, or choose a new --out folder")
        bad = checks.non_finite(state["student"])
        if state["weighting"] is not None and checks.non_finite(state["weighting"]):
            bad.append("class weights")
        if bad:
            raise CheckpointError(f"{self.checkpoint_path} holds non-finite (nan/inf) {', '.join(bad[:4])}; "
                                  "remove it to start over, or choose a new --out folder")
        if state["config_key"] != self.cfg.key():
            raise ValueError(f"{self.checkpoint_path} belongs to another configuration "
                             f"({state['config_key']} != {self.cfg.key()}); use a new --out folder or the same options")
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        if self.weighting is not None:
            self.weighting.load_state_dict(state["weighting"])
        self.fawa = state["fawa"]
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["torch_rng"])
        self.start_epoch = state["epoch"] + 1

    def resume(self) -> bool:
        """Continue from ``checkpoint.pt`` if there is one.  An unreadable one raises ``CheckpointError``
        naming it, or with ``recover`` is moved aside (and reported) and the run starts over."""
        if not self.checkpoint_path.exists():
            return False
        try:
            state = read_checkpoint(self.checkpoint_path, map_location=self.device)
        except CheckpointError as err:  # truncated/empty/garbage
            if not self.recover:
                raise
            quarantine(self.checkpoint_path, str(err))
            return False
        self.load_state_dict(state)
        return True

    def write_log(self) -> None:
        """``log.jsonl`` rewritten (atomically) from the checkpoint's history, one line per epoch: written
        after the checkpoint, so a crash between the two leaves the log one epoch behind, and the next
        ``fit`` rewrites it from the checkpoint; an epoch is never duplicated or lost."""
        write_text(self.out_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))

    # ---- the loop -----------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _attack_spec(self):
        """The method's training attack, or, for methods without one (KDIGA), the ARD-style probe
        attack when the weighting needs kappa or robust accuracy; None if no attack is needed."""
        spec = self.method.attack
        if spec is None and self.weighting is not None and self.cfg.difficulty in ("kappa", "robust_acc"):
            return AttackConfig(loss="ce", random_start="uniform", student_mode="train"), True
        return spec, False

    def _attack(self, f: Forward, x_start, eps, spec, probe: bool):
        """Run the training attack from ``x_start``; returns (x_adv, kappa)."""
        steps = self.cfg.attack_steps if self.cfg.attack_steps is not None else spec.steps
        self.student.train(spec.student_mode == "train")
        # An eval-mode attack runs with BatchNorm folded into the convolutions (conv_bn): ~20% faster per
        # step. A train-mode attack (ARD, IAD) is untouched: conv_bn never folds batch statistics.
        with folded_batchnorm(self.student):
            target = self.method.attack_target(f) if spec.loss == "kl" and not probe else None
            watcher = None if probe else self.method.watch_attack(f)
            x_adv, kappa = pgd(self.student, f.x, f.y, eps=eps, step_size=spec.step_size, steps=steps, loss=spec.loss,
                               target_probs=target, return_kappa=True, x_start=x_start, observe=watcher)
        self.student.train()
        return (x_adv if probe else self.method.attack_done(f, x_adv, watcher)), kappa

    def train_epoch(self, epoch: int, bar=None) -> dict:
        lr = lr_at(epoch, self.base_lr, self.milestones, self.cfg.lr_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.method.begin_epoch(epoch, (lambda: self._validation_predictions(epoch)) if self.val is not None else None)
        stats, loss_sum = self.stats, self.loss_sum
        stats.reset()
        loss_sum.zero_()
        weights_used = self.weighting.weights.clone() if self.weighting else None
        self.train_loader.set_epoch(epoch)
        attack_gen = _seeded(self.cfg.seed, epoch, 1, self.device)
        self.student.train()
        t0, seen, step = time.perf_counter(), 0, 0
        spec, probe = self._attack_spec()
        for x, y, _ in self.train_loader:
            x_start = eps = None
            if spec is not None:  # drawn for the global batch, then sharded: same stream on any world size
                eps = spec.eps if probe else self.method.attack_eps(y, epoch)
                x_start = start_point(x, as_radius(eps, x), spec.random_start, attack_gen)
            if self.world > 1:
                share = slice(self.rank, None, self.world)
                x, y = x[share], y[share]
                x_start = None if x_start is None else x_start[share]
                eps = eps[share] if torch.is_tensor(eps) else eps
            self._step(x, y, x_start, eps, epoch)
            step += 1
            seen += len(y) * self.world
            if bar is not None:
                bar.update(len(y) * self.world)
            # The graph engine never syncs the host inside an epoch; it checks at the epoch's end.
            if step % SYNC_EVERY == 0 and self._step == self._train_step and not torch.isfinite(loss_sum):
                self._diverged(epoch)
        if not torch.isfinite(loss_sum):
            self._diverged(epoch)
        seconds = time.perf_counter() - t0
        stats.all_reduce()
        if lr_at(epoch + 1, self.base_lr, self.milestones, self.cfg.lr_schedule) < lr:
            self.method.on_lr_decay()  # before end_epoch, as the ABSLD script lowers r before its update
        self.method.end_epoch(epoch, stats)
        next_weights = self.weighting.end_epoch(stats) if self.weighting else None
        _all_reduce_mean_([b for b in self.student.buffers() if b.is_floating_point()])  # BN running stats
        return {
            "epoch": epoch, "lr": lr, "loss": float(loss_sum) / max(step, 1), "seconds": seconds,
            "images_per_s": seen / seconds, "class_weights": None if weights_used is None else weights_used.tolist(),
            "next_class_weights": None if next_weights is None else next_weights.tolist(),
            "class_stats": stats.as_dict(),
        }

    def _train_step(self, x, y, x_start, eps, epoch: int) -> None:
        """One optimiser step on one batch: the training attack (with kappa), the method's per-sample loss
        times the class weights, backward, step; per-class statistics and the loss sum accumulate on the
        device (``self.stats``, ``self.loss_sum``). The graph engine captures exactly this call."""
        spec, probe = self._attack_spec()
        with self._autocast():
            f = Forward(self.student, x, y, teacher=self.teacher, nat_teacher=self.nat_teacher, epoch=epoch,
                        num_classes=self.num_classes)
            kappa = None
            probe_x_adv = None
            if spec is not None:
                f.x_adv, kappa = self._attack(f, x_start, eps, spec, probe)
                if probe:
                    f.x_adv, probe_x_adv = None, f.x_adv
            per_sample = self.method.per_sample_loss(f)
            weighted = per_sample * self.weighting.sample_weights(y) if self.weighting is not None else per_sample
            loss = weighted.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _all_reduce_mean_([p.grad for p in self.student.parameters() if p.grad is not None])
        self.optimizer.step()
        self._record(self.stats, f, y, kappa, per_sample, probe_x_adv)
        self.loss_sum += loss.detach().float()

    @torch.no_grad()
    def _record(self, stats: ClassStats, f: Forward, y, kappa, per_sample, probe_x_adv=None):
        """Per-sample statistics for the class weights, reusing the loss's forwards. A measure whose
        forward the method did not need (clean accuracy for ARD, robust accuracy for KDIGA's probe)
        gets one extra no-grad forward in eval mode, so BatchNorm statistics are not touched."""
        cached = vars(f)  # Forward caches each computed forward as an instance attribute
        s_adv, s_clean = cached.get("s_adv"), cached.get("s_clean")
        measure = self.weighting.measure if self.weighting is not None else None
        if measure == "clean_acc" and s_clean is None:
            s_clean = self._eval_forward(f.x)
        if measure == "robust_acc" and s_adv is None and probe_x_adv is not None:
            s_adv = self._eval_forward(probe_x_adv)
        stats.update(y, kappa=kappa,
                     robust_correct=None if s_adv is None else (s_adv.argmax(1) == y).float(),
                     adv_loss=per_sample.detach().float(),  # the method's own loss, before class weights
                     clean_correct=None if s_clean is None else (s_clean.argmax(1) == y).float())

    def _eval_forward(self, x):
        self.student.eval()
        with self._autocast():
            logits = self.student(x)
        self.student.train()
        return logits

    def _diverged(self, epoch, what: str = "loss"):
        """Stop a diverged run before anything non-finite is checkpointed, naming the likeliest cause."""
        kept = (f"; the last good checkpoint ({self.checkpoint_path}) is kept" if self.checkpoint_path.exists()
                else "; nothing was checkpointed")
        if self.weighting is not None and not bool(torch.isfinite(self.weighting.weights).all()):
            cause = (f"the Fair-* class weights are non-finite ({self.weighting.weights.tolist()}) with --beta "
                     f"{self.cfg.beta} and --clamp {self.cfg.clamp}: lower --beta or set a --clamp")
        elif self.teacher is not None and checks.non_finite(self.teacher.state_dict()):
            cause = f"the teacher checkpoint {self.cfg.teacher_checkpoint} holds nan/inf weights: use another"
        else:
            cause = (f"try a lower --lr (this run: {self.base_lr}), --amp off, or check the teacher checkpoint")
        raise TrainingDiverged(f"{what} became nan/inf in epoch {epoch} of {self.cfg.method}{kept}. Cause: {cause}.")

    def _check_finite_state(self, epoch: int) -> None:
        """Weights and class weights are finite before they are checkpointed."""
        bad = checks.non_finite(self.student.state_dict())
        if bad:
            self._diverged(epoch, f"the student's weights ({', '.join(bad[:3])})")
        if self.weighting is not None and not bool(torch.isfinite(self.weighting.weights).all()):
            self._diverged(epoch, "the class weights")

    def monitor_epoch(self) -> dict:
        """Clean and PGD-10 accuracy (fp32, eval mode) on a small held-out class-balanced test slice."""
        if self.monitor is None:
            return {}
        from .evaluate import eval_mode
        from .metrics import summarize
        x, y = self.monitor
        out = {}
        with eval_mode(self.student):
            g = _seeded(self.cfg.seed, 0, 2, self.device)
            with torch.no_grad():
                clean = self.student(x).argmax(1)
            adv = self.student(pgd(self.student, x, y, steps=10, generator=g)).argmax(1)
        names = D.CLASS_NAMES[self.cfg.dataset]
        for name, pred in (("clean", clean), ("pgd10", adv)):
            s = summarize(y, pred, names)
            out[name] = {k: s[k] for k in ("accuracy", "worst_class_accuracy", "per_class")}
        return out

    def fit(self, resume: bool = True) -> torch.nn.Module:
        from tqdm.auto import tqdm

        if resume:
            self.resume()
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.out_dir / "config.json", {"config": self.cfg.to_dict(), "key": self.cfg.key(),
                                                      "provenance": provenance(self.device)})
            self.write_log()
        for epoch in range(self.start_epoch, self.epochs):
            bar = tqdm(total=self.train_loader.num_samples // self.batch_size * self.batch_size,
                       desc=f"{self.cfg.method} {epoch + 1}/{self.epochs}", unit="img", unit_scale=True,
                       disable=not self.progress or self.rank != 0, leave=False)
            if self.weighting is not None:
                bar.set_postfix_str("w=" + ",".join(f"{w:.2f}" for w in self.weighting.weights.tolist()))
            record = self.train_epoch(epoch, bar)
            bar.close()
            self._check_finite_state(epoch)
            self.method_after_epoch(epoch)
            record["monitor"] = self.monitor_epoch()
            self.history.append(record)
            if self.rank == 0:
                save_torch(self.checkpoint_path, self.state_dict(epoch))
                self.write_log()
        if self.rank == 0:
            save_torch(self.out_dir / "final.pt", self.final_state_dict())
        return self.student

    # ---- CFA's fairness-aware weight averaging --------------------------------------------------
    def method_after_epoch(self, epoch: int) -> None:
        """FAWA (CFA): EMA of the weights, updated only in epochs whose validation worst-class
        PGD-10 accuracy reaches the method's threshold."""
        decay = getattr(self.method, "fawa_decay", None)
        if decay is None or self.val is None:
            return
        from .evaluate import eval_mode
        from .metrics import summarize
        x, y = self.val
        with eval_mode(self.student):
            adv = self.student(pgd(self.student, x, y, steps=10, generator=_seeded(self.cfg.seed, epoch, 3, self.device)))
        worst = summarize(y, adv.argmax(1), D.CLASS_NAMES[self.cfg.dataset])["worst_class_accuracy"]
        if worst < self.method.fawa_threshold:
            return
        current = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        if self.fawa is None:
            self.fawa = current
        else:
            for k, v in current.items():
                if v.is_floating_point():
                    self.fawa[k].mul_(decay).add_(v, alpha=1 - decay)
                else:
                    self.fawa[k].copy_(v)

    def final_state_dict(self) -> dict:
        return self.fawa if self.fawa is not None else self.student.state_dict()


def train(cfg: TrainConfig, out_dir, *, resume: bool = True, progress: bool = True, recover: bool = False):
    """Train (or resume, or load if finished) the run of ``cfg`` in ``out_dir``; returns the model in eval mode.
    ``recover`` (the result store): an unreadable checkpoint is moved aside and recomputed, not an error."""
    trainer = Trainer(cfg, out_dir, progress=progress, recover=recover)
    final = Path(out_dir) / "final.pt"
    if resume and final.exists() and trainer.resume() and trainer.start_epoch >= trainer.epochs:
        try:
            trainer.student.load_state_dict(read_checkpoint(final, map_location=trainer.device))
            return trainer.student.eval()
        except CheckpointError as err:  # unreadable: rewritten below from the finished checkpoint, nothing retrained
            if not recover:
                raise
            quarantine(final, str(err))
    trainer.fit(resume=resume)
    trainer.student.load_state_dict(trainer.final_state_dict())
    return trainer.student.eval()
