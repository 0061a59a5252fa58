"""Profiles (smoke / quick / paper) and every notebook parameter's parsing and validation.

A *profile* is plain data that says how big an experiment is: data subset, teacher, students,
epochs, attacks, seeds.  A notebook's first cell calls its study's ``validate`` (``validate`` here
plus the study's own checks), which checks every parameter at once and returns a ``Setup`` (the profile
plus the study's parameters) or a ``Checked`` (a Setup plus a notebook's own values); anything
unknown raises a ``ValueError`` that lists the valid values, before any work starts.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from . import data as D
from .checks import (DEVICES, as_list, check_betas, check_clamp, check_device, check_flag, check_int,  # noqa: F401
                     check_subset)
from .evaluate import check_attacks
from .methods import METHODS
from .models import list_models


BASE_METHODS = ("ard", "iad", "rslad", "mtard", "kdiga")   # the ARD family (+ KDIGA) that gets Fair-* versions


# The paper's table: the ARD family and its Fair-* versions, then the robust-fairness block (FRL, BAT, CFA), and ABSLD.
ROBUST_FAIRNESS_METHODS = ("frl-rw", "frl-rmrw", "bat", "cfa")
MAIN_METHODS = BASE_METHODS + tuple(f"fair-{m}" for m in BASE_METHODS) + ROBUST_FAIRNESS_METHODS + ("absld",)


HEADLINE_PAIRS = (("ard", "fair-ard"), ("rslad", "fair-rslad"))


OFFICIAL_CLAMP = (5 / 6, 5 / 2)


SMOKE_ATTACKS = ("clean", "pgd20")


# The TRADES CIFAR-10 script's own recipe (yaodongyu/TRADES train_trades_cifar10.py): what the paper profile's
# teacher is trained with when no checkpoint is given. Its lr decays at `epoch >= 75` (1-indexed): 0-indexed 74.
TRADES_SCRIPT_RECIPE = {"epochs": 76, "milestones": [74], "weight_decay": 2e-4, "batch_size": 128,
                        "attack_steps": 10, "method_options": {"eps": 0.031, "step_size": 0.007}}


@dataclass(frozen=True)
class Profile:
    """How big an experiment is. Every field can be overridden from a notebook parameter."""
    name: str
    description: str
    dataset: str = "cifar10"
    n_per_class: int | None = None           # class-balanced training subset (None or 'all': the whole training set)
    eval_per_class: int | None = None        # test images per class for clean/FGSM/PGD/CW (None or 'all': all)
    aa_per_class: int | None = None          # test images per class for AutoAttack (None: same as eval)
    attacks: tuple = ("clean", "fgsm", "pgd20", "cw20", "aa")
    seeds: tuple = (0, 1, 2)
    teacher: str = "wrn-34-10"
    teacher_method: str = "trades"
    teacher_checkpoint: str | None = None    # e.g. the TRADES WRN-34-10 checkpoint; None: train one
    teacher_epochs: int | None = None        # None: the teacher method's official schedule
    teacher_kwargs: dict = field(default_factory=dict)
    teacher_recipe: dict = field(default_factory=dict)  # TrainConfig fields of the teacher run (e.g. TRADES' script)
    nat_teacher: str = "resnet56"             # MTARD's natural teacher (Fair-MTARD's choice)
    nat_teacher_epochs: int | None = None
    students: tuple = ("resnet18", "mobilenet_v2")
    student_epochs: int | None = None        # None: each method's official schedule
    attack_steps: int | None = None          # training attack steps (None: the method's, 10)
    batch_size: int | None = None
    device: str = "auto"
    ladder: tuple = ("resnet20", "resnet56", "mobilenet_v2", "resnet18")  # capacity_gap: students, small to large
    method_overrides: dict = field(default_factory=dict)  # method name -> TrainConfig fields (paper-official's quirks)
    engine: str = "eager"                    # graph (CUDA): steps replayed from a CUDA graph where the method allows

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
        name="paper", description="the paper's settings (GPU): full CIFAR-10; the WRN-34-10 TRADES teacher from "
                                  "teacher_checkpoint (the released model_cifar_wrn.pt), or else trained here with the "
                                  "TRADES script's recipe (eps 0.031, step 0.007, 10 steps, 76 epochs, lr x0.1 from "
                                  "the 75th, wd 2e-4, batch 128); MTARD's natural teacher a WRN-34-10 as in MTARD's "
                                  "code; ResNet-18 and MobileNetV2 students with each method's official epochs, "
                                  "milestones and attack (KDIGA-ARD step 1.6/255); each method's intended behaviour "
                                  "(the official quirks: the paper-official profile)",
        seeds=(0, 1, 2), teacher="wrn-34-10", teacher_method="trades", students=("resnet18", "mobilenet_v2"),
        teacher_recipe=TRADES_SCRIPT_RECIPE, nat_teacher="wrn-34-10",
        ladder=("resnet20", "resnet56", "mobilenet_v2", "resnet18")),
    "gpu": Profile(
        name="gpu", description="one GPU (an H200) in about an hour with the graph engine: full CIFAR-10, a ResNet-18 "
                                "TRADES teacher trained here (24 epochs), ResNet-18 students for 12 epochs (every "
                                "schedule shortened proportionally), the headline pairs on 3 seeds; clean, FGSM, "
                                "PGD-20 and CW on all 10,000 test images, AutoAttack on 20 per class. Sized from "
                                "projections (graph engine <= 8 s per epoch, eager-only methods ~30 s), not yet "
                                "timed on a GPU: see benchmarks/README.md",
        aa_per_class=20, seeds=(0, 1, 2), teacher="resnet18", teacher_method="trades", teacher_epochs=24,
        nat_teacher="resnet18", nat_teacher_epochs=8, students=("resnet18",), student_epochs=12, batch_size=128,
        ladder=("resnet20", "resnet56", "mobilenet_v2", "resnet18"), engine="graph"),
}
# The paper profile with every official-code quirk switched on (book: the quirk table), so that a run reproduces
# what the official scripts compute: the single lr decay of the ARD/IAD/KDIGA scripts, their unused clean
# BatchNorm forwards, Fair-MTARD's clean-logit target, ABSLD's product temperature, the KDIGA fork's batch
# alignment and KDIGA-ARD's teacher on x', and the 10-step AutoAttack column next to the standard one.
_SINGLE_DECAY = {"lr_schedule": "official_single_decay"}
_CLEAN_FORWARD = {**_SINGLE_DECAY, "method_options": {"official_clean_forward": True}}
OFFICIAL_QUIRKS: dict[str, dict] = {
    **{m: _CLEAN_FORWARD for m in ("ard", "fair-ard", "iad", "fair-iad")},
    **{m: {**_SINGLE_DECAY, "method_options": {"grad_align": "official_batch"}} for m in ("kdiga", "fair-kdiga")},
    **{m: {**_SINGLE_DECAY, "method_options": {"grad_align": "official_batch", "kdiga_ard_teacher_input": "adv"}}
       for m in ("kdiga_ard", "fair-kdiga_ard")},
    "fair-mtard": {"method_options": {"mtard_clean_target": "robust_teacher_adv"}},
    **{m: {"method_options": {"absld_temperature": "official_product"}} for m in ("absld", "fair-absld")},
}
PROFILES["paper-official"] = dataclasses.replace(
    PROFILES["paper"], name="paper-official",
    description="the paper profile with every official-code quirk on (single lr decay for ARD/IAD/KDIGA and "
                "their Fair-* versions, their unused clean train-mode forwards, Fair-MTARD's robust-teacher "
                "clean target, ABSLD's product temperature, the KDIGA fork's batch alignment and teacher on x' "
                "for KDIGA-ARD) and the 10-step AutoAttack column (aa10) next to the standard one",
    attacks=("clean", "fgsm", "pgd20", "cw20", "aa", "aa10"), method_overrides=OFFICIAL_QUIRKS)
ENGINES = ("eager", "graph")


def default_profile() -> tuple[str, str]:
    """The profile a notebook runs when it is given ``"auto"`` (its default), and why: ``gpu`` where a CUDA GPU
    is visible, else ``quick``, the CPU profile."""
    if torch.cuda.is_available():
        return "gpu", f"a CUDA GPU is visible ({torch.cuda.get_device_name()})"
    return "quick", "no CUDA GPU is visible (quick is the CPU profile)"


_INT_FIELDS = ("n_per_class", "eval_per_class", "aa_per_class", "teacher_epochs", "nat_teacher_epochs",
               "student_epochs", "attack_steps", "batch_size")


_ALL_FIELDS = ("n_per_class", "eval_per_class")  # None or 'all': every image of the split
_TUPLE_FIELDS = {"attacks": str, "seeds": int, "students": str, "ladder": str}


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
        if key in overrides:  # 'all' (every image) is an explicit None for the two counts; 0 is never "all"
            overrides[key] = check_int(overrides[key], key, 1, all_word=key in _ALL_FIELDS)
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
    if profile.teacher_method not in METHODS or METHODS[profile.teacher_method].needs_teacher \
            or METHODS[profile.teacher_method].needs_init_checkpoint:
        valid_t = sorted(m for m, cls in METHODS.items() if not (cls.needs_teacher or cls.needs_init_checkpoint))
        raise ValueError(f"unknown teacher_method {profile.teacher_method!r}; valid: {', '.join(valid_t)}")
    if profile.teacher_checkpoint and not Path(profile.teacher_checkpoint).expanduser().exists():
        raise ValueError(f"teacher_checkpoint {profile.teacher_checkpoint!r} does not exist")
    check_device(profile.device)
    if profile.engine not in ENGINES:
        raise ValueError(f"unknown engine {profile.engine!r}; valid: {', '.join(ENGINES)}")
    if profile.engine == "graph" and (profile.device == "cpu" or not torch.cuda.is_available()):
        raise ValueError(f"profile {name!r} trains with engine 'graph' (CUDA graphs) but no CUDA GPU is used here: "
                         f"pick the CPU profile quick, or override engine to 'eager'")
    return profile


def _check_test_counts(p: Profile) -> None:
    """eval_per_class / aa_per_class within the test split, before any teacher trains. Skipped when the data is
    not on disk yet (a download happens later, when the data is needed)."""
    asked = [(k, getattr(p, k)) for k in ("eval_per_class", "aa_per_class") if getattr(p, k) is not None]
    if not asked:
        return
    try:
        _, y = D.load_split(p.dataset, "test", download=False)
    except D.DataNotFoundError:
        return
    for key, n in asked:
        D.check_per_class(y, D.NUM_CLASSES[p.dataset], n, where=f"the {p.dataset} test split under {D.data_root()}",
                          what=key)


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
    sets ``$FAIRARD_RESULTS`` for this process.  ``profile="auto"`` takes ``default_profile()`` (gpu where a CUDA
    GPU is visible, else quick) and prints which and why.  Anything unknown raises a ValueError that lists the
    valid values."""
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError:
            raise ValueError(f"overrides: {overrides!r} is not a JSON object such as '{{\"student_epochs\": 10}}'") from None
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a dict of profile fields, got {overrides!r}")
    if profile == "auto":
        profile, why = default_profile()
        print(f"profile auto -> {profile}: {why}")
    p = get_profile(profile, attacks=attacks, **{**(overrides or {}), **profile_fields})
    methods = tuple(check_methods(_as_tuple(methods, "methods") or ()))
    other = _as_tuple(other_seeds, "other_seeds", int)
    other = p.seeds[:1] if other is None else other
    if headline is None:  # the default pairs, where both versions are among the methods
        headline = tuple(b for b, f in HEADLINE_PAIRS if b in methods and f in methods)
    headline = _as_tuple(headline, "headline") or ()
    bad = [h for h in headline if h not in METHODS or h.startswith("fair-")]
    if bad:
        raise ValueError(f"unknown headline method(s) {bad}; valid (base methods with a fair- version): "
                         f"{', '.join(sorted(METHODS))}")
    unpaired = [h for h in headline if h not in methods or f"fair-{h}" not in methods]
    if unpaired:  # asked for, so never silently left out
        raise ValueError(f"headline method(s) {unpaired} need both versions among the methods {list(methods)}: "
                         f"add {[m for h in unpaired for m in (h, f'fair-{h}') if m not in methods]} to methods "
                         f"or leave them out of headline")
    _check_test_counts(p)
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


