"""Experiments: profiles (smoke / quick / paper), a config-hashed result cache, and ``run``.

A *profile* is plain data that says how big an experiment is: data subset, teacher, students,
epochs, attacks, seeds.  Notebooks take a profile name plus overrides, build run configs with
``student_config`` / ``teacher_config`` and call ``run`` (or ``run_all``), which trains (or resumes,
or loads), evaluates per class, and writes one JSON result per run:

    $FAIRARD_RESULTS/runs/<method>-<student>-s<seed>-<train key>/
        checkpoint.pt, final.pt, log.jsonl, config.json   (training, fairard.train)
        evals/<attack>-<key>.json, evals/eps1-<key>.json   (one attack's per-class evaluation each)
        result-<run key>.json                              (config, evaluation, provenance)

A training run is keyed by its full training config (``train_key``); each attack's evaluation is
stored on its own inside it, so a notebook that adds an attack evaluates only that attack; the
assembled result is keyed by training config + evaluation settings (``run_key``).  Every file is
written atomically and the result last, so a half-finished run is never read as finished:
re-running a notebook reuses finished runs and resumes unfinished ones.

Notebooks use three layers: ``validate`` (every parameter checked at once; it returns a ``Setup``,
the profile plus the study's own parameters), one study call (``main_results`` / ``inheritance`` /
``capacity_gap``, each returning a ``Study``: results, teacher evaluations, what was computed), and
pure summaries (``summarize_runs``, ``markdown_table``, ``compare_pair``, ``headline``,
``inheritance_rows``, ``capacity_rows``) that the figures of ``fairard.plots`` also read.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .evaluate import EVAL_ATTACKS, check_attacks, evaluate, large_eps_accuracy, sanity_report
from .methods import METHODS, parse_method_name
from .models import build_model, list_models
from .train import TrainConfig, train
from .utils import provenance, resolve_device, write_json

BASE_METHODS = ("ard", "iad", "rslad", "mtard", "kdiga")   # the ARD family (+ KDIGA) that gets Fair-* versions
MAIN_METHODS = BASE_METHODS + tuple(f"fair-{m}" for m in BASE_METHODS) + ("cfa", "absld")
HEADLINE_PAIRS = (("ard", "fair-ard"), ("rslad", "fair-rslad"))
# Epoch-valued method options that scale with a shortened schedule (IAD's introspection start, CFA's calibration start).
_EPOCH_OPTIONS = {"iad": ("begin",), "cfa": ("begin",)}
_REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Profile:
    """How big an experiment is. Every field can be overridden from a notebook parameter."""
    name: str
    description: str
    dataset: str = "cifar10"
    n_per_class: int | None = None           # class-balanced training subset (None: the whole training set)
    eval_per_class: int | None = None        # test images per class for clean/FGSM/PGD/CW (None: all)
    aa_per_class: int | None = None          # test images per class for AutoAttack (None: same as eval)
    attacks: tuple = ("clean", "fgsm", "pgd20", "cw20", "aa")
    seeds: tuple = (0, 1, 2)
    teacher: str = "wrn-34-10"
    teacher_method: str = "trades"
    teacher_checkpoint: str | None = None    # e.g. the TRADES WRN-34-10 checkpoint; None: train one
    teacher_epochs: int | None = None        # None: the teacher method's official schedule
    teacher_kwargs: dict = field(default_factory=dict)
    nat_teacher: str = "resnet56"             # MTARD's natural teacher (Fair-MTARD's choice)
    nat_teacher_epochs: int | None = None
    students: tuple = ("resnet18", "mobilenet_v2")
    student_epochs: int | None = None        # None: each method's official schedule
    attack_steps: int | None = None          # training attack steps (None: the method's, 10)
    batch_size: int | None = None
    device: str = "auto"
    ladder: tuple = ("resnet20", "resnet56", "mobilenet_v2", "resnet18")  # capacity_gap: students, small to large

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One ``field: value`` line per field, for the first cell of a notebook."""
        return "\n".join(f"{f.name:>18}: {getattr(self, f.name)!r}" for f in fields(self))


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", description="CI: seconds per run; tiny subset, tiny models, 1 epoch; numbers mean nothing. "
                                  "No AutoAttack by default: on a near-constant 1-epoch model a point can survive "
                                  "every attack and then costs minutes of FAB/Square queries (add it with attacks)",
        n_per_class=20, eval_per_class=5, aa_per_class=1, attacks=("clean", "fgsm", "pgd20", "cw20"),
        seeds=(0,), teacher="resnet8", teacher_method="pgd_at", teacher_epochs=1, nat_teacher="resnet8",
        nat_teacher_epochs=1, students=("resnet8",), student_epochs=1, attack_steps=2, batch_size=50,
        ladder=("resnet8", "resnet14")),
    "quick": Profile(
        name="quick", description="2-core CPU: main_results in about 30 minutes with the teacher, 15 without; "
                                  "real CIFAR-10, a class-balanced 5,000-image subset, small CIFAR ResNets, "
                                  "short schedules (a pipeline check at real scale, too small to resolve "
                                  "Fair-ARD's effect: see notebooks/README.md)",
        n_per_class=500, eval_per_class=50, aa_per_class=10, attacks=("clean", "fgsm", "pgd20", "cw20", "aa"),
        seeds=(0, 1, 2), teacher="resnet20", teacher_method="pgd_at", teacher_epochs=30,
        nat_teacher="resnet20", nat_teacher_epochs=5, students=("resnet8",),
        student_epochs=2, attack_steps=5, batch_size=128, ladder=("resnet8", "resnet14", "resnet20", "resnet32")),
    "paper": Profile(
        name="paper", description="the paper's settings: full CIFAR-10, WRN-34-10 TRADES teacher, ResNet-18 and "
                                  "MobileNetV2 students, each method's official epochs and milestones (GPU)",
        seeds=(0, 1, 2), teacher="wrn-34-10", teacher_method="trades", students=("resnet18", "mobilenet_v2"),
        ladder=("resnet20", "resnet56", "mobilenet_v2", "resnet18")),
}

# How a notebook parameter (often a string from `papermill -p`) becomes a profile field.
_INT_FIELDS = ("n_per_class", "eval_per_class", "aa_per_class", "teacher_epochs", "nat_teacher_epochs",
               "student_epochs", "attack_steps", "batch_size")
_TUPLE_FIELDS = {"attacks": str, "seeds": int, "students": str, "ladder": str}
DEVICES = ("auto", "cpu", "cuda", "cuda:<n>", "mps")


