"""ablations.ipynb: Fair-ARD's design choices one at a time (difficulty measure, beta, clamp) and the
official code's quirks (single lr decay, Fair-MTARD's clean target, the ARD/IAD scripts' unused clean
forward), each off and on; tables, figures and the class-weight trajectories.

``validate`` checks every parameter; ``study`` trains (or loads) every arm for every seed through
the store (``fairard.store``), so notebooks share runs.
"""
from __future__ import annotations

from .. import data as D
from ..fairness import DIFFICULTY_MEASURES
from ..methods import METHODS, parse_method_name
from ..checks import check_betas, check_clamp, check_flag, check_subset
from ..profiles import OFFICIAL_CLAMP, Checked, Profile, check_fair_method, notebook_setup
from ..executors import compute
from ..runs import Run, load_student, run_history, student_config
from ..tables import caption, headline_attack, label_key, markdown_table, mean_std, metric, summarize_runs
from ..train import lr_at
from . import arm_runs, labelled_results


ABLATIONS = ("measure", "beta", "clamp", "quirks")


QUIRKS = ("lr_schedule", "mtard_clean_target", "clean_forward")


# The methods whose official scripts run the unused clean forward; with another ablated method the
# clean_forward quirk runs on Fair-ARD (as mtard_clean_target always runs on Fair-MTARD).
CLEAN_FORWARD_METHODS = ("fair-ard", "fair-iad")


QUIRK_EFFECTS = {
    "lr_schedule": ("step", "official_single_decay",
                    "lr x0.1 at every milestone vs only at the first one: the ARD/IAD/Fair-ARD/Fair-IAD scripts "
                    "pass the initial lr by value, so 0.1 -> 0.01 and the advertised 0.001 never comes"),
    "mtard_clean_target": ("natural_teacher", "robust_teacher_adv",
                           "Fair-MTARD's clean-logit KL target: the natural teacher on x (MTARD) vs the robust "
                           "teacher on x' (the Fair-MTARD script; its natural teacher is computed, never used)"),
    "clean_forward": ("loss_forwards_only", "official_clean_forward",
                      "an unused clean train-mode student forward every batch (IAD: also one on x'), as the "
                      "ARD/IAD-family scripts run at alpha = 1: loss and gradients unchanged, BatchNorm's "
                      "running statistics also average clean batches"),
}


def quirk_method(quirk: str, method: str) -> str:
    """The Fair-* method a quirk's two arms train: the ablated one where the quirk exists in its script."""
    if quirk == "mtard_clean_target":
        return "fair-mtard"
    if quirk == "clean_forward" and method not in CLEAN_FORWARD_METHODS:
        return "fair-ard"
    return method


_QUIRK_OPTION = {"mtard_clean_target": "mtard_clean_target", "clean_forward": "official_clean_forward"}


def _quirk_overrides(quirk: str, setting: str) -> dict:
    """TrainConfig overrides of one quirk arm; the "off" setting is the method's default (no override)."""
    off, on, _ = QUIRK_EFFECTS[quirk]
    if quirk == "lr_schedule":
        return {"lr_schedule": setting}
    if setting == off:
        return {}
    return {"method_options": {_QUIRK_OPTION[quirk]: True if quirk == "clean_forward" else on}}


