"""Computations and figures behind four notebooks: ablations, KDIGA, the weighting explorer, AA variants.

Every notebook follows one rhythm: ``validate_<notebook>(...)`` checks all its parameters at once
(``experiments.validate`` plus the checks below, each raising ``ValueError`` that lists the valid
values), one ``<notebook>_study(...)`` call trains or loads its runs through ``experiments.run``
(the config-hashed cache, so notebooks share runs), then tables (Markdown strings) and matplotlib
figures built here.  Nothing in this module trains by itself.

Sections: provenance and captions; loading runs back (checkpoints, per-epoch logs); ablations
(difficulty measure, beta, clamp, official-code quirks); KDIGA (KD vs KDIGA family, input-gradient
gap); the weighting explorer (class weights recomputed from a recorded run, an ipywidgets explorer
and a kernel-free HTML/JS one); AutoAttack standard vs its 10-step variant.
"""
from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data as D
from . import experiments as E
from .evaluate import EVAL_ATTACKS, eval_mode
from .fairness import DIFFICULTY_MEASURES, ClassStats, class_weights
from .methods import METHODS, input_gradient, parse_method_name
from .models import build_model, load_checkpoint
from .train import lr_at
from .utils import git_commit, resolve_device

OFFICIAL_CLAMP = (5 / 6, 5 / 2)
ABLATIONS = ("measure", "beta", "clamp", "quirks")
QUIRKS = ("lr_schedule", "mtard_clean_target")
QUIRK_EFFECTS = {
    "lr_schedule": ("step", "official_single_decay",
                    "lr x0.1 at every milestone vs only at the first one: the ARD/IAD/Fair-ARD/Fair-IAD scripts "
                    "pass the initial lr by value, so 0.1 -> 0.01 and the advertised 0.001 never comes"),
    "mtard_clean_target": ("natural_teacher", "robust_teacher_adv",
                           "Fair-MTARD's clean-logit KL target: the natural teacher on x (MTARD) vs the robust "
                           "teacher on x' (the Fair-MTARD script; its natural teacher is computed, never used)"),
}
# Difficulty measure -> (per-class statistic in the training log, how to label it).
MEASURE_STATS = {
    "kappa": ("kappa", "mean kappa (PGD steps survived)"),
    "robust_acc": ("robust_correct", "training robust accuracy"),
    "adv_loss": ("adv_loss", "mean per-sample training loss"),
    "clean_acc": ("clean_correct", "training clean accuracy"),
}
# KDIGA notebook: method parameter -> (label, registered method, method_options).
KDIGA_FAMILY = {
    "kd": ("KD", "kdiga", {"gamma": 0.0}),   # KD is KDIGA without the input-gradient term
    "kdiga": ("KDIGA", "kdiga", {}),
    "kdiga_ard": ("KDIGA-ARD", "kdiga_ard", {}),
    "fair-kdiga": ("Fair-KDIGA", "fair-kdiga", {}),
    "fair-kdiga_ard": ("Fair-KDIGA-ARD", "fair-kdiga_ard", {}),
}
AA_PAIR = ("aa", "aa10")
# attacks=None means the profile's attacks, except at smoke (CI) where these (plus the focus attack) suffice.
SMOKE_ATTACKS = ("clean", "pgd20")


# ---------------------------------------------------------------------------------------- checks
as_list = E.as_list  # one parser for every notebook's list parameters


def check_subset(name: str, values, valid) -> list:
    """``values`` as a list, every item in ``valid``; otherwise ValueError listing the valid values."""
    values = as_list(values, name)
    bad = [v for v in values if v not in valid]
    if bad or not values:
        raise ValueError(f"{name}: {'unknown value(s) ' + repr(bad) if bad else 'empty'}; "
                         f"valid: {', '.join(map(str, valid))}")
    return list(dict.fromkeys(values))


def check_clamp(clamp, what: str = "clamp") -> tuple[float, float] | None:
    """None (clamp off) or a (low, high) pair with 0 < low <= high (a JSON string is read first)."""
    if isinstance(clamp, str):
        clamp = None if clamp.strip() in ("None", "null", "") else as_list(clamp, what, float)
    if clamp is None:
        return None
    try:
        lo, hi = (float(c) for c in clamp)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be None or [low, high] (official: [5/6, 5/2]), got {clamp!r}") from None
    if not 0 < lo <= hi:
        raise ValueError(f"{what} must satisfy 0 < low <= high, got {clamp!r}")
    return lo, hi


def check_betas(betas, what: str = "betas") -> list[float]:
    betas = as_list(betas, what, float)
    if not betas or any(not math.isfinite(b) or b < 0 for b in betas):
        raise ValueError(f"{what} must be finite numbers >= 0 (the paper uses 2), got {betas}")
    return betas


def check_flag(value, what: str) -> bool:
    if isinstance(value, str) and value in ("True", "False"):
        return value == "True"
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be True or False, got {value!r}")
    return value