@dataclasses.dataclass(frozen=True)
class Checked:
    """A notebook's parameters after validation: the experiments ``Setup`` (profile, attacks, seeds,
    students, device, progress, ...) plus the notebook's own values; attributes read the values first,
    then the Setup (``c.betas``, ``c.progress``)."""
    setup: Setup
    values: dict

    def __getattr__(self, name):
        if name in ("setup", "values") or name.startswith("__"):
            raise AttributeError(name)
        if name in self.values:
            return self.values[name]
        if hasattr(self.setup, name):
            return getattr(self.setup, name)
        raise AttributeError(f"no parameter {name!r}; have {sorted(self.values)} and the Setup fields")

    def describe(self) -> str:
        own = "\n".join(f"{k:>18}: {v!r}" for k, v in self.values.items())
        return f"{self.setup.describe()}\n{own}"


def notebook_setup(profile: str, methods, attacks, *, seeds=None, students=None, device="auto", min_epochs: int = 1,
           focus=None, progress=True, results_dir=None, overrides=None) -> Setup:
    """experiments.validate (profile, methods, attacks, seeds, students, device, results folder, any other
    profile field in ``overrides``) plus a lower bound on the student epochs (smoke trains one).
    ``attacks=None`` is the profile's attacks, but only SMOKE_ATTACKS (and ``focus``) at profile smoke."""
    min_epochs = check_int(min_epochs, "min_epochs", 1)
    if attacks is None and profile == "smoke":
        attacks = SMOKE_ATTACKS + ((focus,) if focus and focus not in SMOKE_ATTACKS else ())
    p = validate(profile, methods, attacks, seeds=seeds, students=students, device=device, focus=focus,
                   progress=check_flag(progress, "progress"), results_dir=results_dir, overrides=overrides)
    if p.student_epochs is not None and p.student_epochs < min_epochs:
        p = dataclasses.replace(p, student_epochs=min_epochs)
    return p