def validate(profile: str = "quick", method: str = "fair-ard", ablations=ABLATIONS,
                       measures=DIFFICULTY_MEASURES, betas=(0.0, 1.0, 2.0, 3.0, 4.0), clamp=OFFICIAL_CLAMP,
                       quirks=QUIRKS, attacks=None, attack: str = "pgd20", seeds=None, min_epochs: int = 4,
                       smoke_trim: bool = True, device: str = "auto", results_dir=None, overrides=None,
                       progress: bool = True) -> Checked:
    """Every parameter of ablations.ipynb in one call; the Setup has student epochs >= ``min_epochs``."""
    method = check_fair_method(method)
    ablations = check_subset("ablations", ablations, ABLATIONS)
    quirks = check_subset("quirks", quirks, QUIRKS)
    values = dict(method=method, ablations=ablations, measures=check_subset("measures", measures, DIFFICULTY_MEASURES),
                  betas=check_betas(betas), clamp=check_clamp(clamp), quirks=quirks, attack=attack,
                  smoke_trim=check_flag(smoke_trim, "smoke_trim"))
    if values["clamp"] is None:
        raise ValueError("clamp is the 'on' setting of the clamp ablation: give [low, high], e.g. [5/6, 5/2]")
    methods = [method] + ([quirk_method(q, method) for q in quirks] if "quirks" in ablations else [])
    methods = list(dict.fromkeys(methods))
    setup = notebook_setup(profile, methods, attacks, seeds=seeds, device=device, min_epochs=min_epochs, focus=attack,
                   progress=progress, results_dir=results_dir, overrides=overrides)
    return Checked(setup, values)


def _trim(values, keep):
    """The values in ``keep``, in their original order (the smoke trim)."""
    return [v for v in values if v in keep]