def check_int(value, what: str, low: int | None = None, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        raise ValueError(f"{what} must be an int{f' >= {low}' if low is not None else ''}"
                         f"{' or None' if allow_none else ''}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Checked:
    """A notebook's parameters after validation: the experiments ``Setup`` (profile, attacks, seeds,
    students, device, progress, ...) plus the notebook's own values; attributes read the values first,
    then the Setup (``c.betas``, ``c.progress``)."""
    setup: E.Setup
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


def _setup(profile: str, methods, attacks, *, seeds=None, students=None, device="auto", min_epochs: int = 1,
           focus=None, progress=True, results_dir=None, overrides=None) -> E.Setup:
    """experiments.validate (profile, methods, attacks, seeds, students, device, results folder, any other
    profile field in ``overrides``) plus a lower bound on the student epochs (smoke trains one).
    ``attacks=None`` is the profile's attacks, but only SMOKE_ATTACKS (and ``focus``) at profile smoke."""
    min_epochs = check_int(min_epochs, "min_epochs", 1)
    if attacks is None and profile == "smoke":
        attacks = SMOKE_ATTACKS + ((focus,) if focus and focus not in SMOKE_ATTACKS else ())
    p = E.validate(profile, methods, attacks, seeds=seeds, students=students, device=device, focus=focus,
                   progress=check_flag(progress, "progress"), results_dir=results_dir, overrides=overrides)
    if p.student_epochs is not None and p.student_epochs < min_epochs:
        p = dataclasses.replace(p, student_epochs=min_epochs)
    return p


def _fair_method(method: str) -> str:
    if not isinstance(method, str) or not method.startswith("fair-"):
        raise ValueError(f"method must be a Fair-* method (it needs the class weighting), got {method!r}; "
                         f"valid: {', '.join('fair-' + m for m in E.BASE_METHODS)}")
    E.check_methods([method])
    return method


# ----------------------------------------------------------------------------- provenance, captions
def short_dataset(dataset: str) -> str:
    """The dataset for a title; the in-house copy is named as what it is."""
    label = E.dataset_label(E.dataset_note(dataset))
    return dataset if label == dataset else f"{dataset}, {label}"


def commits(results=()) -> str:
    """Distinct git commits (short, with -dirty) of the runs; the checkout's when there are none."""
    full = sorted({r["provenance"]["git_commit"] for r in results if "provenance" in r}) or [git_commit()]
    return ", ".join(c[:7] + ("-dirty" if c.endswith("-dirty") else "") for c in full)


def caption(p: E.Profile, results=(), seeds=None) -> str:
    """One line for titles: profile, dataset, seeds, commit, torch version and device of the runs."""
    seeds = sorted({r["seed"] for r in results}) if seeds is None and results else (seeds or p.seeds)
    prov = next((r["provenance"] for r in results if "provenance" in r), None)
    extra = f" · torch {prov['versions']['torch']} · {prov['device']}" if prov else ""
    return (f"profile {p.name} · {short_dataset(p.dataset)} · seeds {','.join(map(str, seeds))} · "
            f"commit {commits(results)}{extra}")


def label_key(text: str) -> str:
    """A glue-safe name: lower case, non-alphanumerics to '_'."""
    return re.sub(r"[^0-9a-z]+", "_", str(text).lower()).strip("_")


# ------------------------------------------------------------------------------- loading runs back
def run_path(result: dict) -> Path:
    """Directory of a run result (experiments.run_dir's layout, rebuilt from the result)."""
    method = result.get("run_method", result["method"])
    key = result.get("train_key", result["key"])  # results written before the split cache keyed the folder by "key"
    return E.results_dir() / "runs" / f"{method}-{result['student']}-s{result['seed']}-{key}"


def run_history(result: dict) -> list[dict]:
    """The per-epoch training log of a run: class_stats, class_weights (used), next_class_weights, lr, ..."""
    path = run_path(result) / "log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no training log at {path}; is FAIRARD_RESULTS ({E.results_dir()}) the cache "
                                f"that holds run {result['key']}?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_student(result: dict, device="cpu") -> torch.nn.Module:
    """The trained student of a run (final weights), in eval mode."""
    cfg = result["config"]
    model = build_model(cfg["student"], D.NUM_CLASSES[cfg["dataset"]], **cfg.get("student_kwargs", {}))
    return load_checkpoint(model, run_path(result) / "final.pt", map_location=device).to(device).eval()


def load_teacher(p: E.Profile, device="cpu", progress: bool = True) -> torch.nn.Module:
    """The profile's (cached) robust teacher, in eval mode."""
    path = E.teacher_checkpoint(p, progress=progress)
    model = build_model(p.teacher, D.NUM_CLASSES[p.dataset], **p.teacher_kwargs)
    return load_checkpoint(model, path, map_location=device).to(device).eval()


test_images = D.test_tensors  # the evaluation's class-balanced test slice


def run_labelled(p: E.Profile, arms, attacks, progress: bool = True) -> tuple[list[dict], list[dict]]:
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
                done[key] = E.run_all([cfg], profile=p, attacks=attacks, progress=progress)[0]
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


def headline_attack(attacks) -> str:
    """The strongest attack of a list, for figures: aa > aa10 > cw20 > pgd20 > fgsm > clean."""
    for a in ("aa", "aa10", "cw20", "pgd20", "fgsm", "clean"):
        if a in attacks:
            return a
    return list(attacks)[-1]


def _mean_std(vals):
    m = sum(vals) / len(vals)
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))


# ----------------------------------------------------------------------------------------- ablations
def validate_ablations(profile: str = "quick", method: str = "fair-ard", ablations=ABLATIONS,
                       measures=DIFFICULTY_MEASURES, betas=(0.0, 1.0, 2.0, 3.0, 4.0), clamp=OFFICIAL_CLAMP,
                       quirks=QUIRKS, attacks=None, attack: str = "pgd20", seeds=None, min_epochs: int = 4,
                       smoke_trim: bool = True, device: str = "auto", results_dir=None, overrides=None,
                       progress: bool = True) -> Checked:
    """Every parameter of ablations.ipynb in one call; the Setup has student epochs >= ``min_epochs``."""
    method = _fair_method(method)
    ablations = check_subset("ablations", ablations, ABLATIONS)
    quirks = check_subset("quirks", quirks, QUIRKS)
    values = dict(method=method, ablations=ablations, measures=check_subset("measures", measures, DIFFICULTY_MEASURES),
                  betas=check_betas(betas), clamp=check_clamp(clamp), quirks=quirks, attack=attack,
                  smoke_trim=check_flag(smoke_trim, "smoke_trim"))
    if values["clamp"] is None:
        raise ValueError("clamp is the 'on' setting of the clamp ablation: give [low, high], e.g. [5/6, 5/2]")
    methods = [method] + (["fair-mtard"] if "quirks" in ablations and "mtard_clean_target" in quirks else [])
    setup = _setup(profile, methods, attacks, seeds=seeds, device=device, min_epochs=min_epochs, focus=attack,
                   progress=progress, results_dir=results_dir, overrides=overrides)
    return Checked(setup, values)


def _trim(values, keep):
    """The values in ``keep``, in their original order (the smoke trim)."""
    return [v for v in values if v in keep]


def ablation_plan(p: E.Profile, method: str, ablations, measures, betas, clamp, quirks,
                  smoke_trim: bool = True) -> list[dict]:
    """The arms (ablation, setting, method, TrainConfig overrides, baseline flag) of the sweep, before seeds.

    The baseline is the paper's Fair-* recipe: kappa, beta 2, the given clamp, the step lr schedule.
    Every arm changes one thing.  At profile smoke with ``smoke_trim`` (CI) the measure sweep keeps its
    first two measures and the beta sweep its smallest beta and 2.
    """
    clamp = check_clamp(clamp)
    baseline = {"difficulty": "kappa", "beta": 2.0, "clamp": clamp, "lr_schedule": "step"}
    if smoke_trim and p.name == "smoke":
        measures = list(measures)[:2]
        betas = _trim(betas, {min(betas), 2.0})
    arms = []
    if "measure" in ablations:
        arms += [dict(ablation="measure", setting=m, method=method, overrides={**baseline, "difficulty": m})
                 for m in measures]
    if "beta" in ablations:
        arms += [dict(ablation="beta", setting=f"{b:g}", method=method, overrides={**baseline, "beta": float(b)})
                 for b in betas]
    if "clamp" in ablations:
        arms += [dict(ablation="clamp", setting=f"on [{clamp[0]:.3g}, {clamp[1]:.3g}]", method=method,
                      overrides=baseline),
                 dict(ablation="clamp", setting="off", method=method, overrides={**baseline, "clamp": None})]
    if "quirks" in ablations:
        for q in quirks:
            off, on, _ = QUIRK_EFFECTS[q]
            m = "fair-mtard" if q == "mtard_clean_target" else method
            for setting in (off, on):  # "off" is the method's default: it shares the baseline's run
                extra = ({"lr_schedule": setting} if q == "lr_schedule"
                         else {"method_options": {"mtard_clean_target": setting}} if setting == on else {})
                arms.append(dict(ablation=f"quirk {q}", setting=setting, method=m, overrides={**baseline, **extra}))
    for arm in arms:
        arm["baseline"] = arm["method"] == method and arm["overrides"] == baseline
    return arms