# ---- parameter parsing and validation ---------------------------------------------------------------
def as_list(value, what: str, kind=str) -> list:
    """A list parameter from a notebook: a list/tuple, a JSON-list string ('["ard","foo"]', what
    ``papermill -p`` passes; ``None`` allowed for null), a comma-separated string ('ard,fair-ard') or
    one scalar; items converted to ``kind`` (str, float, int; ints must be >= 0, e.g. seeds)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "(")):
            try:
                value = json.loads("[" + text[1:-1].replace("'", '"').replace("None", "null") + "]")
            except json.JSONDecodeError:
                raise ValueError(f"{what}: cannot read {text!r} as a list; write e.g. '[\"a\", \"b\"]' or a,b") from None
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    out = []
    for v in value:
        try:
            if kind is str:
                ok = isinstance(v, str) and v
            else:
                ok = not isinstance(v, bool) and kind(v) == float(v) and (kind is not int or int(v) >= 0)
                v = kind(v)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            hint = "a non-negative integer (seeds are 0, 1, 2, ...)" if kind is int else f"a valid {kind.__name__}"
            raise ValueError(f"{what}: {v!r} is not {hint}")
        out.append(v)
    return out


def _as_tuple(value, what: str, kind=str) -> tuple | None:
    """``as_list`` as a tuple, order kept and duplicates dropped; None stays None."""
    return None if value is None else tuple(dict.fromkeys(as_list(value, what, kind)))


def check_models(names, what: str = "model") -> tuple:
    """Architecture names known to ``fairard.models`` (``wrn-<depth>-<width>`` too); the error lists them."""
    from .models._registry import _PATTERNS  # the name patterns (wrn-<d>-<w>), checked without building

    names = tuple(names)
    known = set(list_models())
    unknown = [n for n in names if n.lower() not in known and not any(r.fullmatch(n.lower()) for r, _, _ in _PATTERNS)]
    if unknown:
        patterns = ", ".join(t for _, t, _ in _PATTERNS)
        raise ValueError(f"unknown {what}(s) {unknown}; valid: {', '.join(sorted(known))}"
                         + (f"; also {patterns}" if patterns else ""))
    return names


def check_device(device: str) -> str:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', and only a GPU that is there."""
    device = str(device)
    ok = device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())
    if not ok:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA GPU is visible; valid here: auto, cpu")
    return device


