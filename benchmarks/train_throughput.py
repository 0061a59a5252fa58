"""Training throughput (images/s) of Fair-ARD and Fair-RSLAD: fairard's Trainer, eager and graph engines,
against an official-style baseline, side by side in one run, for one or more teachers.

Ours: ``fairard.train.Trainer`` (device-resident ``DeviceLoader`` with batched crop/flip, one PGD
call that also counts kappa, vectorised per-sample loss times class weights, bf16 autocast +
channels_last when ``amp=auto`` picks it), with ``engine="eager"`` and, on CUDA, ``engine="graph"``
(the step replayed from a CUDA graph, ``fairard.graph_step``). One warm-up epoch (for the graph engine it
holds the eager warm-up steps and the capture), then ``Trainer.train_epoch(epoch)`` is timed
(``--repeats`` epochs, median; the implementations' epochs alternate, so that a shared machine's load hits
them alike).

Arithmetic: the FLOPs of one training step are counted once per method and teacher
(``torch.utils.flop_counter.FlopCounterMode`` around one eager step: every convolution and matrix product,
forward and backward, attack included); each row then gives TFLOP/s and, on a GPU whose bf16 dense peak is
known (``--peak-tflops``, default from the device name), the fraction of that peak.

Baseline (``Baseline`` below, written for this benchmark after the structure of the official
Fair-ARD / Fair-RSLAD scripts, not copied from them):

* a torchvision-style Dataset of PIL images with per-sample CPU transforms
  (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor) behind a torch DataLoader
  (shuffle, ``--workers`` processes, not persistent: worker start-up is part of every epoch);
* fp32, NCHW;
* an attack class looping over PGD steps whose kappa is counted with a per-sample Python loop
  (``for i in range(B): if pred[i] == y[i]: kappa[i] += 1``) on the forward of each step;
* the teacher's forward on clean x (under no_grad); Fair-ARD attacks with the student's CE in
  train mode (uniform start), Fair-RSLAD with KL to the teacher's softmax in eval mode
  (x + 0.001 N(0, I) start);
* a train-mode student forward on clean x besides the one on x' (both scripts have it; Fair-ARD's
  clean cross-entropy is weighted 1 - alpha = 0 but still computed and backpropagated);
* the loss computed sample by sample in a Python loop over the batch, each sample's terms on its own
  logit rows and multiplied by its class weight, then summed and divided by B
  (``official_weighted_loss``; tests/test_benchmarks.py checks it equals fairard's weighted loss);
* per-class kappa summed per epoch and turned into the next epoch's class weights.

As in the official scripts, kappa is counted on the forward each attack step needs anyway (no
extra forward) and the teacher builds no graph (frozen parameters / no_grad). It is timed over the same number of images as our epoch, after
``--baseline-warmup`` discarded batches. Both use the same models (fairard's nets), the same
teacher weights (random: throughput does not depend on them; saved to a temporary file because
Trainer loads a teacher by path), the same class-balanced subset, batch size and SGD settings.
Threads are left at torch's default for both.

    FAIRARD_DATA=/work/shared/data .venv/bin/python benchmarks/train_throughput.py --quick
    FAIRARD_DATA=... .venv/bin/python benchmarks/train_throughput.py --device cuda   # full CIFAR-10 epoch
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from _common import OtherLoad, environment, format_table, print_environment, sync, time_call
from fairard import data as D
from fairard.models import build_model
from fairard.train import Trainer, TrainConfig
from fairard.utils import resolve_device, write_json

FULL_EPOCH = 50_000  # CIFAR-10 training images; "s/epoch" extrapolates to this
EPS, STEP, STEPS = 8 / 255, 2 / 255, 10


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _at_least(low: int):
    """An argparse type: an integer >= ``low``, refused with a usage error (not a traceback) otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", type=_csv, default=["fair-ard", "fair-rslad"], help="default: %(default)s")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--student", default=None, help="default: resnet20 on CPU, resnet18 on CUDA")
    p.add_argument("--teacher", type=_csv, default=None,
                   help="one or more teachers, each timed on its own (default: resnet56 on CPU, wrn-34-10,resnet18 on CUDA)")
    p.add_argument("--n-per-class", type=_at_least(1), default=None,
                   help="class-balanced training subset per class (default: 100 on CPU, all on CUDA; --quick: 52 / 200)")
    p.add_argument("--batch-size", type=_at_least(1), default=128, help="default: %(default)s (official)")
    p.add_argument("--amp", type=_csv, default=None,
                   help="fairard amp modes to time, among auto, bf16, off (default: auto,off on CPU, where off shows "
                        "what the structure alone buys; auto on CUDA)")
    p.add_argument("--engines", type=_csv, default=None,
                   help="fairard engines to time, among eager, graph (default: eager, plus graph on CUDA; graph "
                        "needs CUDA and is reported as not measured elsewhere)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense bf16 peak in TFLOP/s for the fraction-of-peak column (default: 989 for "
                        "an H100 or H200, none otherwise)")
    p.add_argument("--repeats", type=_at_least(1), default=None,
                   help="timed epochs per implementation, median (default: 3; 1 for a full CUDA epoch)")
    p.add_argument("--workers", type=_at_least(0), default=None,
                   help="baseline DataLoader workers (default: min(4, CPU cores))")
    p.add_argument("--baseline-warmup", type=_at_least(0), default=2, help="discarded baseline batches (default %(default)s)")
    p.add_argument("--no-baseline", action="store_true", help="time fairard only")
    p.add_argument("--data-root", default=None, help="default: $FAIRARD_DATA")
    p.add_argument("--quick", action="store_true", help="a small subset: a few minutes on a 2-core CPU")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="set torch.backends.cudnn.benchmark=True for both (fairard's Trainer sets it on CUDA anyway)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results to this JSON file (atomically)")
    args = p.parse_args(argv)
    args.device = str(resolve_device(args.device))
    cuda = args.device.startswith("cuda")
    args.student = args.student or ("resnet18" if cuda else "resnet20")
    args.teacher = args.teacher or (["wrn-34-10", "resnet18"] if cuda else ["resnet56"])
    args.amp = args.amp or (["auto"] if cuda else ["auto", "off"])
    args.engines = args.engines or (["eager", "graph"] if cuda else ["eager"])
    if args.peak_tflops is None and cuda:
        name = torch.cuda.get_device_name(torch.device(args.device))
        args.peak_tflops = 989.0 if any(g in name for g in ("H100", "H200")) else None  # dense bf16, SXM spec
    if args.n_per_class is None:
        args.n_per_class = (200 if cuda else 52) if args.quick else (None if cuda else 100)
    if args.repeats is None:
        args.repeats = 1 if cuda and args.n_per_class is None else 3
    unknown_amp = sorted(set(args.amp) - {"auto", "bf16", "off"})
    if unknown_amp:
        p.error(f"unknown amp mode(s) {unknown_amp}; valid: auto, bf16, off")
    unknown_engines = sorted(set(args.engines) - {"eager", "graph"})
    if unknown_engines:
        p.error(f"unknown engine(s) {unknown_engines}; valid: eager, graph")
    if args.workers is None:
        args.workers = min(4, os.cpu_count() or 1)
    for m in args.methods:
        if m not in ("fair-ard", "fair-rslad"):
            p.error(f"unknown method {m!r}; this benchmark has baselines for fair-ard and fair-rslad")
    return args