def ablation_study(c: Checked) -> dict:
    """Plan, run (or load) every arm for every seed; returns {"results", "skipped", "plan", "attacks", ...}."""
    p = c.setup
    plan = ablation_plan(p, c.method, c.ablations, c.measures, c.betas, c.clamp, c.quirks, c.smoke_trim)
    arms = []
    for arm in plan:
        for seed in p.seeds:
            cfg = E.student_config(p, arm["method"], seed=seed, progress=c.progress, **arm["overrides"])
            arms.append({"label": f"{arm['ablation']}: {arm['setting']}", "ablation": arm["ablation"],
                         "setting": arm["setting"], "baseline": arm["baseline"], "cfg": cfg})
    results, skipped = run_labelled(p, arms, p.attacks, progress=c.progress)
    print(f"{len(plan)} arms x {len(p.seeds)} seed(s); {len({r['key'] for r in results})} distinct runs, "
          f"{len(skipped)} skipped")
    return {"profile": p, "method": c.method, "plan": plan, "results": results, "skipped": skipped,
            "attacks": list(p.attacks), "attack": c.attack}


def ablation_table(study: dict, whats=("accuracy", "worst_class_accuracy", "nsd")) -> str:
    """One row per arm (mean ± std over seeds, %), grouped by ablation, plus the skipped arms."""
    rows = E.summarize_runs(study["results"], study["attacks"], whats)
    table = E.markdown_table(rows, study["attacks"], whats)
    if study["skipped"]:
        seen = {}
        for s in study["skipped"]:
            seen.setdefault(f"{s['ablation']}: {s['setting']}", s["reason"])
        table += "\n\n" + "\n".join(f"- *{k}*: not run: {v}" for k, v in seen.items())
    return table


