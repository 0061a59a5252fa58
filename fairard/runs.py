"""Running: run configs of a profile, ``run`` (train or resume or reuse, then evaluate per class), the
teacher's evaluation, and the ``Study`` a notebook's study call returns.

``student_config`` / ``teacher_config`` build a ``TrainConfig`` from a profile; ``run`` trains (or
resumes, or loads) it, evaluates it per class under the profile's attacks and writes one JSON result
in the store (``fairard.store``): re-running a notebook reuses finished runs and resumes unfinished
ones.  ``run_plan`` runs a study's (profile, method, student, seed) list after its teacher(s);
``run_labelled`` runs labelled arms (ablations, KDIGA, AA variants); ``load_recorded`` reads a
results folder computed elsewhere back as a ``Study``.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from . import data as D
from .evaluate import EVAL_ATTACKS, check_attacks, evaluate, large_eps_accuracy, sanity_report
from .methods import METHODS, parse_method_name
from .models import build_model, load_checkpoint
from .profiles import BASE_METHODS, PROFILES, Profile, Setup, check_methods, dataset_label, dataset_note, get_profile
from .store import (REPO, cache_snapshot, content_hash, load_result, portable_path, result_file, results_dir,
                    run_dir, run_key, train_key)
from .train import TrainConfig, train
from .utils import provenance, resolve_device, write_json


_EPOCH_OPTIONS = {"iad": ("begin",), "cfa": ("begin",), "frl-rw": ("rate1_halving",), "frl-rmrw": ("rate1_halving",)}
# FRL's hot start (its init_checkpoint): a PGD-AT model of the student's architecture, trained like the profile's
# teacher (same epochs and data), cached like any teacher.
INIT_METHOD = "pgd_at"


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


def teacher_config(p: Profile, *, role: str = "teacher", seed: int = 0, arch: str | None = None) -> TrainConfig:
    """The (cached) teacher of profile ``p``; role 'nat_teacher' gives MTARD's natural teacher, role 'init'
    FRL's robust starting point for the student architecture ``arch``. The robust teacher follows the
    profile's ``teacher_recipe`` (TrainConfig fields) where it has one."""
    arch, method, epochs = {"teacher": (p.teacher, p.teacher_method, p.teacher_epochs),
                            "nat_teacher": (p.nat_teacher, "natural", p.nat_teacher_epochs),
                            "init": (arch, INIT_METHOD, p.teacher_epochs)}[role]
    milestones, _ = _scaled_schedule(method, epochs)
    kwargs = dict(method=method, student=arch, dataset=p.dataset, n_per_class=p.n_per_class, epochs=epochs,
                  milestones=milestones, attack_steps=p.attack_steps, batch_size=p.batch_size, seed=seed,
                  student_kwargs=dict(p.teacher_kwargs) if role == "teacher" else {}, device=p.device, monitor_n=0)
    if role == "teacher":  # the recipe's schedule gives way to an explicit teacher_epochs (scaled as above)
        drop = ("epochs", "milestones") if p.teacher_epochs is not None else ()
        kwargs.update({k: v for k, v in p.teacher_recipe.items() if k not in drop})
    return TrainConfig(**kwargs)


def teacher_checkpoint(p: Profile, *, role: str = "teacher", progress: bool = True, arch: str | None = None) -> str:
    """Path of the teacher's weights: the profile's checkpoint, or a cached trained one."""
    if role == "teacher" and p.teacher_checkpoint:
        return p.teacher_checkpoint
    cfg = teacher_config(p, role=role, arch=arch)
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
    if cls.needs_init_checkpoint:  # FRL: fine-tune the cached PGD-AT run of the same architecture
        kwargs["init_checkpoint"] = teacher_checkpoint(p, role="init", arch=kwargs["student"], progress=progress)
    if cls.needs_validation:  # FRL's script holds out 300 of 5,000 images per class (6 %)
        kwargs["val_per_class"] = max(1, (p.n_per_class or 5000) * 3 // 50)
    quirks = dict(p.method_overrides.get(method, {}))
    options = {**options, **quirks.pop("method_options", {})}
    method_options = {**options, **overrides.pop("method_options", {})}
    kwargs.update(quirks)
    kwargs.update(overrides)
    kwargs["method_options"] = method_options
    return TrainConfig(**kwargs)


def eval_settings(p: Profile, attacks=None) -> dict:
    return {"attacks": list(check_attacks(attacks or p.attacks)), "eval_per_class": p.eval_per_class,
            "aa_per_class": p.aa_per_class, "eps": 8 / 255, "seed": 0}


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
    files = {a: (cache / "evals" / f"{a}-{content_hash({'attack': a, 'per_class': _attack_images(settings, a), 'eps': settings['eps'], 'seed': settings['seed']})}.json"
                 if cache is not None else None) for a in attacks}
    eps1_file = cache / "evals" / f"eps1-{content_hash({'per_class': n_eval, 'seed': settings['seed']})}.json" if cache else None
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
    settings = eval_settings(p, attacks)
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
    settings = eval_settings(p, attacks)
    ckpt = teacher_checkpoint(p, progress=progress)
    tkey = content_hash({"ckpt": portable_path(ckpt), "arch": p.teacher, "kw": p.teacher_kwargs})
    folder = results_dir() / "teacher-evals" / f"{p.teacher}-{tkey}"
    key = content_hash({"teacher": tkey, "eval": settings})
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
              "key": key, "checkpoint": portable_path(ckpt), "profile": p.name, "eval_settings": settings,
              "evaluation": evaluation, "provenance": provenance(device), "dataset_note": dataset_note(p.dataset)}
    write_json(out, result)
    return {**result, "from_cache": False}