def get_profile(name: str = "quick", **overrides) -> Profile:
    """The named profile with ``overrides`` applied; unknown names or fields list the valid ones.

    ``None`` overrides keep the profile's value.  List fields accept lists, JSON-list strings and
    comma-separated strings (what ``papermill -p`` passes); every value is checked here."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    valid = {f.name for f in fields(Profile)} - {"name", "description"}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown profile field(s) {unknown}; valid: {', '.join(sorted(valid))}")
    for key, kind in _TUPLE_FIELDS.items():
        if key in overrides:
            overrides[key] = _as_tuple(overrides[key], key, kind)
            if not overrides[key]:
                raise ValueError(f"{key}: give at least one value")
    for key in _INT_FIELDS:
        v = overrides.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{key} must be a positive integer or None, got {v!r}")
    if isinstance(overrides.get("teacher_kwargs"), str):
        overrides["teacher_kwargs"] = json.loads(overrides["teacher_kwargs"])
    profile = dataclasses.replace(PROFILES[name], **overrides)
    check_attacks(profile.attacks)
    if profile.dataset not in D.NUM_CLASSES:
        raise ValueError(f"unknown dataset {profile.dataset!r}; valid: {', '.join(D.NUM_CLASSES)}")
    check_models((profile.teacher,), "teacher")
    check_models((profile.nat_teacher,), "nat_teacher")
    check_models(profile.students, "student")
    check_models(profile.ladder, "ladder model")
    if profile.teacher_method not in METHODS or METHODS[profile.teacher_method].needs_teacher:
        valid_t = sorted(m for m, cls in METHODS.items() if not cls.needs_teacher)
        raise ValueError(f"unknown teacher_method {profile.teacher_method!r}; valid: {', '.join(valid_t)}")
    if profile.teacher_checkpoint and not Path(profile.teacher_checkpoint).expanduser().exists():
        raise ValueError(f"teacher_checkpoint {profile.teacher_checkpoint!r} does not exist")
    check_device(profile.device)
    return profile


def check_methods(methods) -> list[str]:
    """Validate method names (``fair-<m>`` allowed); the error lists the valid ones."""
    methods = list(methods)
    valid = sorted(METHODS) + sorted(f"fair-{m}" for m in METHODS)
    unknown = [m for m in methods if m not in valid]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid: {', '.join(valid)}")
    return methods


@dataclass(frozen=True)
class Setup(Profile):
    """A profile plus a study's own parameters, as ``validate`` checked them.  It *is* a Profile,
    so it goes wherever one does (``student_config``, ``run``, ``evaluate_teacher``)."""
    methods: tuple = ()            # methods to run, e.g. ("ard", "fair-ard")
    other_seeds: tuple = ()        # main_results: seeds of the methods outside the headline pairs
    headline: tuple = ()           # base methods compared with their Fair-* version on every seed
    teacher_ladder: tuple = ()     # capacity_gap: teacher architectures (empty: only ``teacher``)
    focus: str | None = None       # the attack a notebook's comparison is about (one of ``attacks``)
    progress: bool = True          # tqdm bars while training and evaluating

    @property
    def headline_pairs(self) -> tuple:
        """(base, fair-base) for each headline method whose pair is among ``methods``."""
        return tuple((b, f"fair-{b}") for b in self.headline if b in self.methods and f"fair-{b}" in self.methods)


def validate(profile: str = "quick", methods=(), attacks=None, *, other_seeds=None, headline=(),
             teacher_ladder=None, focus=None, progress=True, results_dir=None, overrides=None,
             **profile_fields) -> Setup:
    """One call for a notebook's first cell: checks every parameter and returns the ``Setup``.

    ``attacks`` and any profile field given by keyword (seeds, students, ladder, device, ...) or in
    ``overrides`` (a dict, or its JSON text as ``papermill -p`` passes it) replace the profile's value
    when not None.  ``other_seeds`` None means the first of the seeds.  ``focus`` is an attack that must be
    among the evaluated ones (a notebook's ``attack`` parameter).  ``results_dir`` (if given)
    sets ``$FAIRARD_RESULTS`` for this process.  Anything unknown raises a ValueError that lists the
    valid values."""
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError:
            raise ValueError(f"overrides: {overrides!r} is not a JSON object such as '{{\"student_epochs\": 10}}'") from None
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a dict of profile fields, got {overrides!r}")
    p = get_profile(profile, attacks=attacks, **{**(overrides or {}), **profile_fields})
    methods = tuple(check_methods(_as_tuple(methods, "methods") or ()))
    other = _as_tuple(other_seeds, "other_seeds", int)
    other = p.seeds[:1] if other is None else other
    headline = _as_tuple(headline, "headline") or ()
    bad = [h for h in headline if h not in METHODS or h.startswith("fair-")]
    if bad:
        raise ValueError(f"unknown headline method(s) {bad}; valid (base methods with a fair- version): "
                         f"{', '.join(sorted(METHODS))}")
    ladder_t = check_models(_as_tuple(teacher_ladder, "teacher_ladder") or (), "teacher_ladder model")
    if focus is not None:
        check_attacks([focus])
        if focus not in p.attacks:
            raise ValueError(f"attack {focus!r} is not among the evaluated attacks {list(p.attacks)}; "
                             f"add it to `attacks` or pick one of those")
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be True or False, got {progress!r}")
    if results_dir:
        os.environ["FAIRARD_RESULTS"] = str(Path(results_dir).expanduser().absolute())
    values = {f.name: getattr(p, f.name) for f in fields(p)}
    return Setup(**values, methods=methods, other_seeds=other, headline=headline, teacher_ladder=ladder_t,
                 focus=focus, progress=progress)


def results_dir() -> Path:
    """``$FAIRARD_RESULTS`` (made absolute), else ``data/results`` of the checkout (the working directory
    outside one): notebooks run from any folder share one cache."""
    env = os.environ.get("FAIRARD_RESULTS")
    if env:
        return Path(env).expanduser().absolute()
    return (_REPO if (_REPO / "pyproject.toml").exists() else Path.cwd()) / "data" / "results"


# ---- configs -------------------------------------------------------------------------------------------
def _scaled_schedule(method: str, epochs: int | None):
    """Milestones (and epoch-valued options) of ``method`` shrunk proportionally to ``epochs``."""
    base, _ = parse_method_name(method)
    official = METHODS[base].optim
    if epochs is None or epochs == official.epochs:
        return None, {}
    milestones = tuple(sorted({round(m * epochs / official.epochs) for m in official.milestones} - {0, epochs}))
    options = {}
    defaults = METHODS[base].option_defaults()
    for opt in _EPOCH_OPTIONS.get(base, ()):
        options[opt] = max(1, round(defaults[opt] * epochs / official.epochs))
    return milestones, options


def teacher_config(p: Profile, *, role: str = "teacher", seed: int = 0) -> TrainConfig:
    """The (cached) teacher of profile ``p``; role 'nat_teacher' gives MTARD's natural teacher."""
    arch, method, epochs = ((p.teacher, p.teacher_method, p.teacher_epochs) if role == "teacher"
                            else (p.nat_teacher, "natural", p.nat_teacher_epochs))
    milestones, _ = _scaled_schedule(method, epochs)
    return TrainConfig(method=method, student=arch, dataset=p.dataset, n_per_class=p.n_per_class, epochs=epochs,
                       milestones=milestones, attack_steps=p.attack_steps, batch_size=p.batch_size, seed=seed,
                       student_kwargs=dict(p.teacher_kwargs) if role == "teacher" else {}, device=p.device,
                       monitor_n=0)


def teacher_checkpoint(p: Profile, *, role: str = "teacher", progress: bool = True) -> str:
    """Path of the teacher's weights: the profile's checkpoint, or a cached trained one."""
    if role == "teacher" and p.teacher_checkpoint:
        return p.teacher_checkpoint
    cfg = teacher_config(p, role=role)
    out = results_dir() / "teachers" / f"{cfg.method}-{cfg.student}-{cfg.key()}"
    if not (out / "final.pt").exists():
        train(cfg, out, progress=progress)
    return str(out / "final.pt")


def student_config(p: Profile, method: str, *, student: str | None = None, seed: int = 0, progress: bool = True,
                   **overrides) -> TrainConfig:
    """A distillation run of profile ``p``: its teacher(s), subset, shortened schedule; ``overrides``
    are TrainConfig fields (beta, difficulty, clamp, lr_schedule, method_options, ...)."""
    check_methods([method])
    base, _ = parse_method_name(method)
    milestones, options = _scaled_schedule(method, p.student_epochs)
    cls = METHODS[base]
    kwargs = dict(method=method, student=student or p.students[0], dataset=p.dataset, n_per_class=p.n_per_class,
                  epochs=p.student_epochs, milestones=milestones, attack_steps=p.attack_steps,
                  batch_size=p.batch_size, seed=seed, device=p.device, monitor_n=0,
                  method_options=options)
    if cls.needs_teacher:
        kwargs.update(teacher=p.teacher, teacher_checkpoint=teacher_checkpoint(p, progress=progress),
                      teacher_kwargs=dict(p.teacher_kwargs))
    if getattr(cls, "needs_nat_teacher", False) or base == "mtard":
        kwargs.update(nat_teacher=p.nat_teacher,
                      nat_teacher_checkpoint=teacher_checkpoint(p, role="nat_teacher", progress=progress))
    if base == "cfa":
        kwargs["val_per_class"] = max(1, (p.n_per_class or 5000) // 50)  # FAWA's validation split (2 %)
    method_options = {**options, **overrides.pop("method_options", {})}
    kwargs.update(overrides)
    kwargs["method_options"] = method_options
    return TrainConfig(**kwargs)


# ---- running ---------------------------------------------------------------------------------------------
def _eval_settings(p: Profile, attacks=None) -> dict:
    return {"attacks": list(check_attacks(attacks or p.attacks)), "eval_per_class": p.eval_per_class,
            "aa_per_class": p.aa_per_class, "eps": 8 / 255, "seed": 0}


def _portable(path: str | None) -> str | None:
    """A checkpoint path inside the results folder, written relative to it: cache keys then survive
    moving or copying the folder (e.g. results computed on a GPU machine, read back for the book)."""
    if not path:
        return path
    try:
        return "$FAIRARD_RESULTS/" + Path(path).absolute().relative_to(results_dir()).as_posix()
    except ValueError:
        return path


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def train_key(cfg: TrainConfig) -> str:
    """The cache key of a training run: its config, teacher checkpoints relative to the results folder."""
    portable = dataclasses.replace(cfg, teacher_checkpoint=_portable(cfg.teacher_checkpoint),
                                   nat_teacher_checkpoint=_portable(cfg.nat_teacher_checkpoint))
    return portable.key()


def run_key(cfg: TrainConfig, settings: dict) -> str:
    """The key of one result: the training key plus the evaluation settings (attacks, subsets, eps, seed)."""
    return _hash({"train": train_key(cfg), "eval": settings})


def run_dir(cfg: TrainConfig) -> Path:
    """The folder of a training run; every evaluation of it (any attack list) lives inside."""
    return results_dir() / "runs" / f"{cfg.method}-{cfg.student}-s{cfg.seed}-{train_key(cfg)}"


def result_file(cfg: TrainConfig, settings: dict) -> Path:
    return run_dir(cfg) / f"result-{run_key(cfg, settings)}.json"


def load_result(path) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def _attack_images(settings: dict, attack: str):
    """Test images per class an attack runs on: AutoAttack may use its own smaller subset."""
    return settings["eval_per_class"] if EVAL_ATTACKS[attack].batched else (settings["aa_per_class"]
                                                                         or settings["eval_per_class"])


def evaluate_model(model, dataset: str, settings: dict, device, progress: bool = True, cache: Path | None = None) -> dict:
    """Per-class evaluation under every attack of ``settings``.

    AutoAttack runs on its own class-balanced subset when ``aa_per_class`` is below ``eval_per_class``
    (its per-class numbers then stand alone: the AA <= PGD <= clean check covers only the attacks run on
    the same images).  With ``cache`` (a folder), each attack's evaluation is stored there on its own
    (``evals/<attack>-<key>.json``) and reused: adding an attack to a study evaluates only that attack.
    ``model`` may be a zero-argument callable that builds the model; it is called only if something
    is missing from the cache."""
    names = D.CLASS_NAMES[dataset]
    attacks = list(settings["attacks"])
    n_eval = settings["eval_per_class"]
    files = {a: (cache / "evals" / f"{a}-{_hash({'attack': a, 'per_class': _attack_images(settings, a), 'eps': settings['eps'], 'seed': settings['seed']})}.json"
                 if cache is not None else None) for a in attacks}
    eps1_file = cache / "evals" / f"eps1-{_hash({'per_class': n_eval, 'seed': settings['seed']})}.json" if cache else None
    done = {a: load_result(f) for a, f in files.items() if f is not None and f.exists()}
    eps1 = load_result(eps1_file) if eps1_file is not None and eps1_file.exists() else None
    missing = [a for a in attacks if a not in done]
    if missing or eps1 is None:
        model = model() if callable(model) and not isinstance(model, torch.nn.Module) else model
        groups: dict = {}
        for a in missing:
            groups.setdefault(_attack_images(settings, a), []).append(a)
        images = functools.lru_cache(maxsize=None)(lambda n: D.test_tensors(dataset, n, device))  # read once per subset
        for per_class, group in groups.items():
            x, y = images(per_class)
            r = evaluate(model, x, y, attacks=group, class_names=names, progress=progress, seed=settings["seed"],
                         check_large_eps=0)
            for a in group:
                done[a] = {"attack": a, "per_class_images": per_class, "n": r["n"], "summary": r["attacks"][a],
                           "seconds": r["seconds"][a]}
                if files[a] is not None:
                    write_json(files[a], done[a])
        if eps1 is None:  # the gradient-masking check: PGD at eps = 1 must leave ~0 accuracy
            x, y = images(n_eval)
            n = min(200, len(x))
            eps1 = {"eps1_pgd_accuracy": large_eps_accuracy(model, x[:n], y[:n], seed=settings["seed"]), "n": n}
            if eps1_file is not None:
                write_json(eps1_file, eps1)
    summaries = {a: done[a]["summary"] for a in attacks}
    same_images = {a: s for a, s in summaries.items() if _attack_images(settings, a) == n_eval}
    warnings = sanity_report(same_images)
    if eps1["eps1_pgd_accuracy"] > 0.05:
        warnings.append(f"PGD at eps=1 leaves {eps1['eps1_pgd_accuracy']:.1%} accuracy: gradients may be masked")
    main_n = next((done[a]["n"] for a in attacks if _attack_images(settings, a) == n_eval), done[attacks[0]]["n"])
    return {"eps": settings["eps"], "n": main_n, "class_names": list(names), "seed": settings["seed"],
            "attacks": summaries, "seconds": {a: done[a]["seconds"] for a in attacks},
            "images": {a: done[a]["n"] for a in attacks},
            "sanity": {"warnings": warnings, "eps1_pgd_accuracy": eps1["eps1_pgd_accuracy"]}}


def run(cfg: TrainConfig, *, attacks=None, profile: Profile | None = None, progress: bool = True) -> dict:
    """Train (or resume, or reuse) ``cfg`` and evaluate it per class; returns the result dict.

    Training is cached by ``train_key`` (``run_dir``), each attack's evaluation inside it, and the
    assembled result per evaluation settings (``result_file``).  The result carries ``from_cache``
    (not stored): True when nothing was trained or evaluated."""
    p = profile or get_profile("quick")
    settings = _eval_settings(p, attacks)
    out, target = run_dir(cfg), result_file(cfg, settings)
    cached = load_result(target)
    if cached is not None:
        return {**cached, "from_cache": True}
    needs_training = not (out / "final.pt").exists()
    built = {}

    device = resolve_device(cfg.device)

    def model():  # the trained student (weights read from final.pt when training is cached); built once
        if "model" not in built:
            if needs_training:
                built["model"] = train(cfg, out, progress=progress)
            else:
                from .models import load_checkpoint
                arch = build_model(cfg.student, D.NUM_CLASSES[cfg.dataset], **cfg.student_kwargs)
                built["model"] = load_checkpoint(arch, out / "final.pt").to(device).eval()
        return built["model"]

    if needs_training:
        model()
    evaluation = evaluate_model(model, cfg.dataset, settings, device, progress=progress, cache=out)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()] \
        if (out / "log.jsonl").exists() else []
    result = {
        "kind": "run", "key": run_key(cfg, settings), "train_key": train_key(cfg), "method": cfg.method,
        "student": cfg.student, "seed": cfg.seed, "profile": p.name, "config": cfg.to_dict(),
        "eval_settings": settings, "evaluation": evaluation,
        "class_weights_history": [h.get("class_weights") for h in log],
        "kappa_history": [h.get("class_stats", {}).get("kappa") for h in log],
        "train_seconds": sum(h.get("seconds", 0.0) for h in log),  # all epochs, resumed runs included
        "eval_seconds": sum(evaluation["seconds"].values()),
        "provenance": provenance(device), "dataset_note": dataset_note(cfg.dataset),
    }
    write_json(target, result)
    return {**result, "from_cache": False, "trained": needs_training}


def _report(cfg: TrainConfig, r: dict) -> None:
    if r["from_cache"]:
        state = "cached"
    elif r.get("trained", True):
        state = f"trained {r['train_seconds']:.0f} s + eval {r['eval_seconds']:.0f} s"
    else:
        state = "training cached; only the missing attacks evaluated"
    print(f"{cfg.method:>12} {cfg.student:>14} seed {cfg.seed}: {state}", flush=True)


def run_all(configs, *, profile: Profile, attacks=None, progress: bool = True) -> list[dict]:
    """``run`` for each config, with one line per run saying trained or cached."""
    results = []
    for cfg in configs:
        r = run(cfg, attacks=attacks, profile=profile, progress=progress)
        _report(cfg, r)
        results.append(r)
    return results


def evaluate_teacher(p: Profile, *, attacks=None, progress: bool = True) -> dict:
    """The teacher's per-class evaluation, cached like a run (each attack on its own)."""
    settings = _eval_settings(p, attacks)
    ckpt = teacher_checkpoint(p, progress=progress)
    tkey = _hash({"ckpt": _portable(ckpt), "arch": p.teacher, "kw": p.teacher_kwargs})
    folder = results_dir() / "teacher-evals" / f"{p.teacher}-{tkey}"
    key = _hash({"teacher": tkey, "eval": settings})
    out = folder / f"result-{key}.json"
    cached = load_result(out)
    if cached is not None:
        return {**cached, "from_cache": True}
    from .models import load_checkpoint
    device = resolve_device(p.device)

    def model():
        return load_checkpoint(build_model(p.teacher, D.NUM_CLASSES[p.dataset], **p.teacher_kwargs), ckpt).to(device)

    evaluation = evaluate_model(model, p.dataset, settings, device, progress=progress, cache=folder)
    result = {"kind": "teacher", "method": f"teacher ({p.teacher_method})", "student": p.teacher, "seed": 0,
              "key": key, "checkpoint": _portable(ckpt), "profile": p.name, "eval_settings": settings,
              "evaluation": evaluation, "provenance": provenance(device), "dataset_note": dataset_note(p.dataset)}
    write_json(out, result)
    return {**result, "from_cache": False}


def dataset_note(dataset: str) -> str:
    """Where the data came from, for captions: the in-house copy is a lossy JPEG-derived CIFAR-10."""
    root = D.data_root()
    if (root / dataset / "train.npz").exists() and not any((root / d).exists() for d in
                                                            ("cifar-10-batches-py", "cifar-100-python")):
        return f"{dataset} from {root}/{dataset}/*.npz (in-house runs: a lossy JPEG-derived CIFAR-10 copy)"
    return f"{dataset} (torchvision format under {root})"


def dataset_label(note: str) -> str:
    """The short form of ``dataset_note`` for figure captions."""
    return "lossy JPEG-derived CIFAR-10 copy" if "JPEG" in note else note.split(" ")[0]


# ---- studies: what each notebook runs ----------------------------------------------------------------
_CACHE_ENTRIES = ("runs/*/result*.json", "runs/*/final.pt", "runs/*/evals/*.json", "teachers/*/final.pt",
                  "teacher-evals/*.json", "teacher-evals/*/*.json", "teacher-evals/*/evals/*.json")


def cache_snapshot() -> dict[str, int]:
    """Finished cache entries (results, final weights, teacher evaluations) and their mtimes."""
    root = results_dir()
    return {str(f.relative_to(root)): f.stat().st_mtime_ns for pat in _CACHE_ENTRIES for f in root.glob(pat)}


@dataclass
class Study:
    """What one study call produced: run results, the teacher evaluation(s), and the cache entries it
    wrote (``computed``; empty when everything came from the cache)."""
    setup: Setup
    results: list
    teachers: dict             # teacher architecture -> its evaluation
    computed: list
    seconds: float

    @property
    def teacher(self) -> dict:
        """The (first) teacher's evaluation."""
        return next(iter(self.teachers.values()))

    def summary(self) -> str:
        n = len(self.results) + len(self.teachers)
        what = "everything came from the cache" if not self.computed else f"{len(self.computed)} cache entries written"
        return f"{len(self.results)} runs + {len(self.teachers)} teacher(s) = {n} results; {what}; {self.seconds:.0f} s"

    def caption(self, attack: str | None = None, results=None) -> str:
        """Provenance line for a table or figure: profile, data, seeds, commit, torch, device, AA subset."""
        results = self.results if results is None else results
        everything = list(results) + list(self.teachers.values())
        commits = sorted({r["provenance"]["git_commit"][:12] + ("-dirty" if r["provenance"]["git_commit"]
                          .endswith("-dirty") else "") for r in everything})
        torch_v = sorted({r["provenance"]["versions"]["torch"] or "?" for r in everything})
        devices = sorted({r["provenance"]["device_name"] or r["provenance"]["device"] for r in everything})
        seeds = sorted({r["seed"] for r in results})
        s = self.setup
        parts = [f"profile {s.name}", dataset_label(self.teacher["dataset_note"]),
                 f"seeds {','.join(map(str, seeds))}", f"commit {', '.join(commits)}",
                 f"torch {', '.join(torch_v)}", f"device {', '.join(devices)}",
                 f"eval {s.eval_per_class or 'all'} img/class"]
        if "aa" in s.attacks or "aa10" in s.attacks:
            parts.append(f"AA on {s.aa_per_class or s.eval_per_class or 'all'} img/class")
        if attack:
            parts.insert(0, attack)
        return " · ".join(parts) + " · run keys in the provenance table"


def load_recorded(folder) -> Study:
    """A results folder computed elsewhere (e.g. ``results/h100-2026-11-22``, from a lent GPU) read back
    as a ``Study``: its finished runs and teacher evaluations, nothing trained or evaluated.  A relative
    ``folder`` is looked up in the checkout first.  Unfinished runs (no ``result*.json``) are skipped."""
    folder = Path(folder).expanduser()
    if not folder.is_absolute() and (_REPO / folder).exists():
        folder = _REPO / folder
    results = [{**json.loads(f.read_text()), "from_cache": True} for f in sorted(folder.glob("runs/*/result*.json"))]
    teachers = {}
    for f in sorted(folder.glob("teacher-evals/*.json")) + sorted(folder.glob("teacher-evals/*/result*.json")):
        t = json.loads(f.read_text())
        teachers[t["student"]] = {**t, "from_cache": True}
    if not results or not teachers:
        raise ValueError(f"{folder} holds no finished run (runs/*/result*.json) with a teacher evaluation "
                         f"(teacher-evals/); give the folder that fairard.experiments wrote")
    first, cfg = results[0], results[0]["config"]
    settings = first["eval_settings"]
    base = PROFILES[first["profile"]]
    methods = tuple(dict.fromkeys(r["method"] for r in results))
    values = {f.name: getattr(base, f.name) for f in fields(base)}
    values.update(name=f"{base.name}, {cfg['epochs']} student epochs", attacks=tuple(settings["attacks"]),
                  eval_per_class=settings["eval_per_class"], aa_per_class=settings["aa_per_class"],
                  seeds=tuple(sorted({r["seed"] for r in results})), teacher=cfg["teacher"] or base.teacher,
                  students=tuple(dict.fromkeys(r["student"] for r in results)), n_per_class=cfg["n_per_class"],
                  student_epochs=cfg["epochs"])
    headline = tuple(m for m in BASE_METHODS if m in methods and f"fair-{m}" in methods)
    return Study(Setup(**values, methods=methods, headline=headline), results, teachers, [], 0.0)


def _run_plan(setup: Setup, plan, progress: bool | None) -> Study:
    """Evaluate each plan's teacher (training it if needed), then ``run`` every (profile, method, student, seed).
    ``progress`` None: the setup's."""
    progress = getattr(setup, "progress", True) if progress is None else progress
    before, t0 = cache_snapshot(), time.perf_counter()
    teachers = {}
    for prof, *_ in plan:
        if prof.teacher not in teachers:
            teachers[prof.teacher] = evaluate_teacher(prof, progress=progress)
    if not plan:
        teachers[setup.teacher] = evaluate_teacher(setup, progress=progress)
    results = []
    for prof, method, student, seed in plan:
        cfg = student_config(prof, method, student=student, seed=seed, progress=progress)
        r = run(cfg, profile=prof, progress=progress)
        _report(cfg, r)
        results.append(r)
    after = cache_snapshot()
    computed = sorted(k for k, t in after.items() if before.get(k) != t)
    return Study(setup, results, teachers, computed, time.perf_counter() - t0)


def main_results(setup: Setup, *, progress: bool | None = None) -> Study:
    """Every method of ``setup.methods`` on every student: the headline pairs on ``setup.seeds``, every
    other method on ``setup.other_seeds`` (the CPU budget's compromise, stated in the notebook)."""
    paired = {m for pair in setup.headline_pairs for m in pair}
    plan = [(setup, m, st, s) for st in setup.students for m in setup.methods
            for s in (setup.seeds if m in paired else setup.other_seeds)]
    return _run_plan(setup, plan, progress)


def inheritance(setup: Setup, *, progress: bool | None = None) -> Study:
    """The teacher and every (method, student, seed) of ``setup``."""
    plan = [(setup, m, st, s) for st in setup.students for m in setup.methods for s in setup.seeds]
    return _run_plan(setup, plan, progress)


def capacity_gap(setup: Setup, *, progress: bool | None = None) -> Study:
    """Each student of ``setup.ladder`` distilled (``setup.methods``, ``setup.seeds``) from each teacher of
    ``setup.teacher_ladder`` (default: the profile's teacher alone)."""
    plan = []
    for t in setup.teacher_ladder or (setup.teacher,):
        prof = setup if t == setup.teacher else dataclasses.replace(setup, teacher=t, teacher_kwargs={})
        plan += [(prof, m, st, s) for st in setup.ladder for m in setup.methods for s in setup.seeds]
    return _run_plan(setup, plan, progress)


# ---- summaries -------------------------------------------------------------------------------------------
def metric(result: dict, attack: str, what: str = "accuracy") -> float:
    """One number of a run: ``what`` in accuracy, worst_class_accuracy, nsd, mean_class_accuracy."""
    return result["evaluation"]["attacks"][attack][what]


def floor_note(results, attack: str, *, low: float = 0.05) -> str:
    """A warning sentence when ``results`` cannot show a class weighting's effect under ``attack``: every
    run's worst class is at 0 %, or most runs average below ``low``; "" otherwise."""
    results = list({r.get("key", id(r)): r for r in results}.values())  # an arm shared by two sweeps counts once
    if not results:
        return ""
    worst = [metric(r, attack, "worst_class_accuracy") for r in results]
    weak = sum(metric(r, attack, "accuracy") < low for r in results)
    if not any(worst):
        return (f"Under {attack} the worst class is at 0 % in every one of the {len(results)} runs here, and "
                f"{weak} of them average below {100 * low:.0f} %: a floor. No difference between these runs can "
                "show on the worst class at this scale; differences can show in the averages and the clean "
                "columns, and the worst class needs the `paper` profile (or a recorded GPU run).")
    if 2 * weak > len(results):
        return (f"{weak} of the {len(results)} runs average below {100 * low:.0f} % under {attack}: their worst "
                "class and NSD are close to a floor and say little.")
    return ""


def _mean_std(vals) -> tuple[float, float]:
    mean = sum(vals) / len(vals)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))