# ----------------------------------------------------------------------------- the baseline


class PILCifar(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's shape: uint8 HWC arrays, a PIL image per item, a per-sample transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class LoopPGD:
    """An attack object looping over PGD steps, counting kappa per sample in a Python loop."""

    def __init__(self, model, loss: str, random_start: str, eps=EPS, step_size=STEP, steps=STEPS):
        self.model, self.loss, self.random_start = model, loss, random_start
        self.eps, self.step_size, self.steps = eps, step_size, steps

    def __call__(self, x, y, target_probs=None):
        kappa = torch.zeros(len(x))
        if self.random_start == "uniform":
            x_adv = x.detach() + torch.empty_like(x).uniform_(-self.eps, self.eps)
        else:
            x_adv = x.detach() + 0.001 * torch.randn_like(x)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
        for _ in range(self.steps):
            x_adv.requires_grad_()
            with torch.enable_grad():
                output = self.model(x_adv)
                predict = output.max(1)[1]
                for i in range(len(x_adv)):
                    if predict[i] == y[i]:
                        kappa[i] += 1
                if self.loss == "ce":
                    loss = F.cross_entropy(output, y, reduction="sum")
                else:
                    loss = F.kl_div(F.log_softmax(output, dim=1), target_probs, reduction="sum")
            grad = torch.autograd.grad(loss, [x_adv])[0]
            x_adv = x_adv.detach() + self.step_size * torch.sign(grad.detach())
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps)
            x_adv = torch.clamp(x_adv, 0.0, 1.0)
        return x_adv.detach(), kappa