def run_path(result: dict) -> Path:
    """Directory of a run result (experiments.run_dir's layout, rebuilt from the result)."""
    method = result.get("run_method", result["method"])
    key = result.get("train_key", result["key"])  # results written before the split cache keyed the folder by "key"
    return results_dir() / "runs" / f"{method}-{result['student']}-s{result['seed']}-{key}"


def run_history(result: dict) -> list[dict]:
    """The per-epoch training log of a run: class_stats, class_weights (used), next_class_weights, lr, ..."""
    path = run_path(result) / "log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no training log at {path}; is FAIRARD_RESULTS ({results_dir()}) the cache "
                                f"that holds run {result['key']}?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_student(result: dict, device="cpu") -> torch.nn.Module:
    """The trained student of a run (final weights), in eval mode."""
    cfg = result["config"]
    model = build_model(cfg["student"], D.NUM_CLASSES[cfg["dataset"]], **cfg.get("student_kwargs", {}))
    return load_checkpoint(model, run_path(result) / "final.pt", map_location=device).to(device).eval()


def load_teacher(p: Profile, device="cpu", progress: bool = True) -> torch.nn.Module:
    """The profile's (cached) robust teacher, in eval mode."""
    path = teacher_checkpoint(p, progress=progress)
    model = build_model(p.teacher, D.NUM_CLASSES[p.dataset], **p.teacher_kwargs)
    return load_checkpoint(model, path, map_location=device).to(device).eval()


test_images = D.test_tensors  # the evaluation's class-balanced test slice


def run_labelled(p: Profile, arms, attacks, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Run each distinct config of ``arms`` once (a list of dicts with ``label`` and ``cfg``).

    Returns (results, skipped): every result is relabelled ``method = arm label`` (the registered
    name kept as ``run_method``) so ``experiments.summarize_runs`` groups by arm.  A run the trainer
    refuses because a difficulty measure is not recorded by that method is skipped with its reason.
    """
    done: dict[str, dict | Exception] = {}
    failed: dict[str, Exception] = {}  # arm label -> the refusal: its other seeds are not tried
    results, skipped = [], []
    for arm in arms:
        cfg = arm["cfg"]
        key = cfg.key()
        if key not in done and arm["label"] in failed:
            done[key] = failed[arm["label"]]
        if key not in done:
            try:
                done[key] = run_all([cfg], profile=p, attacks=attacks, progress=progress)[0]
            except ValueError as err:  # ClassStats.mean: the statistic this measure needs was never recorded
                if "ClassStats has no" not in str(err):
                    raise
                print(f"{cfg.method:>12} {cfg.student:>14} seed {cfg.seed}: skipped ({err})")
                done[key] = failed[arm["label"]] = err
        got = done[key]
        if isinstance(got, Exception):
            skipped.append({**{k: v for k, v in arm.items() if k != "cfg"}, "reason": str(got)})
        else:
            results.append({**got, "run_method": got["method"], "method": arm["label"],
                            **{k: v for k, v in arm.items() if k not in ("cfg", "label")}})
    return results, skipped


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
    if not folder.is_absolute() and (REPO / folder).exists():
        folder = REPO / folder
    results = [{**json.loads(f.read_text()), "from_cache": True} for f in sorted(folder.glob("runs/*/result*.json"))]
    teachers = {}
    for f in sorted(folder.glob("teacher-evals/*.json")) + sorted(folder.glob("teacher-evals/*/result*.json")):
        t = json.loads(f.read_text())
        teachers[t["student"]] = {**t, "from_cache": True}
    if not results or not teachers:
        raise ValueError(f"{folder} holds no finished run (runs/*/result*.json) with a teacher evaluation "
                         f"(teacher-evals/); give the folder that fairard.runs wrote")
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


def run_plan(setup: Setup, plan, progress: bool | None) -> Study:
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