def summarize_runs(results, attacks, whats=("accuracy", "worst_class_accuracy", "nsd")) -> list[dict]:
    """Mean and population std over seeds, per (method, student) and attack: one row per group."""
    groups: dict[tuple, list] = {}
    for r in results:
        groups.setdefault((r["method"], r["student"]), []).append(r)
    rows = []
    for (method, student), runs in groups.items():
        row = {"method": method, "student": student, "seeds": sorted(r["seed"] for r in runs)}
        for a in attacks:
            for w in whats:
                row[f"{a}/{w}"] = _mean_std([metric(r, a, w) for r in runs])
        rows.append(row)
    return rows


def _md(head, rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def markdown_table(rows, attacks, whats=("accuracy", "worst_class_accuracy")) -> str:
    """A Markdown table of ``summarize_runs`` rows: mean ± std in %, NSD as a ratio.  A row from a
    single seed shows the value alone (no ``± 0.0`` that would look like a measured spread)."""
    label = {"accuracy": "avg", "worst_class_accuracy": "worst", "nsd": "NSD", "mean_class_accuracy": "mean"}
    head = ["method", "student", "seeds"] + [f"{a} {label[w]}" for a in attacks for w in whats]
    body = []
    for row in rows:
        cells = [row["method"], row["student"], ",".join(map(str, row["seeds"]))]
        for a in attacks:
            for w in whats:
                m, s = row[f"{a}/{w}"]
                scale, digits = (1, 3) if w == "nsd" else (100, 1)
                cells.append(f"{scale * m:.{digits}f}" + (f" ± {scale * s:.{digits}f}" if len(row["seeds"]) > 1 else ""))
        body.append(cells)
    return _md(head, body)


def compare_pair(results, base: str, fair: str, attack: str, what: str = "worst_class_accuracy") -> dict:
    """Fair-* minus base over matched seeds, with the seed-to-seed spread, and a plain-words verdict.
    ``results`` must hold one student architecture (``headline`` splits by student)."""
    results = [r for r in results if r["method"] in (base, fair)]
    students = sorted({r["student"] for r in results})
    if len(students) > 1:
        raise ValueError(f"compare_pair got several students {students}; pass the results of one")
    by = {(r["method"], r["seed"]): metric(r, attack, what) for r in results}
    seeds = sorted({s for (m, s) in by if m == base} & {s for (m, s) in by if m == fair})
    if not seeds:
        raise ValueError(f"no seed has both {base} and {fair}")
    diffs = [by[(fair, s)] - by[(base, s)] for s in seeds]
    mean = sum(diffs) / len(diffs)
    spread = max(_std([by[(base, s)] for s in seeds]), _std([by[(fair, s)] for s in seeds]))
    std_diff = _std(diffs)
    exceeds = len(seeds) >= 3 and abs(mean) > 2 * max(spread, std_diff / math.sqrt(len(seeds)))
    verdict = (f"{fair} vs {base}, {what.replace('_', ' ')} under {attack}: {100 * mean:+.1f} points "
               f"(mean over {len(seeds)} seeds; seed-to-seed std {100 * spread:.1f}). ")
    verdict += ("The difference exceeds twice the seed-to-seed spread." if exceeds else
                "The difference does not exceed twice the seed-to-seed spread: at this scale it is not "
                "distinguishable from noise." if len(seeds) >= 3 else
                "Fewer than 3 seeds: no claim about significance.")
    return {"base": base, "fair": fair, "attack": attack, "what": what, "seeds": seeds, "diffs": diffs,
            "base_values": [by[(base, s)] for s in seeds], "fair_values": [by[(fair, s)] for s in seeds],
            "mean_diff": mean, "seed_std": spread, "exceeds_spread": exceeds, "verdict": verdict}


def _std(vals) -> float:
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))