def official_weighted_loss(method: str, adv_logits, clean_logits, teacher_logits, y, class_weight, *,
                           tau: float = 30.0, alpha: float = 1.0):
    """The batch loss of the official Fair-ARD / Fair-RSLAD scripts, in their structure: a Python loop over
    the batch that computes each sample's terms on its own rows and multiplies them by the class weight.

    Fair-ARD: alpha * tau^2 * mean_i w_yi KL_mean(sigma_tau(T(x_i)) || sigma_tau(S(x'_i)))
    + (1 - alpha) * mean_i w_yi CE(S(x_i), y_i). The script computes the clean term even at alpha = 1, so its
    forward and (zero) backward are part of every step. Fair-RSLAD: 5/6 and 1/6 of the class-weighted
    element-wise p_T (log(p_T + 1e-5) - log p_S), summed over the batch / B and averaged over classes.
    Equal to fairard's ``ard`` / ``rslad`` per-sample loss times the weights, averaged over the batch
    (tests/test_benchmarks.py)."""
    n = len(y)
    if method == "fair-ard":
        kl_terms, ce_terms = [], []
        for i in range(n):
            log_q = F.log_softmax(adv_logits[i] / tau, dim=0)
            p = F.softmax(teacher_logits[i] / tau, dim=0)
            kl_terms.append(F.kl_div(log_q, p, reduction="none").mean() * class_weight[y[i]])  # KLDivLoss() default: mean over C
            ce_terms.append(F.cross_entropy(clean_logits[i].unsqueeze(0), y[i].unsqueeze(0)) * class_weight[y[i]])
        kl, ce = torch.stack(kl_terms).sum() / n, torch.stack(ce_terms).sum() / n
        return alpha * tau * tau * kl + (1 - alpha) * ce
    adv_terms, nat_terms = [], []
    for i in range(n):
        p = F.softmax(teacher_logits[i].detach(), dim=0)
        adv_terms.append(p * (torch.log(p + 1e-5) - F.log_softmax(adv_logits[i], dim=0)) * class_weight[y[i]])
        nat_terms.append(p * (torch.log(p + 1e-5) - F.log_softmax(clean_logits[i], dim=0)) * class_weight[y[i]])
    return 5 / 6 * (sum(adv_terms) / n).mean() + 1 / 6 * (sum(nat_terms) / n).mean()


class Baseline:
    """Official-script-style Fair-ARD / Fair-RSLAD training loop (see the module docstring)."""

    def __init__(self, method: str, student, teacher, images, labels, *, batch_size: int, workers: int,
                 device: torch.device, num_classes: int = 10, beta: float = 2.0, tau: float = 30.0):
        self.method, self.student, self.teacher, self.device = method, student, teacher, device
        self.num_classes, self.beta, self.tau = num_classes, beta, tau
        transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
        self.loader = torch.utils.data.DataLoader(
            PILCifar(images, labels, transform), batch_size=batch_size, shuffle=True, num_workers=workers,
            drop_last=True, pin_memory=device.type == "cuda")
        self.optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4, nesterov=True)
        ard = method == "fair-ard"
        self.attack = LoopPGD(student, loss="ce" if ard else "kl", random_start="uniform" if ard else "normal")
        self.class_weight = torch.ones(num_classes, device=device)
        self.batches_per_epoch = len(self.loader)

    def run(self, max_batches: int | None = None) -> int:
        """One pass over the loader (or its first ``max_batches``); returns the images trained on."""
        class_kappa = torch.zeros(self.num_classes)
        class_count = torch.zeros(self.num_classes)
        seen = 0
        for step, (inputs, targets) in enumerate(self.loader):
            if max_batches is not None and step >= max_batches:
                break
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            with torch.no_grad():
                teacher_logits = self.teacher(inputs)
            if self.method == "fair-ard":
                self.student.train()
                x_adv, kappa = self.attack(inputs, targets)
            else:
                self.student.eval()
                x_adv, kappa = self.attack(inputs, targets, F.softmax(teacher_logits, dim=1))
            self.student.train()
            adv_logits = self.student(x_adv)
            clean_logits = self.student(inputs)  # both official scripts run it (Fair-ARD's even at alpha = 1)
            loss = official_weighted_loss(self.method, adv_logits, clean_logits, teacher_logits, targets,
                                          self.class_weight, tau=self.tau)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            cpu_targets = targets.cpu()
            class_kappa.index_add_(0, cpu_targets, kappa)
            class_count.index_add_(0, cpu_targets, torch.ones(len(targets)))
            seen += len(targets)
        if max_batches is None:  # the next epoch's weights, as Fair-ARD: C-normalised (1/kappa)^beta, clipped
            mean_kappa = class_kappa / class_count.clamp(min=1)
            raw = (1.0 / (mean_kappa + 1e-5)) ** self.beta
            self.class_weight = (self.num_classes * raw / raw.sum()).clamp(5 / 6, 5 / 2).to(self.device)
        sync(self.device)
        return seen