def check_fair_method(method: str) -> str:
    if not isinstance(method, str) or not method.startswith("fair-"):
        raise ValueError(f"method must be a Fair-* method (it needs the class weighting), got {method!r}; "
                         f"valid: {', '.join('fair-' + m for m in BASE_METHODS)}")
    check_methods([method])
    return method


def dataset_note(dataset: str) -> str:
    """Where the data came from, for captions: the in-house copy is a lossy JPEG-derived CIFAR-10.

    The folder is named as ``$FAIRARD_DATA``, never by its absolute path: the note is printed in
    notebooks and the book, which must not show the build machine's file system."""
    root = D.data_root()
    if dataset == "cifar10" and (root / dataset / "train.npz").exists() and not (root / "cifar-10-batches-py").exists():
        return f"{dataset} from $FAIRARD_DATA/{dataset}/*.npz (in-house runs: a lossy JPEG-derived CIFAR-10 copy)"
    if (root / dataset / "train.npz").exists():
        return f"{dataset} from $FAIRARD_DATA/{dataset}/*.npz"
    return f"{dataset} (its own layout under $FAIRARD_DATA: fairard.data.load_split)"


def dataset_label(note: str) -> str:
    """The short form of ``dataset_note`` for figure captions."""
    return "lossy JPEG-derived CIFAR-10 copy" if "JPEG" in note else note.split(" ")[0]