def ablation_arms(p: Profile, method: str, ablations, measures, betas, clamp, quirks,
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
            for setting in QUIRK_EFFECTS[q][:2]:  # "off" is the method's default: it shares the baseline's run
                arms.append(dict(ablation=f"quirk {q}", setting=setting, method=quirk_method(q, method),
                                 overrides={**baseline, **_quirk_overrides(q, setting)}))
    for arm in arms:
        arm["baseline"] = arm["method"] == method and arm["overrides"] == baseline
    return arms


def arms(c: Checked) -> list[dict]:
    """Every (arm, seed): its label, ablation, setting, baseline flag and TrainConfig."""
    p = c.setup
    out = []
    for arm in ablation_arms(p, c.method, c.ablations, c.measures, c.betas, c.clamp, c.quirks, c.smoke_trim):
        for seed in p.seeds:
            cfg = student_config(p, arm["method"], seed=seed, **arm["overrides"])
            out.append({"label": f"{arm['ablation']}: {arm['setting']}", "ablation": arm["ablation"],
                        "setting": arm["setting"], "baseline": arm["baseline"], "cfg": cfg})
    return out


def plan(c: Checked) -> list[Run]:
    """One run per distinct config of the arms (an arm equal to the baseline shares its run)."""
    return arm_runs(c.setup, arms(c), c.setup.attacks)


def collect(c: Checked) -> dict:
    """{"results", "skipped", "plan", "attacks", ...} read from the store: one result per (arm, seed),
    relabelled by arm; arms the trainer refused are listed in ``skipped`` with the reason."""
    p = c.setup
    sweep = ablation_arms(p, c.method, c.ablations, c.measures, c.betas, c.clamp, c.quirks, c.smoke_trim)
    results, skipped = labelled_results(p, arms(c), p.attacks, "ablations")
    print(f"{len(sweep)} arms x {len(p.seeds)} seed(s); {len({r['key'] for r in results})} distinct runs, "
          f"{len(skipped)} skipped")
    return {"profile": p, "method": c.method, "plan": sweep, "results": results, "skipped": skipped,
            "attacks": list(p.attacks), "attack": c.attack}


def study(c: Checked, **executor) -> dict:
    """``plan``, compute what the store lacks, then ``collect``; the keywords choose who computes the
    pending runs (``fairard.executors.execute_runs``: executor, jobs, gpus, jobs_per_gpu, slurm)."""
    compute(plan(c), progress=c.progress, **executor)
    return collect(c)


def ablation_table(study: dict, whats=("accuracy", "worst_class_accuracy", "nsd")) -> str:
    """One row per arm (mean ± std over seeds, %), grouped by ablation, plus the skipped arms."""
    rows = summarize_runs(study["results"], study["attacks"], whats)
    table = markdown_table(rows, study["attacks"], whats)
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
            stats = [mean_std([100 * metric(r, attack, what) for r in runs]) for runs in settings.values()]
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
    """Each official-code quirk: what it changes, the lr per epoch where relevant, and on − off (points,
    matched by seed) of the average and worst-class accuracy, clean and under ``attack`` (at a robust floor
    the clean numbers are the ones that can move)."""
    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    shown = [a for a in dict.fromkeys(("clean", attack)) if a in study["attacks"]]
    head = ["quirk", "off → on", "what changes"] + [f"Δ {a} {w}" for a in shown for w in ("avg", "worst")] + ["seeds"]
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
        for a in shown:
            for w in ("accuracy", "worst_class_accuracy"):
                m, s = mean_std([100 * (metric(runs[on][sd], a, w) - metric(runs[off][sd], a, w)) for sd in seeds])
                deltas.append(f"{m:+.1f} ± {s:.1f}")
        first = runs[on][seeds[0]]
        method = first.get("run_method") or first.get("config", {}).get("method", "?")
        lines.append(f"| {q} ({method}) | {off} → {on} | {what} | {' | '.join(deltas)} | "
                     f"{','.join(map(str, seeds))} |")
    return "\n".join(lines)


def state_difference(off, on) -> dict:
    """What separates two trained models of one architecture: the largest absolute difference of any
    trainable parameter, the largest relative difference (‖Δ‖ / ‖off‖, over BatchNorm layers) of the
    running means and variances, and each model's count of train-mode BatchNorm forwards."""
    params = dict(on.named_parameters())
    weight = max(((p - params[n]).abs().max().item() for n, p in off.named_parameters()), default=0.0)
    bn = [(m, dict(on.named_modules())[n]) for n, m in off.named_modules()
          if getattr(m, "running_mean", None) is not None]

    def relative(stat):
        return max(((getattr(b, stat) - getattr(a, stat)).norm() / getattr(a, stat).norm()).item() for a, b in bn)

    return {"max_weight_diff": weight, "running_mean_rel": relative("running_mean") if bn else 0.0,
            "running_var_rel": relative("running_var") if bn else 0.0,
            "bn_forwards": (int(bn[0][0].num_batches_tracked), int(bn[0][1].num_batches_tracked)) if bn else None}


def quirk_state_table(study: dict) -> str:
    """Per quirk and seed, how the trained students differ (``state_difference`` of off vs on): a quirk
    that moves only BatchNorm's running statistics leaves every trainable weight bit-identical."""
    head = ["quirk", "seed", "max |Δ| trainable weight", "max rel. Δ BN running mean", "max rel. Δ BN running var",
            "train-mode BN forwards off → on"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for q, (off, on, _) in QUIRK_EFFECTS.items():
        runs = {s: {r["seed"]: r for r in study["results"] if r["ablation"] == f"quirk {q}" and r["setting"] == s}
                for s in (off, on)}
        for seed in sorted(set(runs[off]) & set(runs[on])):
            d = state_difference(load_student(runs[off][seed]), load_student(runs[on][seed]))
            forwards = "{} → {}".format(*d["bn_forwards"]) if d["bn_forwards"] else "–"
            lines.append(f"| {q} | {seed} | {d['max_weight_diff']:.3g} | {d['running_mean_rel']:.2%} | "
                         f"{d['running_var_rel']:.2%} | {forwards} |")
    return "\n".join(lines)


def ablation_glue(study: dict, attack: str | None = None) -> dict[str, float]:
    """Numbers for the book: mean average and worst-class accuracy (%) of every arm under ``attack``."""
    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    out = {}
    for row in summarize_runs(study["results"], [attack], ("accuracy", "worst_class_accuracy")):
        stem = f"abl_{label_key(row['method'])}_{attack}"
        out[f"{stem}_avg"] = round(100 * row[f"{attack}/accuracy"][0], 2)
        out[f"{stem}_worst"] = round(100 * row[f"{attack}/worst_class_accuracy"][0], 2)
    return out