# ----------------------------------------------------------------------------- the two runs


def _teacher_file(arch: str, folder: Path) -> Path:
    torch.manual_seed(1)
    path = folder / f"teacher_{arch}.pt"
    torch.save(build_model(arch, 10).state_dict(), path)
    return path


@dataclass
class Runner:
    """One implementation of one method, ready to run: a warm-up and a timed epoch."""
    method: str
    label: str
    images: int          # images per timed epoch
    batch: int
    warmup: Callable[[], object]
    epoch: Callable[[], object]
    trainer: Trainer | None = None


def ours(args, method: str, amp: str, engine: str, teacher: str, teacher_path: Path, folder: Path) -> Runner:
    cfg = TrainConfig(method=method, student=args.student, teacher=teacher, teacher_checkpoint=str(teacher_path),
                      n_per_class=args.n_per_class, batch_size=args.batch_size, amp=amp, device=args.device,
                      data_root=args.data_root, monitor_n=0, seed=0, engine=engine)
    trainer = Trainer(cfg, folder / f"run_{method}_{amp}_{engine}_{teacher}", progress=False)
    epochs = itertools.count(1)
    label = (f"fairard {engine} amp={amp} ({'bf16' if trainer.amp else 'fp32'}"
             f"{', channels_last' if trainer.channels_last else ''})")
    return Runner(method, label, trainer.train_loader.num_samples // args.batch_size * args.batch_size,
                  trainer.batch_size, warmup=lambda: trainer.train_epoch(0),  # a whole epoch: first calls, allocator
                  epoch=lambda: trainer.train_epoch(next(epochs)), trainer=trainer)


