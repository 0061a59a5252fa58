"""kdiga.ipynb: KD vs the KDIGA family (KDIGA, KDIGA-ARD, Fair-KDIGA) per class, and how far each
student's input gradients are from the teacher's (KDIGA's alignment target)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..evaluate import eval_mode
from ..methods import METHODS, input_gradient
from ..checks import as_list, check_int, check_subset
from ..profiles import Checked, Profile, notebook_setup
from ..executors import compute
from ..runs import Run, load_student, load_teacher, student_config, test_images
from ..tables import caption, group_by, headline_attack, label_key, mean_std, metric, summarize_runs
from ..utils import resolve_device
from . import arm_runs, labelled_results


KDIGA_FAMILY = {
    "kd": ("KD", "kdiga", {"gamma": 0.0}),   # KD is KDIGA without the input-gradient term
    "kdiga": ("KDIGA", "kdiga", {}),
    "kdiga_ard": ("KDIGA-ARD", "kdiga_ard", {}),
    "fair-kdiga": ("Fair-KDIGA", "fair-kdiga", {}),
    "fair-kdiga_ard": ("Fair-KDIGA-ARD", "fair-kdiga_ard", {}),
}


# The default gamma sweep of plain KDIGA: from the author's batch-form scale (0.5 there is ~3.5e-4 per
# sample at B = 128, ``KDIGA.per_sample_gamma``) to this project's per-sample default 0.5.
GAMMA_SWEEP = (0.00035, 0.005, 0.05, 0.5)


def _gammas(value, name: str, none_means: str, allow_empty: bool = False) -> list[float] | None:
    """None, a number >= 0, or a list of them, as a list (None stays None; ``allow_empty``: [] passes)."""
    if value is None:
        return None
    gammas = as_list(value, name, float) if not isinstance(value, bool) else [value]
    if not gammas and allow_empty:
        return []
    if not gammas or any(isinstance(g, bool) or g < 0 for g in gammas):
        raise ValueError(f"{name} must be None ({none_means}), a number >= 0 or a list of them, got {value!r}")
    return gammas


def validate(profile: str = "quick", methods=("kd", "kdiga", "kdiga_ard", "fair-kdiga"), students=None,
                   attacks=None, attack: str = "pgd20", seeds=None, gamma=None, gamma_sweep=GAMMA_SWEEP,
                   grad_per_class=None, device: str = "auto", results_dir=None, overrides=None,
                   progress: bool = True) -> Checked:
    """Every parameter of kdiga.ipynb in one call (students, seeds, attacks go into the Setup).

    ``gamma``: the gamma of every KDIGA-family arm (None: each method's default; a list: one arm of each
    method per value). ``gamma_sweep``: extra plain-KDIGA arms, one per value, drawn against gamma
    (None or []: no sweep); an arm equal to a main arm shares its run."""
    methods = check_subset("methods", methods, list(KDIGA_FAMILY))
    values = dict(methods=methods, attack=attack, gamma=_gammas(gamma, "gamma", "the KDIGA default 0.5"),
                  gamma_sweep=_gammas(gamma_sweep, "gamma_sweep", "no sweep", allow_empty=True) or [],
                  grad_per_class=check_int(grad_per_class, "grad_per_class", 1, allow_none=True))
    registered = list(dict.fromkeys([KDIGA_FAMILY[m][1] for m in methods] + ["kdiga"] * bool(values["gamma_sweep"])))
    setup = notebook_setup(profile, registered, attacks, seeds=seeds, students=students, device=device, focus=attack,
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


def kdiga_arms(p: Profile, methods, gamma=None) -> list[dict]:
    """One arm per (student, method, seed); "kd" is KDIGA with gamma = 0. ``gamma``: None (each method's
    default), a number, or a list (a sweep: one arm per value, labelled e.g. "KDIGA (γ=0.5)"). The
    per-sample default 0.5 is ~1450x the author's batch form at 0.5 (``KDIGA.per_sample_gamma``), so a
    sweep that includes 3.5e-4 spans both scales."""
    gammas = [None] if gamma is None else list(gamma) if isinstance(gamma, (list, tuple)) else [gamma]
    arms = []
    for student in p.students:
        for m in methods:
            label, registered, base_options = KDIGA_FAMILY[m]
            for g in ([None] if m == "kd" else gammas):
                options = dict(base_options) if g is None else {**base_options, "gamma": float(g)}
                name = f"{label} (γ={g:g})" if len(gammas) > 1 and g is not None and m != "kd" else label
                for seed in p.seeds:
                    cfg = student_config(p, registered, student=student, seed=seed, method_options=options)
                    arms.append({"label": name, "cfg": cfg})
    return arms


def sweep_arms(p: Profile, gammas) -> list[dict]:
    """One plain-KDIGA arm per (student, gamma, seed), labelled "KDIGA (γ=…)", with its ``gamma``. The
    default gamma is left out of the options, so that arm is the main KDIGA arm's run."""
    default = METHODS["kdiga"].option_defaults()["gamma"]
    return [{"label": f"KDIGA (γ={g:g})", "gamma": float(g),
             "cfg": student_config(p, "kdiga", student=student, seed=seed,
                                   method_options={} if float(g) == default else {"gamma": float(g)})}
            for student in p.students for g in gammas for seed in p.seeds]