def headline(results, pairs, attacks=("pgd20", "aa"), what: str = "worst_class_accuracy") -> list[dict]:
    """``compare_pair`` for every student, pair and attack that the results hold (each dict also names
    its ``student``; with several students the verdict starts with it)."""
    students = list(dict.fromkeys(r["student"] for r in results))
    out = []
    for student in students:
        mine = [r for r in results if r["student"] == student]
        have = {r["method"] for r in mine}
        for base, fair in pairs:
            for a in attacks:
                if base in have and fair in have and all(a in r["evaluation"]["attacks"] for r in mine):
                    c = {**compare_pair(mine, base, fair, a, what), "student": student,
                         "first_student": student == students[0]}
                    if len(students) > 1:
                        c["verdict"] = f"({student}) " + c["verdict"]
                    out.append(c)
    return out


def headline_markdown(comparisons, setup: Profile) -> str:
    """The headline in words: one verdict per comparison, then what the profile can and cannot say."""
    if not comparisons:
        return "No headline pair (a base method with its Fair-* version) was run."
    lines = [f"- {c['verdict']}" for c in comparisons]
    if any(c["exceeds_spread"] for c in comparisons):
        tail = ("Where the difference exceeds the spread, it holds for this profile "
                f"(`{setup.name}`: {setup.n_per_class or 'all'} training images per class, "
                f"{setup.student_epochs or 'official'} student epochs); whether it holds at the paper's scale is "
                "what the `paper` profile tests.")
    elif min(len(c["seeds"]) for c in comparisons) < 3:
        tail = "With fewer than 3 seeds this is a smoke check of the pipeline, not a measurement."
    else:
        tail = ("At this scale the Fair-* effect is not distinguishable from seed-to-seed noise. That is not "
                "evidence against the paper: its claim (up to +12.3 points of worst-class AA robustness with "
                "ResNet-18 students) is made for the full training set, a WRN-34-10 teacher and the official "
                "schedules, which is what the `paper` profile runs.")
    floored = [c for c in comparisons if not any(c.get("base_values", [1])) and not any(c.get("fair_values", [1]))]
    if floored:
        tail += (" " + "; ".join(f"{c['fair']} vs {c['base']} under {c['attack']}" for c in floored)
                 + (": the value is 0 % for every seed of both methods, a floor that no class weighting can "
                    "show an effect on (the students are too weak)."))
    return "\n".join(lines) + "\n\n" + tail