class _FlopCount(TorchDispatchMode):
    """Sums torch's registered FLOP formulas (convolutions and matrix products, forward and backward) of every
    op run inside. ``FlopCounterMode`` itself cannot be used: its module hooks refuse ``autograd.grad`` with
    respect to a leaf input, which is what PGD computes."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def step_flops(trainer: Trainer) -> int:
    """FLOPs of one training step of ``trainer`` (one eager step on its first batch; ``_FlopCount``)."""
    from fairard.attacks import as_radius, start_point

    trainer.train_loader.set_epoch(0)
    x, y, _ = next(iter(trainer.train_loader))
    spec, probe = trainer._attack_spec()
    eps = spec.eps if probe else trainer.method.attack_eps(y, 0)
    x_start = start_point(x, as_radius(eps, x), spec.random_start, torch.Generator(x.device).manual_seed(0))
    counter = _FlopCount()
    with counter:
        trainer._train_step(x, y, x_start, eps, 0)
    return counter.total


def baseline(args, method: str, teacher: str, teacher_path: Path) -> Runner:
    device = torch.device(args.device)
    x, y = D.load_split("cifar10", "train", args.data_root)
    if args.n_per_class:
        idx = D.balanced_subset(y, args.n_per_class, seed=0)
        x, y = x[idx], y[idx]
    torch.manual_seed(0)
    student = build_model(args.student, 10).to(device)
    frozen = build_model(teacher, 10)
    frozen.load_state_dict(torch.load(teacher_path, map_location="cpu", weights_only=True))
    frozen = frozen.to(device).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    base = Baseline(method, student, frozen, x, y, batch_size=args.batch_size, workers=args.workers, device=device)
    return Runner(method, f"baseline (fp32, DataLoader x{args.workers} workers, loops)",
                  base.batches_per_epoch * args.batch_size, args.batch_size,
                  warmup=lambda: base.run(max_batches=args.baseline_warmup), epoch=base.run)


def measure(runners: list[Runner], device: torch.device, repeats: int, failed: list[str]) -> list[dict]:
    """Warm every runner up, then time their epochs round-robin (repeat r of each, then r + 1), so a
    load change on a shared machine hits all implementations alike and the ratios stay fair. A runner whose
    warm-up raises (e.g. a graph capture that fails on a new platform) is left out, its error in ``failed``."""
    warm, kept = [], []
    for r in runners:
        try:
            warm.append(time_call(r.warmup, device))
            kept.append(r)
        except Exception as err:  # noqa: BLE001 - reported in the table's notes, the other rows still measured
            failed.append(f"{r.method} {r.label}: not measured ({type(err).__name__}: {err})")
            print(failed[-1], flush=True)
    runners = kept
    seconds = [[] for _ in runners]
    for _ in range(repeats):
        for i, r in enumerate(runners):
            seconds[i].append(time_call(r.epoch, device))
    return [_row(r.method, r.label, r.images, s, r.batch, w) for r, s, w in zip(runners, seconds, warm)]


def _row(method, implementation, images, seconds, batch, warmup_s) -> dict:
    median = statistics.median(seconds)
    return {"method": method, "implementation": implementation, "images": images, "batch": batch,
            "warmup_s": warmup_s, "seconds": seconds, "median_s": median, "img_per_s": images / median,
            "best_img_per_s": images / min(seconds),
            "s_per_50k_epoch": FULL_EPOCH * median / images}


def add_arithmetic(row: dict, flops_per_image: float, peak_tflops: float | None) -> dict:
    """TFLOP/s of a row from the counted FLOPs per image, and its fraction of the device's bf16 peak."""
    tflops = flops_per_image * row["img_per_s"] / 1e12
    row.update(flops_per_image=flops_per_image, tflops=tflops,
               peak_fraction=None if peak_tflops is None else tflops / peak_tflops)
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    device = torch.device(args.device)
    env = environment([device])
    print_environment(env)
    print(f"# student {args.student}, teacher(s) {', '.join(args.teacher)} (random weights), batch {args.batch_size}, "
          f"{'all' if args.n_per_class is None else args.n_per_class} images per class, device {device}")
    engines = [e for e in args.engines if e == "eager" or device.type == "cuda"]
    not_measured = [f"fairard {e}: not measured (needs a CUDA GPU)" for e in args.engines if e not in engines]
    load = OtherLoad()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fairard_bench_") as tmp:
        folder = Path(tmp)
        for teacher in args.teacher:
            teacher_path = _teacher_file(teacher, folder)
            for method in args.methods:
                runners = [ours(args, method, amp, engine, teacher, teacher_path, folder)
                           for amp in args.amp for engine in engines]
                if not args.no_baseline:
                    runners.append(baseline(args, method, teacher, teacher_path))
                flops = step_flops(ours(args, method, args.amp[0], "eager", teacher, teacher_path, folder).trainer)
                for row in measure(runners, device, args.repeats, not_measured):
                    rows.append(add_arithmetic({"teacher": teacher, **row}, flops / args.batch_size, args.peak_tflops))
                    _progress(row)
    print(f"\nTraining throughput, {device}, {args.student} student, PGD-{STEPS} attack, batch {args.batch_size}")
    peak = f" of {args.peak_tflops:.0f}" if args.peak_tflops else ""
    print(format_table(rows, [("teacher", "teacher", "s"), ("method", "method", "s"),
                              ("implementation", "implementation", "s"), ("images", "images", "d"),
                              ("img_per_s", "img/s", ".2f"), ("best_img_per_s", "best img/s", ".2f"),
                              ("median_s", "s timed", ".2f"), ("s_per_50k_epoch", "s / 50k epoch", ".1f"),
                              ("tflops", "TFLOP/s", ".2f")]
                       + ([("peak_fraction", f"share{peak} bf16 peak", ".1%")] if args.peak_tflops else [])))
    for line in not_measured:
        print(line)
    ratios = []
    for teacher in args.teacher:
        for method in args.methods:
            group = [r for r in rows if r["method"] == method and r["teacher"] == teacher]
            base = next((r for r in group if r["implementation"].startswith("baseline")), None)
            ratios += [{"teacher": teacher, "method": method, "implementation": r["implementation"],
                        "speedup": r["img_per_s"] / base["img_per_s"]} for r in group if base is not None and r is not base]
    if ratios:
        print("\nSpeed-up over the baseline (img/s ours / img/s baseline)")
        print(format_table(ratios, [("teacher", "teacher", "s"), ("method", "method", "s"),
                                    ("implementation", "implementation", "s"), ("speedup", "speed-up", ".2f")]))
    contention = load.print_report()
    if args.json:
        write_json(args.json, {"kind": "train_throughput", "args": vars(args), "environment": env,
                               "contention": contention, "results": rows, "speedups": ratios,
                               "not_measured": not_measured})
        print(f"\nwrote {args.json}")
    return 0


def _progress(row: dict) -> None:
    print(f"  {row['method']:>10s}  {row['implementation']:<48s} {row['images']:6d} img  "
          f"{row['img_per_s']:8.2f} img/s  (timed {', '.join(f'{s:.1f}' for s in row['seconds'])} s, "
          f"warm-up {row['warmup_s']:.1f} s)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