def plan(c: Checked) -> list[Run]:
    """KD, KDIGA, KDIGA-ARD, Fair-KDIGA (as chosen) and the KDIGA gamma sweep per student and seed, and
    the teacher they read."""
    return arm_runs(c.setup, kdiga_arms(c.setup, c.methods, c.gamma) + sweep_arms(c.setup, c.gamma_sweep),
                    c.setup.attacks)


def collect(c: Checked) -> dict:
    """The runs read from the store, plus every student's input-gradient gap to the teacher on a
    class-balanced test slice (measured here: a few forward/backward passes per model)."""
    p = c.setup
    results, skipped = labelled_results(p, kdiga_arms(p, c.methods, c.gamma), p.attacks, "kdiga")
    sweep, _ = labelled_results(p, sweep_arms(p, c.gamma_sweep), p.attacks, "kdiga")
    device = resolve_device(p.device)
    teacher = load_teacher(p, device, progress=c.progress)
    x, y = test_images(p.dataset, c.grad_per_class or p.eval_per_class, device)
    measured: dict[str, dict] = {}  # a run shared by a main arm and a sweep arm is measured once

    def gaps_of(runs):
        out = []
        for r in runs:
            if r["key"] not in measured:
                gap = input_gradient_gap(load_student(r, device), teacher, x, y)
                measured[r["key"]] = {k: gap[k] for k in ("l2", "cosine", "teacher_norm", "per_class_l2")}
            out.append({"method": r["method"], "student": r["student"], "seed": r["seed"], "n": len(y),
                        **({"gamma": r["gamma"]} if "gamma" in r else {}), **measured[r["key"]]})
        return out

    return {"profile": p, "results": results, "skipped": skipped, "gaps": gaps_of(results), "sweep": sweep,
            "sweep_gaps": gaps_of(sweep), "kd": [r for r in results if r["method"] == "KD"],
            "attacks": list(p.attacks), "attack": c.attack}


def study(c: Checked, **executor) -> dict:
    """``plan``, compute what the store lacks, then ``collect``; the keywords choose who computes the
    pending runs (``fairard.executors.execute_runs``: executor, jobs, gpus, jobs_per_gpu, slurm)."""
    compute(plan(c), progress=c.progress, **executor)
    return collect(c)