_GLUE_ATTACK = {"pgd20": "pgd", "cw20": "cw"}


def glue_name(*parts: str) -> str:
    """A glue key: 'fair-ard', 'worst', 'pgd20', 'diff' -> 'fair_ard_worst_pgd_diff'."""
    return "_".join(_GLUE_ATTACK.get(p, p) for p in parts).replace("-", "_").replace(" ", "_")


def headline_glue(comparisons) -> dict:
    """Numbers the book cites: per comparison the mean Fair-minus-base difference (points), the seed
    std (points), the number of seeds and whether it exceeds the spread.  Names such as
    ``fair_ard_worst_pgd_diff`` refer to the first student; every student also gets names with its
    architecture appended (``fair_ard_worst_pgd_diff_resnet18``)."""
    out = {}
    for c in comparisons:
        values = {"diff": round(100 * c["mean_diff"], 1), "seed_std": round(100 * c["seed_std"], 1),
                  "n_seeds": len(c["seeds"]), "exceeds": bool(c["exceeds_spread"])}
        for what, value in values.items():
            if c.get("first_student", True):
                out[glue_name(c["fair"], "worst", c["attack"], what)] = value
            if "student" in c:
                out[glue_name(c["fair"], "worst", c["attack"], what, c["student"])] = value
    return out