def ablation_figure(study: dict, attack: str | None = None):
    """One panel per ablation: average and worst-class accuracy under ``attack`` per setting (± std)."""
    import matplotlib.pyplot as plt

    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    groups: dict[str, dict[str, list]] = {}
    for r in study["results"]:
        groups.setdefault(r["ablation"], {}).setdefault(r["setting"], []).append(r)
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(3.6 * max(1, len(groups)), 3.4), squeeze=False)
    for ax, (ablation, settings) in zip(axes[0], groups.items()):
        xs = range(len(settings))
        for offset, what, name in ((-0.2, "accuracy", "average"), (0.2, "worst_class_accuracy", "worst class")):
            stats = [_mean_std([100 * E.metric(r, attack, what) for r in runs]) for runs in settings.values()]
            ax.bar([x + offset for x in xs], [m for m, _ in stats], 0.4, yerr=[s for _, s in stats], label=name,
                   capsize=2)
        ax.set_xticks(list(xs), [s[:18] for s in settings], rotation=30, ha="right", fontsize=8)
        ax.set_title(ablation, fontsize=10)
        ax.set_ylabel(f"{attack} accuracy (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Fair-ARD ablations ({study['method']}), {attack}\n{caption(study['profile'], study['results'])}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def weights_over_epochs(result: dict) -> tuple[list[list[float]], list[dict]]:
    """(weights per epoch incl. the ones computed after the last epoch, the log) of a Fair-* run.
    Without the run's log (a result read elsewhere) the result's own histories are used."""
    try:
        log = run_history(result)
    except FileNotFoundError:
        log = [{"class_weights": w, "class_stats": {"kappa": k}}
               for w, k in zip(result["class_weights_history"], result["kappa_history"])]
    weights = [h["class_weights"] for h in log]
    if log and log[-1].get("next_class_weights") is not None:
        weights.append(log[-1]["next_class_weights"])
    return weights, log


def weights_history_figure(study: dict):
    """The class weights over epochs of the baseline run, its per-class kappa, and the final weights per beta."""
    import matplotlib.pyplot as plt

    p = study["profile"]
    names = D.CLASS_NAMES[p.dataset]
    by_setting = {(r["ablation"], r["setting"]): r for r in study["results"] if r["seed"] == p.seeds[0]}
    base = next((r for r in study["results"] if r["seed"] == p.seeds[0] and r.get("baseline")), None)
    base = base or next(iter(by_setting.values()))
    weights, log = weights_over_epochs(base)
    betas = sorted(((float(s), r) for (a, s), r in by_setting.items() if a == "beta"), key=lambda t: t[0])
    fig, axes = plt.subplots(1, 3 if betas else 2, figsize=(13 if betas else 9, 3.6))
    cmap = plt.get_cmap("tab10")
    finals = [weights_over_epochs(r)[0][-1] for _, r in betas]
    for k, name in enumerate(names):
        axes[0].plot(range(len(weights)), [w[k] for w in weights], marker="o", ms=3, color=cmap(k % 10), label=name)
        kap = [(h["class_stats"].get("kappa") or [float("nan")] * len(names))[k] for h in log]
        axes[1].plot(range(len(kap)), kap, marker="o", ms=3, color=cmap(k % 10))
        if betas:
            axes[2].plot([b for b, _ in betas], [f[k] for f in finals], marker="o", ms=3, color=cmap(k % 10))
    axes[0].set(xlabel="epoch (weights applied in it; last = after training)", ylabel="class weight",
                title=f"class weights, {base['method']}")
    axes[1].set(xlabel="epoch", ylabel="mean kappa of the class", title="per-class kappa (training attack)")
    if len(names) <= 10:
        axes[0].legend(fontsize=7, ncol=2)
    if betas:
        axes[2].set(xlabel="beta", ylabel="class weight after the last epoch", title="final weights vs beta")
    fig.suptitle(caption(p, study["results"]), fontsize=9)
    fig.tight_layout()
    return fig


def _run_length(values) -> str:
    """'0.1×2, 0.01×1, 0.001×1' for an lr sequence."""
    parts, last, count = [], None, 0
    for v in values + [None]:
        if v == last:
            count += 1
            continue
        if last is not None:
            parts.append(f"{last:g}×{count}")
        last, count = v, 1
    return ", ".join(parts)


def lr_sequence(result: dict) -> list[float]:
    """The learning rate of each epoch of a run, from its config (train.lr_at)."""
    cfg = result["config"]
    base, _ = parse_method_name(cfg["method"])
    official = METHODS[base].optim
    epochs = cfg["epochs"] if cfg["epochs"] is not None else official.epochs
    milestones = cfg["milestones"] if cfg["milestones"] is not None else official.milestones
    lr = cfg["lr"] if cfg["lr"] is not None else official.lr
    return [lr_at(e, lr, milestones, cfg["lr_schedule"]) for e in range(epochs)]


def quirk_table(study: dict, attack: str | None = None) -> str:
    """Each official-code quirk: what it changes, the lr per epoch where relevant, and on − off (points)."""
    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    head = ["quirk", "off → on", "what changes", f"Δ {attack} avg", f"Δ {attack} worst", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for q, (off, on, what) in QUIRK_EFFECTS.items():
        runs = {s: {r["seed"]: r for r in study["results"] if r["ablation"] == f"quirk {q}" and r["setting"] == s}
                for s in (off, on)}
        seeds = sorted(set(runs[off]) & set(runs[on]))
        if not seeds:
            continue
        if q == "lr_schedule":
            what += (f". Here: {_run_length(lr_sequence(runs[off][seeds[0]]))} vs "
                     f"{_run_length(lr_sequence(runs[on][seeds[0]]))}")
        deltas = []
        for w in ("accuracy", "worst_class_accuracy"):
            m, s = _mean_std([100 * (E.metric(runs[on][sd], attack, w) - E.metric(runs[off][sd], attack, w))
                              for sd in seeds])
            deltas.append(f"{m:+.1f} ± {s:.1f}")
        lines.append(f"| {q} | {off} → {on} | {what} | {deltas[0]} | {deltas[1]} | {','.join(map(str, seeds))} |")
    return "\n".join(lines)


def ablation_glue(study: dict, attack: str | None = None) -> dict[str, float]:
    """Numbers for the book: mean average and worst-class accuracy (%) of every arm under ``attack``."""
    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    out = {}
    for row in E.summarize_runs(study["results"], [attack], ("accuracy", "worst_class_accuracy")):
        stem = f"abl_{label_key(row['method'])}_{attack}"
        out[f"{stem}_avg"] = round(100 * row[f"{attack}/accuracy"][0], 2)
        out[f"{stem}_worst"] = round(100 * row[f"{attack}/worst_class_accuracy"][0], 2)
    return out


# --------------------------------------------------------------------------------------------- KDIGA
def validate_kdiga(profile: str = "quick", methods=("kd", "kdiga", "kdiga_ard", "fair-kdiga"), students=None,
                   attacks=None, attack: str = "pgd20", seeds=None, gamma=None, grad_per_class=None,
                   device: str = "auto", results_dir=None, overrides=None, progress: bool = True) -> Checked:
    """Every parameter of kdiga.ipynb in one call (students, seeds, attacks go into the Setup)."""
    methods = check_subset("methods", methods, list(KDIGA_FAMILY))
    if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0):
        raise ValueError(f"gamma must be None (the KDIGA default 0.5) or a number >= 0, got {gamma!r}")
    values = dict(methods=methods, attack=attack, gamma=gamma,
                  grad_per_class=check_int(grad_per_class, "grad_per_class", 1, allow_none=True))
    registered = list(dict.fromkeys(KDIGA_FAMILY[m][1] for m in methods))
    setup = _setup(profile, registered, attacks, seeds=seeds, students=students, device=device, focus=attack,
                   progress=progress, results_dir=results_dir, overrides=overrides)
    return Checked(setup, values)


def input_gradient_gap(student, teacher, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict:
    """How far the student's input gradients are from the teacher's (KDIGA's alignment target).

    Per sample i, g_M = d CE(M(x_i), y_i) / d x_i for M = student, teacher, both in eval mode and
    fp32.  Returns the means over the samples of ||g_S - g_T||_2 ("l2") and of the cosine similarity
    ("cosine"), the teacher's mean ||g_T||_2 (scale reference), and the per-sample and per-class
    values.  Identical models give l2 = 0 and cosine = 1.
    """
    l2, cos, t_norm = [], [], []
    with eval_mode(student), eval_mode(teacher):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            _, g_s = input_gradient(student, xb, yb, create_graph=False)
            _, g_t = input_gradient(teacher, xb, yb, create_graph=False)
            g_s, g_t = g_s.flatten(1).double(), g_t.flatten(1).double()
            l2.append(torch.linalg.vector_norm(g_s - g_t, dim=1))
            cos.append(F.cosine_similarity(g_s, g_t, dim=1, eps=1e-30))
            t_norm.append(torch.linalg.vector_norm(g_t, dim=1))
    l2, cos, t_norm = torch.cat(l2), torch.cat(cos), torch.cat(t_norm)
    classes = int(y.max()) + 1 if len(y) else 0
    per_class = [float(l2[y == k].mean()) if bool((y == k).any()) else None for k in range(classes)]
    return {"l2": float(l2.mean()), "cosine": float(cos.mean()), "teacher_norm": float(t_norm.mean()),
            "per_sample_l2": l2.float().cpu(), "per_sample_cosine": cos.float().cpu(), "per_class_l2": per_class}


def kdiga_arms(p: E.Profile, methods, gamma=None, progress: bool = True) -> list[dict]:
    """One arm per (student, method, seed); "kd" is KDIGA with gamma = 0."""
    arms = []
    for student in p.students:
        for m in methods:
            label, registered, options = KDIGA_FAMILY[m]
            options = dict(options)
            if gamma is not None and m != "kd":
                options["gamma"] = float(gamma)
            for seed in p.seeds:
                cfg = E.student_config(p, registered, student=student, seed=seed, progress=progress,
                                       method_options=options)
                arms.append({"label": label, "cfg": cfg})
    return arms


def kdiga_study(c: Checked) -> dict:
    """Train/load KD, KDIGA, KDIGA-ARD, Fair-KDIGA per student and seed, evaluate per class, and measure
    every student's input-gradient gap to the teacher on a class-balanced test slice."""
    p = c.setup
    arms = kdiga_arms(p, c.methods, c.gamma, c.progress)
    results, skipped = run_labelled(p, arms, p.attacks, progress=c.progress)
    device = resolve_device(p.device)
    teacher = load_teacher(p, device, progress=c.progress)
    x, y = test_images(p.dataset, c.grad_per_class or p.eval_per_class, device)
    gaps = []
    for r in results:
        gap = input_gradient_gap(load_student(r, device), teacher, x, y)
        gaps.append({"method": r["method"], "student": r["student"], "seed": r["seed"], "n": len(y),
                     **{k: gap[k] for k in ("l2", "cosine", "teacher_norm", "per_class_l2")}})
    return {"profile": p, "results": results, "skipped": skipped, "gaps": gaps, "attacks": list(p.attacks),
            "attack": c.attack}


def _group(rows, keys=("method", "student")) -> dict[tuple, list]:
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def gap_table(study: dict, attack: str | None = None) -> str:
    """Input-gradient gap per method and student (mean ± std over seeds) next to worst-class accuracy."""
    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    worst = {(r["method"], r["student"], r["seed"]): E.metric(r, attack, "worst_class_accuracy")
             for r in study["results"]}
    head = ["method", "student", "seeds", "‖∇S − ∇T‖₂", "relative to ‖∇T‖₂", "cosine", f"{attack} worst (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (method, student), rows in _group(study["gaps"]).items():
        cells = [method, student, ",".join(str(r["seed"]) for r in rows)]
        for fn, fmt in ((lambda r: r["l2"], "{:.4f} ± {:.4f}"), (lambda r: r["l2"] / r["teacher_norm"],
                                                                  "{:.2f} ± {:.2f}"),
                        (lambda r: r["cosine"], "{:.3f} ± {:.3f}"),
                        (lambda r: 100 * worst[(r["method"], r["student"], r["seed"])], "{:.1f} ± {:.1f}")):
            cells.append(fmt.format(*_mean_std([fn(r) for r in rows])))
        lines.append("| " + " | ".join(cells) + " |")
    n = study["gaps"][0]["n"] if study["gaps"] else 0
    return "\n".join(lines) + f"\n\nGradients of the per-sample CE on {n} class-balanced test images, eval mode, fp32."


def kdiga_figure(study: dict, attack: str | None = None):
    """Left: input-gradient gap per method, grouped by student. Right: gap vs average (filled) and
    worst-class (hollow) accuracy under ``attack``, one point per run."""
    import matplotlib.pyplot as plt

    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    p = study["profile"]
    groups = _group(study["gaps"])
    methods = list(dict.fromkeys(m for m, _ in groups))
    students = list(dict.fromkeys(s for _, s in groups))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(1, len(students))
    for j, s in enumerate(students):
        stats = [_mean_std([g["l2"] for g in groups.get((m, s), [])]) if (m, s) in groups else (float("nan"), 0)
                 for m in methods]
        ax.bar([i + (j - (len(students) - 1) / 2) * width for i in range(len(methods))], [m for m, _ in stats],
               width, yerr=[sd for _, sd in stats], capsize=2, label=s)
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.set(ylabel="mean ‖∇x CE_S − ∇x CE_T‖₂", title="input-gradient gap to the teacher (test set)")
    ax.legend(fontsize=8, title="student")
    runs = {(r["method"], r["student"], r["seed"]): r for r in study["results"]}
    for i, m in enumerate(methods):
        pts = [g for g in study["gaps"] if g["method"] == m]
        gap = [g["l2"] for g in pts]
        color = plt.get_cmap("tab10")(i)
        for what, marker, fill in (("accuracy", "o", True), ("worst_class_accuracy", "v", False)):
            acc = [100 * E.metric(runs[(g["method"], g["student"], g["seed"])], attack, what) for g in pts]
            ax2.scatter(gap, acc, marker=marker, color=color if fill else "none", edgecolors=color,
                        label=m if fill else None)
    ax2.scatter([], [], marker="o", color="grey", label="average")  # legend keys for the two markers
    ax2.scatter([], [], marker="v", color="none", edgecolors="grey", label="worst class")
    ax2.set(xlabel="input-gradient gap", ylabel=f"{attack} accuracy (%)",
            title="gap vs robustness (one point per run)")
    ax2.legend(fontsize=8)
    fig.suptitle(f"KD vs KDIGA family, teacher {p.teacher}\n{caption(p, study['results'])}", fontsize=9)
    fig.tight_layout()
    return fig


def kdiga_glue(study: dict, attack: str | None = None) -> dict[str, float]:
    """Numbers for the book, per method and student: the mean input-gradient gap (absolute and relative to
    the teacher's gradient norm), the cosine, and the mean average / worst-class accuracy (%) under
    ``attack``. Names carry the student (``kdiga_kd_resnet8_gap``); the first student's numbers are also
    glued without it (``kdiga_kd_gap``), so the book cites them for any profile. ``*_avg_std`` is the
    seed-to-seed std of the average."""
    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    groups = _group(study["gaps"])
    first = next(iter(groups), (None, None))[1]
    out = {}

    def put(method, student, what, value):
        out[f"kdiga_{label_key(method)}_{label_key(student)}_{what}"] = value
        if student == first:
            out[f"kdiga_{label_key(method)}_{what}"] = value

    for (method, student), rows in groups.items():
        put(method, student, "gap", round(_mean_std([r["l2"] for r in rows])[0], 6))
        put(method, student, "gap_rel", round(_mean_std([r["l2"] / r["teacher_norm"] for r in rows])[0], 4))
        put(method, student, "cos", round(_mean_std([r["cosine"] for r in rows])[0], 4))
    for row in E.summarize_runs(study["results"], [attack], ("accuracy", "worst_class_accuracy")):
        put(row["method"], row["student"], f"{attack}_avg", round(100 * row[f"{attack}/accuracy"][0], 2))
        put(row["method"], row["student"], f"{attack}_avg_std", round(100 * row[f"{attack}/accuracy"][1], 2))
        put(row["method"], row["student"], f"{attack}_worst", round(100 * row[f"{attack}/worst_class_accuracy"][0], 2))
    return out


# ------------------------------------------------------------------------------- weighting explorer
def validate_explorer(profile: str = "quick", method: str = "fair-ard", seed: int = 0, attacks=None,
                      min_epochs: int = 4, beta: float = 2.0, clamp=OFFICIAL_CLAMP, clamp_on: bool = True,
                      measure: str = "kappa", epoch: int = -1, grid_betas=(0.0, 1.0, 2.0, 3.0, 4.0),
                      grid_clamps=(OFFICIAL_CLAMP, None), grid_measures=DIFFICULTY_MEASURES, device: str = "auto",
                      results_dir=None, overrides=None, progress: bool = True) -> Checked:
    """Every parameter of weighting_explorer.ipynb in one call; ``chosen_clamp`` = clamp if clamp_on else None."""
    method = _fair_method(method)
    if isinstance(grid_clamps, str):
        try:
            grid_clamps = json.loads(grid_clamps.replace("None", "null"))
        except json.JSONDecodeError:
            raise ValueError(f"grid_clamps: cannot read {grid_clamps!r}; write e.g. [[0.83, 2.5], null]") from None
    if not isinstance(grid_clamps, (list, tuple)) or not grid_clamps:
        raise ValueError(f"grid_clamps must be a non-empty list of [low, high] pairs or None, got {grid_clamps!r}")
    values = dict(method=method, seed=check_int(seed, "seed", 0), beta=check_betas([beta], "beta")[0],
                  clamp=check_clamp(clamp), clamp_on=check_flag(clamp_on, "clamp_on"),
                  measure=check_subset("measure", [measure], DIFFICULTY_MEASURES)[0], epoch=check_int(epoch, "epoch"),
                  grid_betas=check_betas(grid_betas, "grid_betas"),
                  grid_clamps=[check_clamp(g, "grid_clamps item") for g in grid_clamps],
                  grid_measures=check_subset("grid_measures", grid_measures, DIFFICULTY_MEASURES))
    if values["clamp"] is None:
        raise ValueError("clamp must be [low, high]; switch it off with clamp_on = False")
    values["chosen_clamp"] = values["clamp"] if values["clamp_on"] else None
    setup = _setup(profile, [method], attacks, seeds=[values["seed"]], device=device, min_epochs=min_epochs,
                   progress=progress, results_dir=results_dir, overrides=overrides)
    n = setup.student_epochs
    if n is not None and not -n <= values["epoch"] < n:
        raise ValueError(f"epoch must be in [0, {n - 1}] or -1 (the last) for a {n}-epoch run, got {values['epoch']}")
    return Checked(setup, values)


def recorded_run(c: Checked) -> tuple[dict, list[dict]]:
    """Train/load the Fair-* run whose log the explorer replays; returns (result, per-epoch log)."""
    p = c.setup
    cfg = E.student_config(p, c.method, seed=c.seed, progress=c.progress)
    result = E.run_all([cfg], profile=p, attacks=p.attacks, progress=c.progress)[0]
    return result, run_history(result)


def available_measures(history: list[dict], measures=DIFFICULTY_MEASURES) -> list[str]:
    """The measures whose statistic was recorded in every epoch of the log."""
    return [m for m in measures if history and all(MEASURE_STATS[m][0] in h["class_stats"] for h in history)]


def easiness(class_stats: dict, measure: str) -> torch.Tensor:
    """Per-class easiness of one epoch's logged statistics, exactly as the trainer computes it
    (fairness.ClassStats.easiness: mean kappa / accuracy, 1 / mean loss)."""
    stat = MEASURE_STATS[check_subset("measure", [measure], DIFFICULTY_MEASURES)[0]][0]
    if stat not in class_stats:
        raise ValueError(f"the log has no {stat!r} statistic (measure {measure!r}); recorded: "
                         f"{sorted(k for k in class_stats if k != 'count')}")
    means = torch.tensor(class_stats[stat], dtype=torch.float32)
    stats = ClassStats(len(means))
    stats.update(torch.arange(len(means)), **{stat: means})  # one "sample" per class: the class mean
    return stats.easiness(measure)


def _epoch_index(history, epoch: int) -> int:
    if not history:
        raise ValueError("the training log is empty")
    if not -len(history) <= epoch < len(history):
        raise ValueError(f"epoch must be in [0, {len(history) - 1}] or -1 (the last), got {epoch}")
    return epoch % len(history)


def weights_at(history, epoch: int, beta: float, clamp, measure: str) -> torch.Tensor:
    """The class weights that epoch ``epoch``'s statistics give (they weight epoch ``epoch`` + 1)."""
    h = history[_epoch_index(history, epoch)]
    return class_weights(easiness(h["class_stats"], measure), beta=float(beta), clamp=check_clamp(clamp))


def history_consistency(result: dict, history) -> float:
    """Max ``|recomputed − trainer's|`` over the run's epochs with its own beta, clamp and measure (≈ 0)."""
    cfg = result["config"]
    diffs = [float((weights_at(history, e, cfg["beta"], cfg["clamp"], cfg["difficulty"]).double()
                    - torch.tensor(h["next_class_weights"], dtype=torch.float64)).abs().max())
             for e, h in enumerate(history) if h.get("next_class_weights") is not None]
    return max(diffs) if diffs else float("nan")


def _clamp_label(c) -> str:
    return "off" if c is None else f"[{c[0]:.3g}, {c[1]:.3g}]"


def weights_grid(history, betas, clamps, measures=DIFFICULTY_MEASURES, class_names=None, digits: int = 6) -> dict:
    """Precomputed class weights for a kernel-free explorer (JSON-able).

    ``weights[m][c][b][e]`` = the weights (one per class) that epoch ``e``'s statistics give under
    measure ``measures[m]``, clamp ``clamps[c]`` (None = off) and beta ``betas[b]``, rounded to
    ``digits`` decimals; ``stats[m][e]`` = that epoch's per-class statistic behind measure ``m``.
    Measures the log does not record are listed in ``unavailable`` and left out.
    """
    measures = check_subset("measures", measures, DIFFICULTY_MEASURES)
    betas, clamps = check_betas(betas), [check_clamp(c) for c in clamps]
    have = available_measures(history, measures)
    names = list(class_names) if class_names else [str(k) for k in range(len(history[0]["class_stats"]["count"]))]

    def rnd(t):
        return [round(float(v), digits) for v in t]

    return {
        "classes": names, "epochs": [h.get("epoch", e) for e, h in enumerate(history)],
        "betas": betas, "clamps": [None if c is None else list(c) for c in clamps],
        "clamp_labels": [_clamp_label(c) for c in clamps], "measures": have,
        "unavailable": [m for m in measures if m not in have],
        "stat_labels": [MEASURE_STATS[m][1] for m in have],
        "stats": [[rnd(h["class_stats"][MEASURE_STATS[m][0]]) for h in history] for m in have],
        "weights": [[[[rnd(weights_at(history, e, b, c, m)) for e in range(len(history))] for b in betas]
                     for c in clamps] for m in have],
        "trainer_weights": [None if h.get("next_class_weights") is None else rnd(h["next_class_weights"])
                            for h in history],
    }


def weights_table(history, epoch: int, beta: float, clamp, measure: str, class_names) -> str:
    """Per class: every logged statistic of the epoch, the chosen measure's easiness, and the weights."""
    e = _epoch_index(history, epoch)
    stats = history[e]["class_stats"]
    have = available_measures(history)
    w = weights_at(history, e, beta, clamp, measure)
    ease = easiness(stats, measure)
    trainer = history[e].get("next_class_weights")
    head = (["class"] + [MEASURE_STATS[m][0] for m in have] + [f"easiness ({measure})", "weight"]
            + (["trainer's weight (run config)"] if trainer else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, name in enumerate(class_names):
        cells = [name] + [f"{stats[MEASURE_STATS[m][0]][k]:.3f}" for m in have] + [f"{ease[k]:.3f}", f"{w[k]:.3f}"]
        cells += [f"{trainer[k]:.3f}"] if trainer else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\nStatistics of epoch {e} → weights for epoch {e + 1}; beta {beta:g}, "
                               f"clamp {_clamp_label(check_clamp(clamp))}; sum of weights {float(w.sum()):.3f}.")


def weights_figure(history, epoch: int, beta: float, clamp, measure: str, class_names, title: str = ""):
    """Bars of the measure's per-class statistic and of the class weights it gives (clamp bounds dashed)."""
    import matplotlib.pyplot as plt

    e = _epoch_index(history, epoch)
    clamp = check_clamp(clamp)
    stat, label = MEASURE_STATS[measure]
    w = weights_at(history, e, beta, clamp, measure)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    xs = range(len(class_names))
    ax1.bar(xs, history[e]["class_stats"][stat], color="tab:gray")
    ax1.set(title=f"{label}, epoch {e}", ylabel=stat)
    colors = ["tab:red" if v > 1 else "tab:blue" for v in w.tolist()]
    ax2.bar(xs, w.tolist(), color=colors)
    ax2.axhline(1.0, color="k", lw=0.8)
    for bound in clamp or ():
        ax2.axhline(bound, color="k", lw=0.8, ls="--")
    ax2.set(title=f"class weights for epoch {e + 1} (β={beta:g}, clamp {_clamp_label(clamp)})", ylabel="weight")
    for ax in (ax1, ax2):
        ax.set_xticks(list(xs), class_names, rotation=45, ha="right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def explorer_widget(history, class_names, beta: float = 2.0, clamp=OFFICIAL_CLAMP, clamp_on: bool = True,
                    measure: str = "kappa", epoch: int = -1, title: str = ""):
    """ipywidgets explorer: β, clamp low/high, clamp on/off, difficulty measure, epoch -> live bars.

    Returns a VBox; ``box.state`` holds the current settings and weights (for tests and reuse).
    Needs a live kernel; the static book uses ``static_explorer_html`` instead.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    lo, hi = check_clamp(clamp) or OFFICIAL_CLAMP
    have = available_measures(history)
    controls = {
        "beta": W.FloatSlider(value=beta, min=0.0, max=6.0, step=0.1, description="β"),
        "low": W.FloatSlider(value=lo, min=0.05, max=1.0, step=0.01, description="clamp low"),
        "high": W.FloatSlider(value=hi, min=1.0, max=6.0, step=0.05, description="clamp high"),
        "clamp_on": W.Checkbox(value=clamp_on, description="clamp on"),
        "measure": W.Dropdown(options=have, value=measure if measure in have else have[0], description="measure"),
        "epoch": W.IntSlider(value=_epoch_index(history, epoch), min=0, max=len(history) - 1, description="epoch"),
    }
    out = W.Output()
    box = W.VBox([W.HBox([controls["beta"], controls["measure"], controls["epoch"]]),
                  W.HBox([controls["clamp_on"], controls["low"], controls["high"]]), out])

    def update(_=None):
        v = {k: c.value for k, c in controls.items()}
        cl = (min(v["low"], v["high"]), max(v["low"], v["high"])) if v["clamp_on"] else None
        box.state = {**v, "clamp": cl,
                     "weights": weights_at(history, v["epoch"], v["beta"], cl, v["measure"]).tolist()}
        with out:
            out.clear_output(wait=True)
            fig = weights_figure(history, v["epoch"], v["beta"], cl, v["measure"], class_names, title)
            display(fig)
            plt.close(fig)

    for c in controls.values():
        c.observe(update, names="value")
    box.controls = controls
    update()
    return box


_EXPLORER_JS = r"""
(function () {
  var root = document.getElementById("__ID__");
  var grid = JSON.parse(root.querySelector('script[data-role="grid"]').textContent);
  function el(role) { return root.querySelector('[data-role="' + role + '"]'); }
  var svg = el("chart"), NS = svg.namespaceURI, W = 640, H = 300, pad = 34, C = grid.classes.length;
  function add(tag, attrs, text) {
    var n = document.createElementNS(NS, tag);
    for (var k in attrs) { n.setAttribute(k, attrs[k]); }
    if (text !== undefined) { n.textContent = text; }
    svg.appendChild(n); return n;
  }
  function panel(values, y0, h, vmax, color, label, lines) {
    var bw = (W - 2 * pad) / C;
    add("text", {x: pad, y: y0 - 6, "font-size": 11}, label);
    add("line", {x1: pad, x2: W - pad, y1: y0 + h, y2: y0 + h, stroke: "#000"});
    var labelled = [];
    (lines || []).forEach(function (v) {
      var y = y0 + h - h * v.value / vmax;
      add("line", {x1: pad, x2: W - pad, y1: y, y2: y, stroke: "#444", "stroke-dasharray": v.dash || ""});
      if (labelled.every(function (u) { return Math.abs(u - y) > 9; })) {
        add("text", {x: W - pad + 2, y: y + 3, "font-size": 9}, v.value.toFixed(2));
        labelled.push(y);
      }
    });
    values.forEach(function (v, k) {
      var bh = h * Math.max(0, v) / vmax, fill = typeof color === "function" ? color(v) : color;
      add("rect", {x: pad + k * bw + 2, y: y0 + h - bh, width: bw - 4, height: bh, fill: fill});
      add("text", {x: pad + k * bw + bw / 2, y: y0 + h - bh - 2, "font-size": 9, "text-anchor": "middle"},
          v.toFixed(2));
    });
  }
  function draw() {
    var m = +el("measure").value, c = +el("clamp").value, b = +el("beta").value, e = +el("epoch").value;
    el("beta-value").textContent = String(grid.betas[b]);
    el("epoch-value").textContent = grid.epochs[e] + " → weights for epoch " + (grid.epochs[e] + 1);
    var w = grid.weights[m][c][b][e], s = grid.stats[m][e], cl = grid.clamps[c];
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var wmax = Math.max.apply(null, w.concat([1.0], cl ? [cl[1]] : [])) * 1.15;
    var smax = Math.max.apply(null, s.concat([1e-9])) * 1.15;
    panel(s, 22, 90, smax, "#888", grid.stat_labels[m] + " (epoch " + grid.epochs[e] + ")");
    var lines = [{value: 1.0}].concat(cl ? [{value: cl[0], dash: "4 3"}, {value: cl[1], dash: "4 3"}] : []);
    panel(w, 150, 110, wmax, function (v) { return v > 1 ? "#d62728" : "#1f77b4"; },
          "class weights (sum " + w.reduce(function (a, v) { return a + v; }, 0).toFixed(2) + ")", lines);
    grid.classes.forEach(function (name, k) {
      add("text", {x: pad + (k + 0.5) * (W - 2 * pad) / C, y: 292, "font-size": 9, "text-anchor": "middle"},
          name.slice(0, 8));
    });
  }
  ["measure", "clamp", "beta", "epoch"].forEach(function (r) { el(r).addEventListener("input", draw); });
  draw();
})();
"""


def static_explorer_html(grid: dict, title: str = "") -> str:
    """A self-contained HTML view of ``weights_grid``: selects (measure, clamp) and sliders (β, epoch)
    redraw an inline SVG bar chart with plain inline JavaScript; no external script, no URL."""
    if not grid["measures"]:
        raise ValueError(f"the grid holds no measure (unavailable: {grid['unavailable']})")
    payload = json.dumps(grid, separators=(",", ":")).replace("</", "<\\/")
    uid = "fairard-explorer-" + hashlib.sha1(payload.encode()).hexdigest()[:10]
    default_beta = min(range(len(grid["betas"])), key=lambda i: abs(grid["betas"][i] - 2.0))
    default_clamp = next((i for i, c in enumerate(grid["clamps"]) if c and abs(c[0] - 5 / 6) < 1e-6), 0)

    def options(labels, selected=0):
        return "".join(f'<option value="{i}"{" selected" if i == selected else ""}>{html.escape(str(v))}</option>'
                       for i, v in enumerate(labels))

    note = (f"<div style='color:#666'>not recorded by this run: {html.escape(', '.join(grid['unavailable']))}</div>"
            if grid["unavailable"] else "")
    return f"""<div id="{uid}" class="fairard-explorer" style="font-family:sans-serif;font-size:13px;max-width:680px">
<div style="font-weight:bold">{html.escape(title)}</div>
<div style="display:flex;flex-wrap:wrap;gap:12px;margin:6px 0">
<label>measure <select data-role="measure">{options(grid["measures"])}</select></label>
<label>clamp <select data-role="clamp">{options(grid["clamp_labels"], default_clamp)}</select></label>
<label>β <input type="range" data-role="beta" min="0" max="{len(grid['betas']) - 1}" step="1" value="{default_beta}">
<span data-role="beta-value"></span></label>
<label>statistics of epoch <input type="range" data-role="epoch" min="0" max="{len(grid['epochs']) - 1}" step="1"
 value="{len(grid['epochs']) - 1}"> <span data-role="epoch-value"></span></label>
</div>{note}
<svg data-role="chart" width="680" height="300" viewBox="0 0 680 300" role="img"></svg>
<script type="application/json" data-role="grid">{payload}</script>
<script>{_EXPLORER_JS.replace("__ID__", uid)}</script>
</div>"""


# ----------------------------------------------------------------------------------- AA variants
def validate_aa_variants(profile: str = "quick", methods=("ard", "fair-ard"), students=None,
                         attacks=("clean", "aa", "aa10"), seeds=None, device: str = "auto",
                         results_dir=None, overrides=None, progress: bool = True) -> Checked:
    """Every parameter of aa_variants.ipynb in one call; both AutoAttack variants must be among the attacks."""
    setup = _setup(profile, methods, attacks, seeds=seeds, students=students, device=device,
                   progress=progress, results_dir=results_dir, overrides=overrides)
    missing = [a for a in AA_PAIR if a not in setup.attacks]
    if missing:
        raise ValueError(f"attacks must include both {list(AA_PAIR)} to compare them, missing {missing}; "
                         f"valid attacks: {', '.join(EVAL_ATTACKS)}")
    return Checked(setup, dict(methods=list(setup.methods)))


def aa_study(c: Checked) -> dict:
    """Train/load each method per student and seed; evaluate with both AutoAttack variants."""
    p = c.setup
    arms = [{"label": m, "cfg": E.student_config(p, m, student=s, seed=seed, progress=c.progress)}
            for s in p.students for m in c.methods for seed in p.seeds]
    results, skipped = run_labelled(p, arms, p.attacks, progress=c.progress)
    return {"profile": p, "results": results, "skipped": skipped, "attacks": list(p.attacks)}


def aa_rows(study: dict) -> list[dict]:
    """Per (method, student): per-class AA, AA-10 and AA-10 − AA (means over seeds), worst class, time."""
    names = D.CLASS_NAMES[study["profile"].dataset]
    rows = []
    for (method, student), runs in _group(study["results"]).items():
        per = {a: [sum(r["evaluation"]["attacks"][a]["per_class"][k] or 0.0 for r in runs) / len(runs)
                   for k in range(len(names))] for a in AA_PAIR}
        row = {"method": method, "student": student, "seeds": sorted(r["seed"] for r in runs),
               "n": runs[0]["evaluation"]["attacks"]["aa"]["n"], "per_class": per,
               "diff": [b - a for a, b in zip(per["aa"], per["aa10"])]}
        for a in AA_PAIR:
            row[f"{a}_avg"] = sum(E.metric(r, a) for r in runs) / len(runs)
            row[f"{a}_worst"] = sum(E.metric(r, a, "worst_class_accuracy") for r in runs) / len(runs)
            row[f"{a}_seconds"] = sum(r["evaluation"]["seconds"].get(a, float("nan")) for r in runs) / len(runs)
        rows.append(row)
    return rows


def aa_table(study: dict) -> str:
    """Classes as rows; per run group: AA, AA-10 and their difference in points; then average, worst, time."""
    names = D.CLASS_NAMES[study["profile"].dataset]
    rows = aa_rows(study)
    head = ["class"] + [f"{r['method']}/{r['student']} {c}" for r in rows for c in ("AA", "AA-10", "Δ")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, name in enumerate(names):
        cells = [name]
        for r in rows:
            a, b = r["per_class"]["aa"][k], r["per_class"]["aa10"][k]
            cells += [f"{100 * a:.1f}", f"{100 * b:.1f}", f"{100 * (b - a):+.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for label, key, fmt in (("**average**", "avg", "{:.1f}"), ("**worst class**", "worst", "{:.1f}")):
        cells = [label]
        for r in rows:
            a, b = 100 * r[f"aa_{key}"], 100 * r[f"aa10_{key}"]
            cells += [fmt.format(a), fmt.format(b), f"{b - a:+.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**seconds**"]
    for r in rows:
        cells += [f"{r['aa_seconds']:.1f}", f"{r['aa10_seconds']:.1f}", ""]
    lines.append("| " + " | ".join(cells) + " |")
    n = rows[0]["n"] if rows else 0
    return "\n".join(lines) + (f"\n\nAccuracy in % on {n} class-balanced test images per run (both variants on "
                               f"the same images); Δ = AA-10 − AA in points (> 0: the 10-step variant overstates).")


def aa_figure(study: dict):
    """Per run group: per-class AA vs AA-10 bars and their difference."""
    import matplotlib.pyplot as plt

    names = D.CLASS_NAMES[study["profile"].dataset]
    rows = aa_rows(study)
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 2.8 * len(rows)), squeeze=False)
    xs = range(len(names))
    for ax, r in zip(axes[:, 0], rows):
        ax.bar([x - 0.2 for x in xs], [100 * v for v in r["per_class"]["aa"]], 0.4, label="AA standard (100 it.)")
        ax.bar([x + 0.2 for x in xs], [100 * v for v in r["per_class"]["aa10"]], 0.4, label="AA, 10-step")
        ax.plot(xs, [100 * d for d in r["diff"]], "k.-", label="AA-10 − AA (points)")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
        ax.set(ylabel="accuracy (%)", title=f"{r['method']} / {r['student']}, seeds {','.join(map(str, r['seeds']))}: "
                                            f"worst class {100 * r['aa_worst']:.1f} vs {100 * r['aa10_worst']:.1f}")
        ax.legend(fontsize=7)
    fig.suptitle(f"AutoAttack standard vs 10-step, per class\n{caption(study['profile'], study['results'])}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def aa_glue(study: dict) -> dict[str, float]:
    out = {}
    for r in aa_rows(study):
        stem = f"aa_{label_key(r['method'])}_{label_key(r['student'])}"
        for a in AA_PAIR:
            out[f"{stem}_{a}_worst"] = round(100 * r[f"{a}_worst"], 2)
            out[f"{stem}_{a}_avg"] = round(100 * r[f"{a}_avg"], 2)
        out[f"{stem}_max_class_gap"] = round(100 * max(abs(d) for d in r["diff"]), 2)
    return out