def gap_table(study: dict, attack: str | None = None) -> str:
    """Input-gradient gap per method and student (mean ± std over seeds) next to worst-class accuracy."""
    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    worst = {(r["method"], r["student"], r["seed"]): metric(r, attack, "worst_class_accuracy")
             for r in study["results"]}
    head = ["method", "student", "seeds", "‖∇S − ∇T‖₂", "relative to ‖∇T‖₂", "cosine", f"{attack} worst (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (method, student), rows in group_by(study["gaps"]).items():
        cells = [method, student, ",".join(str(r["seed"]) for r in rows)]
        for fn, fmt in ((lambda r: r["l2"], "{:.4f} ± {:.4f}"), (lambda r: r["l2"] / r["teacher_norm"],
                                                                  "{:.2f} ± {:.2f}"),
                        (lambda r: r["cosine"], "{:.3f} ± {:.3f}"),
                        (lambda r: 100 * worst[(r["method"], r["student"], r["seed"])], "{:.1f} ± {:.1f}")):
            cells.append(fmt.format(*mean_std([fn(r) for r in rows])))
        lines.append("| " + " | ".join(cells) + " |")
    n = study["gaps"][0]["n"] if study["gaps"] else 0
    return "\n".join(lines) + f"\n\nGradients of the per-sample CE on {n} class-balanced test images, eval mode, fp32."


def kdiga_figure(study: dict, attack: str | None = None):
    """Left: input-gradient gap per method, grouped by student. Right: gap vs average (filled) and
    worst-class (hollow) accuracy under ``attack``, one point per run."""
    import matplotlib.pyplot as plt

    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    p = study["profile"]
    groups = group_by(study["gaps"])
    methods = list(dict.fromkeys(m for m, _ in groups))
    students = list(dict.fromkeys(s for _, s in groups))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(1, len(students))
    for j, s in enumerate(students):
        stats = [mean_std([g["l2"] for g in groups.get((m, s), [])]) if (m, s) in groups else (float("nan"), 0)
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
            acc = [100 * metric(runs[(g["method"], g["student"], g["seed"])], attack, what) for g in pts]
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
    groups = group_by(study["gaps"])
    first = next(iter(groups), (None, None))[1]
    out = {}

    def put(method, student, what, value):
        out[f"kdiga_{label_key(method)}_{label_key(student)}_{what}"] = value
        if student == first:
            out[f"kdiga_{label_key(method)}_{what}"] = value

    for (method, student), rows in groups.items():
        put(method, student, "gap", round(mean_std([r["l2"] for r in rows])[0], 6))
        put(method, student, "gap_rel", round(mean_std([r["l2"] / r["teacher_norm"] for r in rows])[0], 4))
        put(method, student, "cos", round(mean_std([r["cosine"] for r in rows])[0], 4))
    for row in summarize_runs(study["results"], [attack], ("accuracy", "worst_class_accuracy")):
        put(row["method"], row["student"], f"{attack}_avg", round(100 * row[f"{attack}/accuracy"][0], 2))
        put(row["method"], row["student"], f"{attack}_avg_std", round(100 * row[f"{attack}/accuracy"][1], 2))
        put(row["method"], row["student"], f"{attack}_worst", round(100 * row[f"{attack}/worst_class_accuracy"][0], 2))
    return out


def _point(gamma: float, runs: list[dict], gaps: list[dict], attack: str) -> dict:
    """One gamma's runs (one per seed) and their gradient gaps: mean ± std over seeds of the relative gap,
    the cosine and the average / worst-class accuracy (%) under ``attack``."""
    return {"gamma": gamma, "seeds": [r["seed"] for r in runs],
            "gap_rel": mean_std([g["l2"] / g["teacher_norm"] for g in gaps]),
            "cos": mean_std([g["cosine"] for g in gaps]),
            "avg": mean_std([100 * metric(r, attack, "accuracy") for r in runs]),
            "worst": mean_std([100 * metric(r, attack, "worst_class_accuracy") for r in runs])}


def sweep_points(study: dict, attack: str | None = None) -> dict[str, dict]:
    """Per student: {"kd": KD's point (gamma 0) or None, "points": one point per swept gamma, ascending}."""
    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    gaps = {(g["student"], g["gamma"], g["seed"]): g for g in study.get("sweep_gaps", [])}
    kd_gaps = group_by(study.get("gaps", []))
    kd_runs = group_by(study.get("kd", []), ("student",))
    out: dict[str, dict] = {}
    for (gamma, student), runs in sorted(group_by(study.get("sweep", []), ("gamma", "student")).items()):
        if student not in out:
            kd = (_point(0.0, kd_runs[(student,)], kd_gaps[("KD", student)], attack)
                  if (student,) in kd_runs and ("KD", student) in kd_gaps else None)
            out[student] = {"kd": kd, "points": []}
        out[student]["points"].append(_point(gamma, runs, [gaps[(student, gamma, r["seed"])] for r in runs], attack))
    return out


def sweep_table(study: dict, attack: str | None = None) -> str:
    """The KDIGA gamma sweep: one row per (student, gamma), mean ± std over seeds; KD (gamma 0) first."""
    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    head = ["student", "γ", "seeds", "relative gap", "cosine", f"{attack} avg (%)", f"{attack} worst (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for student, sweep in sweep_points(study, attack).items():
        for pt in [sweep["kd"]] * bool(sweep["kd"]) + sweep["points"]:
            name = "0 (KD)" if pt is sweep["kd"] else f"{pt['gamma']:g}"
            lines.append(f"| {student} | {name} | {','.join(map(str, pt['seeds']))} | "
                         f"{pt['gap_rel'][0]:.2f} ± {pt['gap_rel'][1]:.2f} | {pt['cos'][0]:.3f} ± {pt['cos'][1]:.3f} | "
                         f"{pt['avg'][0]:.1f} ± {pt['avg'][1]:.1f} | {pt['worst'][0]:.1f} ± {pt['worst'][1]:.1f} |")
    return "\n".join(lines)


def sweep_figure(study: dict, attack: str | None = None):
    """Left: relative input-gradient gap vs gamma (log axis); right: average (filled) and worst-class (hollow)
    accuracy under ``attack`` vs gamma; KD (gamma 0) as horizontal lines; one colour per student."""
    import matplotlib.pyplot as plt

    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    p = study["profile"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (student, sweep) in enumerate(sweep_points(study, attack).items()):
        color, points = plt.get_cmap("tab10")(i), sweep["points"]
        g = [pt["gamma"] for pt in points]
        ax.errorbar(g, [pt["gap_rel"][0] for pt in points], [pt["gap_rel"][1] for pt in points], marker="o",
                    color=color, capsize=2, label=student)
        for what, marker, fill in (("avg", "o", True), ("worst", "v", False)):
            ax2.errorbar(g, [pt[what][0] for pt in points], [pt[what][1] for pt in points], marker=marker,
                         color=color, mfc=color if fill else "none", capsize=2,
                         label=f"{student} {'average' if fill else 'worst class'}")
        if sweep["kd"]:
            ax.axhline(sweep["kd"]["gap_rel"][0], ls="--", color=color, lw=1)
            ax2.axhline(sweep["kd"]["avg"][0], ls="--", color=color, lw=1)
            ax2.axhline(sweep["kd"]["worst"][0], ls=":", color=color, lw=1)
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xlabel("γ (per-sample alignment weight, log scale)")
    ax.set(ylabel="‖∇S − ∇T‖₂ / ‖∇T‖₂ (test)", title="gradient gap vs γ (dashed: KD)")
    ax2.set(ylabel=f"{attack} accuracy (%)", title=f"{attack} vs γ (KD: dashed avg, dotted worst)")
    ax.legend(fontsize=8)
    ax2.legend(fontsize=7)
    fig.suptitle(f"KDIGA γ sweep, teacher {p.teacher}\n{caption(p, study['sweep'])}", fontsize=9)
    fig.tight_layout()
    return fig


def sweep_glue(study: dict, attack: str | None = None) -> dict[str, float]:
    """The sweep's numbers for the book, first student: ``kdiga_sweep_<gamma>_{gap_rel,avg,worst}``
    (gamma as in ``label_key``, e.g. 0.00035 -> 0_00035)."""
    attack = attack or study.get("attack") or headline_attack(study["attacks"])
    points = next(iter(sweep_points(study, attack).values()), {"points": []})["points"]
    out = {}
    for pt in points:
        stem = "kdiga_sweep_" + label_key(f"{pt['gamma']:g}")
        out[f"{stem}_gap_rel"] = round(pt["gap_rel"][0], 4)
        out[f"{stem}_{attack}_avg"] = round(pt["avg"][0], 2)
        out[f"{stem}_{attack}_worst"] = round(pt["worst"][0], 2)
    return out