def class_accuracy(results, attack: str) -> dict:
    """Per (method, student): per-class accuracy mean and std over seeds, plus the seeds."""
    groups: dict[tuple, list] = {}
    for r in results:
        groups.setdefault((r["method"], r["student"]), []).append(r)
    out = {}
    for key, runs in groups.items():
        acc = np.array([[np.nan if v is None else v for v in r["evaluation"]["attacks"][attack]["per_class"]]
                        for r in runs], dtype=float)
        out[key] = {"mean": acc.mean(0), "std": acc.std(0), "seeds": sorted(r["seed"] for r in runs)}
    return out


def per_class_markdown(results, teacher: dict | None, attack: str) -> str:
    """Rows: the teacher, then each (method, student) with per-class accuracy (%, mean over seeds),
    then avg / worst / NSD."""
    names = (teacher or results[0])["evaluation"]["class_names"]
    rows = []
    groups = class_accuracy(([teacher] if teacher else []) + list(results), attack)
    for (method, student), g in groups.items():
        acc = g["mean"]
        nsd = float(acc.std() / acc.mean()) if acc.mean() > 0 else float("nan")
        rows.append([method, student, ",".join(map(str, g["seeds"]))] + [f"{100 * v:.1f}" for v in acc]
                    + [f"{100 * acc.mean():.1f}", f"{100 * acc.min():.1f} ({names[int(acc.argmin())]})", f"{nsd:.3f}"])
    return _md(["method", "student", "seeds"] + list(names) + ["mean", "worst", "NSD"], rows)


def _rank(a) -> np.ndarray:
    """Ranks 1..n with ties averaged (what Spearman's rho needs)."""
    a = np.asarray(a, dtype=float)
    order = a.argsort(kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(1, len(a) + 1)
    for v in np.unique(a):
        tie = a == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def pearson(a, b) -> float:
    """Pearson correlation; nan when either side is constant."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b) -> float:
    """Spearman's rank correlation (Pearson on tie-averaged ranks); nan when either side is constant."""
    return pearson(_rank(a), _rank(b))


def inheritance_rows(results, teacher: dict, attack: str) -> list[dict]:
    """Per (method, student): mean/worst/NSD of the seed-averaged class accuracies, the teacher's in the
    first row, and the Pearson / Spearman correlation of the student's class accuracies with the teacher's."""
    names = teacher["evaluation"]["class_names"]
    t = np.array(teacher["evaluation"]["attacks"][attack]["per_class"], dtype=float)
    rows = []
    for (method, student), g in class_accuracy([teacher] + list(results), attack).items():
        acc = g["mean"]
        rows.append({"method": method, "student": student, "seeds": g["seeds"], "mean": float(acc.mean()),
                     "worst": float(acc.min()), "worst_class": names[int(acc.argmin())],
                     "nsd": float(acc.std() / acc.mean()) if acc.mean() > 0 else float("nan"),
                     "pearson": pearson(t, acc), "spearman": spearman(t, acc), "per_class": acc.tolist()})
    return rows


def _f(v, fmt="{:.2f}") -> str:
    return "n/a" if v is None or v != v else fmt.format(v)


def inheritance_markdown(rows) -> str:
    body = [[r["method"], r["student"], ",".join(map(str, r["seeds"])), _f(100 * r["mean"], "{:.1f}"),
             f"{100 * r['worst']:.1f} ({r['worst_class']})", _f(r["nsd"], "{:.3f}"), _f(r["pearson"]),
             _f(r["spearman"])] for r in rows]
    return _md(["model", "arch", "seeds", "mean %", "worst % (class)", "NSD", "Pearson r vs teacher",
                "Spearman ρ vs teacher"], body)


def inheritance_verdict(rows, attack: str, *, weak_below: float = 0.05, nsd_tolerance: float = 0.05) -> str:
    """Plain words: do students keep the teacher's class ranking, and its fairness (NSD, worst class)?

    A student is "less fair" when its NSD exceeds the teacher's by more than ``nsd_tolerance`` (relative),
    "fairer" when it is that much below. Students averaging below ``weak_below`` are left out of the
    conclusion: NSD = std / mean explodes as the mean goes to 0, so they are "unfair" by construction."""
    t, students = rows[0], rows[1:]
    if not students:
        return "No student was run."
    rho = [r["spearman"] for r in students if r["spearman"] == r["spearman"]]
    if rho:
        m = sum(rho) / len(rho)
        strength = "strongly" if m >= 0.7 else "moderately" if m >= 0.4 else "weakly"
        rank = (f"The students' class-wise {attack} robustness follows the teacher's {strength} "
                f"(Spearman ρ {min(rho):.2f} to {max(rho):.2f}, mean {m:.2f}): they inherit which classes are hard.")
    else:
        rank = "The correlation is undefined here (constant class accuracies): nothing can be said about ranking."

    def relative(r):
        return f"{100 * (r['nsd'] / t['nsd'] - 1):+.0f} %" if t["nsd"] and r["nsd"] == r["nsd"] else "n/a"

    fair = (f" NSD (lower is fairer): teacher {t['nsd']:.3f}; "
            + ", ".join(f"{r['method']} {r['nsd']:.3f} ({relative(r)})" for r in students) + ". "
            f"Worst class: teacher {100 * t['worst']:.1f} % ({t['worst_class']}); "
            + ", ".join(f"{r['method']} {100 * r['worst']:.1f} % ({r['worst_class']})" for r in students) + ".")
    measured = [r for r in students if r["mean"] >= weak_below]
    weak = [r["method"] for r in students if r["mean"] < weak_below]
    more = [r for r in measured if r["nsd"] > t["nsd"] * (1 + nsd_tolerance)]
    less = [r for r in measured if r["nsd"] < t["nsd"] * (1 - nsd_tolerance)]
    if not measured:
        end = (f" Every student is below {100 * weak_below:.0f} % on average: this run cannot test the paper's "
               "observation.")
    elif len(more) == len(measured):
        end = (f" {len(more)} of {len(measured)} measurable students are less fair than the teacher (NSD more than "
               f"{100 * nsd_tolerance:.0f} % higher): this matches the paper's observation that students inherit the "
               "teacher's robust fairness only partially.")
    elif not more and not less:
        end = (f" The measurable students are about as fair as the teacher (NSD within ±{100 * nsd_tolerance:.0f} %): "
               "by NSD, the partial inheritance the paper reports does not show here.")
    elif not more:
        end = " The measurable students are at least as fair as the teacher, unlike what the paper reports."
    else:
        end = (f" The picture is mixed: {len(more)} of {len(measured)} measurable students are less fair than the "
               f"teacher, {len(less)} fairer.")
    n_seeds = min(len(r["seeds"]) for r in students)
    caveat = (f" ({n_seeds} seed(s) per method, {len(t['per_class'])} classes: descriptive, not a significance test.)")
    if weak:
        caveat += (f" {len(weak)} of {len(students)} students ({', '.join(weak)}) are below {100 * weak_below:.0f} % on "
                   f"average under {attack}: their NSD and ranking rest on one or two classes and say little about "
                   "inheritance, so the conclusion leaves them out.")
    return rank + fair + end + caveat


@functools.lru_cache(maxsize=None)
def _param_count(arch: str, kw: str) -> int:
    return sum(p.numel() for p in build_model(arch, 10, **json.loads(kw)).parameters())


def param_count(arch: str, **kwargs) -> int:
    """Number of parameters of ``arch`` (10 classes)."""
    return _param_count(arch, json.dumps(kwargs, sort_keys=True))


def capacity_rows(study: Study, attack: str) -> list[dict]:
    """Per (teacher, method, student): parameter counts, the student's seed-averaged mean / worst / NSD,
    and how much of the teacher's mean and worst-class robustness survives (student / teacher)."""
    rows = []
    for tname, tev in study.teachers.items():
        t = np.array(tev["evaluation"]["attacks"][attack]["per_class"], dtype=float)
        t_kw = study.setup.teacher_kwargs if tname == study.setup.teacher else {}
        mine = [r for r in study.results if r["config"].get("teacher") == tname]
        for (method, student), g in class_accuracy(mine, attack).items():
            acc = g["mean"]
            rows.append({"teacher": tname, "teacher_params": param_count(tname, **t_kw), "method": method,
                         "student": student, "params": param_count(student), "seeds": g["seeds"],
                         "mean": float(acc.mean()), "worst": float(acc.min()),
                         "nsd": float(acc.std() / acc.mean()) if acc.mean() > 0 else float("nan"),
                         "teacher_mean": float(t.mean()), "teacher_worst": float(t.min()),
                         "teacher_nsd": float(t.std() / t.mean()) if t.mean() > 0 else float("nan"),
                         "kept_mean": float(acc.mean() / t.mean()) if t.mean() > 0 else float("nan"),
                         "kept_worst": float(acc.min() / t.min()) if t.min() > 0 else float("nan"),
                         "spearman": spearman(t, acc)})
    return sorted(rows, key=lambda r: (r["teacher_params"], r["method"], r["params"]))


def capacity_markdown(rows) -> str:
    body = [[r["teacher"], r["method"], r["student"], f"{r['params'] / 1e6:.2f}M",
             f"{r['teacher_params'] / r['params']:.1f}×", ",".join(map(str, r["seeds"])),
             f"{100 * r['mean']:.1f}", f"{100 * r['worst']:.1f}", _f(r["nsd"], "{:.3f}"),
             f"{100 * r['teacher_worst']:.1f}", _f(r["kept_mean"]), _f(r["kept_worst"]), _f(r["spearman"])]
            for r in rows]
    return _md(["teacher", "method", "student", "params", "gap (teacher/student params)", "seeds", "mean %",
                "worst %", "NSD", "teacher worst %", "kept mean", "kept worst", "Spearman ρ vs teacher"], body)


def capacity_verdict(rows, attack: str) -> str:
    """Plain words: does the share of the teacher's worst-class robustness that survives shrink as the gap grows?"""
    lines = []
    for (tname, method) in dict.fromkeys((r["teacher"], r["method"]) for r in rows):
        mine = sorted((r for r in rows if r["teacher"] == tname and r["method"] == method), key=lambda r: r["params"])
        small, large = mine[0], mine[-1]
        trend = spearman([r["params"] for r in mine], [r["worst"] for r in mine]) if len(mine) > 2 else float("nan")
        lines.append(f"- {method} from {tname} (teacher worst class {100 * small['teacher_worst']:.1f} %, "
                     f"NSD {small['teacher_nsd']:.3f}): the smallest student ({small['student']}, "
                     f"{small['params'] / 1e6:.2f}M) reaches {100 * small['worst']:.1f} % on its worst class "
                     f"(NSD {small['nsd']:.3f}), the largest ({large['student']}, {large['params'] / 1e6:.2f}M) "
                     f"{100 * large['worst']:.1f} % (NSD {large['nsd']:.3f})"
                     + (f"; rank correlation of size with worst class {trend:+.2f}." if trend == trend else "."))
    return "\n".join(lines) + (f"\n\nUnder {attack}; seeds as in the table. A smaller gap should keep more of the "
                               "teacher's worst class if the capacity gap is one cause of unfairness, as the paper argues.")


def provenance_markdown(study: Study) -> str:
    """One row per run and teacher: key (config hash), commit, device, seconds, and whether it came from the cache."""
    body = []
    for r in list(study.teachers.values()) + list(study.results):
        pv = r["provenance"]
        body.append([r["method"], r["student"], r["seed"], f"`{r.get('key', '')}`", pv["git_commit"][:12]
                     + ("-dirty" if pv["git_commit"].endswith("-dirty") else ""), pv["versions"]["torch"],
                     pv["device_name"] or pv["device"], f"{r.get('train_seconds', 0):.0f}",
                     f"{sum(r['evaluation']['seconds'].values()):.0f}", "yes" if r["from_cache"] else "no"])
    return _md(["method", "arch", "seed", "key", "commit", "torch", "device", "train s", "eval s", "from cache"], body)


def pick(results, method: str, seed: int | None = None, student: str | None = None) -> dict:
    """The first result of ``method`` (and ``seed``/``student`` if given); the error lists what there is."""
    for r in results:
        if r["method"] == method and (seed is None or r["seed"] == seed) and (student is None or r["student"] == student):
            return r
    have = sorted({(r["method"], r["student"], r["seed"]) for r in results})
    raise ValueError(f"no result for method={method!r} seed={seed!r} student={student!r}; have: {have}")
