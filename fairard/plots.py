"""Matplotlib figures for the notebooks: per-class robustness of teacher and students, paired seeds of
the headline comparison, a mean ± std dot plot, class-weight trajectories, teacher ↔ student scatter and
the capacity-gap curves.

Every function takes results as ``fairard.runs.run`` returns them, draws one figure with pyplot (so a
notebook's inline backend shows it once, at the end of the cell) and returns it.  ``caption`` is printed
under the axes: pass ``Study.caption(...)`` so every figure carries profile, data, seeds and commit.
"""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np

from . import tables as T

__all__ = ["per_class_bars", "per_class_heatmap", "paired_seeds", "summary_figure",
           "class_weight_trajectories", "teacher_student_scatter", "per_class_lines", "capacity_curves"]

_TEACHER_COLOR = "0.25"
_ATTACK_TITLES = {"clean": "clean", "fgsm": "FGSM", "pgd20": "PGD-20", "cw20": "CW∞ (PGD-20)", "aa": "AutoAttack",
               "aa10": "AutoAttack, 10 steps"}


def _finish(fig, title: str, caption: str):
    fig.suptitle(title, fontsize=11)
    if caption:
        fig.text(0.5, -0.01, "\n".join(textwrap.wrap(caption, 130)), ha="center", va="top", fontsize=7, color="0.3")
    fig.tight_layout()
    return fig


def _class_names(results, teacher):
    return (teacher or results[0])["evaluation"]["class_names"]


def _groups(results, teacher, attack, methods=None):
    """[(label, mean, std, seeds)] with the teacher first, methods in the order asked (or met)."""
    acc = T.class_accuracy(list(results), attack)
    out = []
    if teacher is not None:
        t = np.array(teacher["evaluation"]["attacks"][attack]["per_class"], dtype=float)
        out.append((f"teacher {teacher['student']}", t, np.zeros_like(t), [0]))
    keys = list(acc) if methods is None else [k for m in methods for k in acc if k[0] == m]
    students = {k[1] for k in keys}
    for k in keys:
        g = acc[k]
        label = k[0] if len(students) == 1 else f"{k[0]} ({k[1]})"
        out.append((label, g["mean"], g["std"], g["seeds"]))
    return out


def per_class_bars(results, teacher, attack: str = "pgd20", *, methods=None, caption: str = ""):
    """Grouped bars: per-class accuracy under ``attack`` of the teacher and each method (mean over seeds,
    error bars = std over seeds where there are several)."""
    names = _class_names(results, teacher)
    groups = _groups(results, teacher, attack, methods)
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(groups)
    x = np.arange(len(names))
    cmap = plt.get_cmap("tab10")
    for i, (label, mean, std, seeds) in enumerate(groups):
        color = _TEACHER_COLOR if label.startswith("teacher") else cmap(i % 10)
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, 100 * mean, width, label=label, color=color,
               yerr=100 * std if len(seeds) > 1 else None, capsize=2, error_kw={"lw": 0.8})
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel(f"{attack} accuracy (%)")
    ax.legend(fontsize=8, ncol=min(len(groups), 5))
    ax.grid(axis="y", alpha=0.3)
    return _finish(fig, f"Per-class {attack} robustness: teacher vs students", caption)


def per_class_heatmap(results, teacher, attack: str = "pgd20", *, methods=None, caption: str = ""):
    """Methods × classes heat map of accuracy under ``attack`` (mean over seeds), teacher on top; the
    lowest cell of each row is boxed (the class lowest on the seed mean; the tables' worst class is each
    run's own, averaged over seeds, and may name other classes when seeds disagree)."""
    names = _class_names(results, teacher)
    groups = _groups(results, teacher, attack, methods)
    mat = np.array([100 * g[1] for g in groups])
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(groups) + 1.6))
    im = ax.imshow(mat, cmap="viridis", aspect="auto")
    for i, row in enumerate(mat):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="w" if v < mat.max() / 2 else "k")
        j = int(np.nanargmin(row))
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(groups)), [g[0] for g in groups])
    fig.colorbar(im, ax=ax, label=f"{attack} accuracy (%)")
    return _finish(fig, f"Per-class {attack} accuracy, mean over seeds (red box: lowest seed-mean class)", caption)


def paired_seeds(results, pairs, attacks=("pgd20", "aa"), *, what: str = "worst_class_accuracy",
                 student: str | None = None, caption: str = ""):
    """The headline comparison, seed by seed, for one student (default: the first met): for each
    (base, fair) pair and attack, one line per seed from the base method's value to the Fair-* version's,
    and the means as black bars."""
    student = student or results[0]["student"]
    results = [r for r in results if r["student"] == student]
    attacks = [a for a in attacks if all(a in r["evaluation"]["attacks"] for r in results)]
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.5 * len(attacks), 3.6), squeeze=False)
    for ax, a in zip(axes[0], attacks):
        for i, (base, fair) in enumerate(pairs):
            by = {(r["method"], r["seed"]): 100 * T.metric(r, a, what) for r in results}
            seeds = sorted({s for m, s in by if m == base} & {s for m, s in by if m == fair})
            for s in seeds:
                ax.plot([2 * i, 2 * i + 1], [by[(base, s)], by[(fair, s)]], "o-", color=plt.get_cmap("tab10")(s % 10),
                        alpha=0.8, label=f"seed {s}" if i == 0 else None)
            for j, m in enumerate((base, fair)):
                if seeds:
                    ax.hlines(np.mean([by[(m, s)] for s in seeds]), 2 * i + j - 0.2, 2 * i + j + 0.2, color="k", lw=2.5)
        ax.set_xticks(range(2 * len(pairs)), [m for pair in pairs for m in pair], rotation=20)
        ax.set_ylabel(f"{what.replace('_', ' ')} (%)")
        ax.set_title(a, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _finish(fig, f"Base method vs its Fair-* version, per seed ({student}; black: mean)", caption)


def summary_figure(rows, attacks, *, caption: str = ""):
    """``summarize_runs`` rows as a dot plot, one panel per attack: each method's average accuracy
    (filled) and worst-class accuracy (hollow), mean over seeds with the seed std as error bars."""
    attacks = list(attacks)
    labels = [f"{r['method']} ({r['student']})" for r in rows]
    y = np.arange(len(rows))[::-1]
    fig, axes = plt.subplots(1, len(attacks), figsize=(2.1 + 2.3 * len(attacks), 0.32 * len(rows) + 1.6),
                             sharey=True, squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        for what, marker, fill, shift in (("accuracy", "o", True, 0.12), ("worst_class_accuracy", "v", False, -0.12)):
            mean = np.array([100 * r[f"{attack}/{what}"][0] for r in rows])
            std = np.array([100 * r[f"{attack}/{what}"][1] for r in rows])
            ax.errorbar(mean, y + shift, xerr=std, fmt=marker, color="C0", mfc="C0" if fill else "none",
                        ms=5, capsize=2, lw=0.8, label="average" if fill else "worst class")
        ax.set_title(_ATTACK_TITLES.get(attack, attack), fontsize=9)
        ax.set_xlabel("accuracy (%)", fontsize=8)
        ax.set_xlim(left=-2)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(y, labels)
    axes[0][0].legend(fontsize=7, loc="best")
    return _finish(fig, "Average (filled) and worst-class (hollow) accuracy, mean ± std over seeds", caption)


def class_weight_trajectories(result: dict, *, caption: str = ""):
    """Fair-* class weights used in each epoch (left) and the training κ per class they came from (right)."""
    names = result["evaluation"]["class_names"]
    weights = np.array([w for w in result.get("class_weights_history") or [] if w is not None], dtype=float)
    kappa = np.array([k for k in result.get("kappa_history") or [] if k is not None], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    cmap = plt.get_cmap("tab10")
    for ax, data, label in ((axes[0], weights, "class weight (used in the epoch)"),
                            (axes[1], kappa, "training κ (mean PGD steps still correct)")):
        if data.size == 0:
            ax.text(0.5, 0.5, "not recorded for this run", ha="center", va="center", transform=ax.transAxes)
        else:
            for k in range(data.shape[1]):
                ax.plot(np.arange(1, len(data) + 1), data[:, k], "o-", ms=3, color=cmap(k % 10), label=names[k])
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    return _finish(fig, f"{result['method']} ({result['student']}, seed {result['seed']}): class weights over epochs",
                   caption)


def teacher_student_scatter(results, teacher, attack: str = "pgd20", *, methods=None, caption: str = ""):
    """Per-class accuracy of each student (y) against the teacher's (x), with Pearson r / Spearman ρ in the
    legend and the diagonal (a student as robust as the teacher on every class)."""
    t = 100 * np.array(teacher["evaluation"]["attacks"][attack]["per_class"], dtype=float)
    groups = _groups(results, None, attack, methods)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, (label, mean, _, _) in enumerate(groups):
        r, rho = T.pearson(t, mean), T.spearman(t, mean)
        ax.scatter(t, 100 * mean, color=plt.get_cmap("tab10")(i % 10), s=22,
                   label=f"{label}: r={r:.2f}, ρ={rho:.2f}" if r == r else f"{label}: r=n/a")
    hi = max(1.0, float(np.nanmax(t)), max(float(np.nanmax(100 * g[1])) for g in groups)) * 1.05
    ax.plot([0, hi], [0, hi], "--", color="0.6", lw=1)
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel(f"teacher {attack} accuracy per class (%)")
    ax.set_ylabel(f"student {attack} accuracy per class (%)")
    ax.legend(fontsize=7)
    return _finish(fig, "Class-wise robustness: student vs teacher", caption)


def per_class_lines(results, teacher, attack: str = "pgd20", *, methods=None, caption: str = ""):
    """Per-class accuracy as lines, classes sorted by the teacher's accuracy: a student that inherits the
    teacher's fairness runs parallel to the teacher's line."""
    names = _class_names(results, teacher)
    groups = _groups(results, teacher, attack, methods)
    order = np.argsort(groups[0][1])
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, (label, mean, std, seeds) in enumerate(groups):
        teacher_line = label.startswith("teacher")
        ax.plot(range(len(names)), 100 * mean[order], "o-", lw=2.5 if teacher_line else 1.2,
                color=_TEACHER_COLOR if teacher_line else plt.get_cmap("tab10")(i % 10), label=label)
        if len(seeds) > 1:
            ax.fill_between(range(len(names)), 100 * (mean - std)[order], 100 * (mean + std)[order], alpha=0.15)
    ax.set_xticks(range(len(names)), [names[k] for k in order], rotation=30, ha="right")
    ax.set_ylabel(f"{attack} accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, "Class-wise robustness, classes sorted by the teacher's", caption)


def capacity_curves(rows, *, caption: str = ""):
    """Worst-class accuracy (left) and NSD (right) against the student's parameter count (log scale), one
    line per (teacher, method); the teacher's value as a dashed line of the same colour."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("tab10")
    keys = list(dict.fromkeys((r["teacher"], r["method"]) for r in rows))
    for i, key in enumerate(keys):
        mine = sorted((r for r in rows if (r["teacher"], r["method"]) == key), key=lambda r: r["params"])
        x = [r["params"] for r in mine]
        for ax, what, teacher_what, scale in ((axes[0], "worst", "teacher_worst", 100), (axes[1], "nsd", "teacher_nsd", 1)):
            ax.plot(x, [scale * r[what] for r in mine], "o-", color=cmap(i % 10), label=f"{key[1]} ← {key[0]}")
            ax.axhline(scale * mine[0][teacher_what], ls="--", color=cmap(i % 10), lw=1, alpha=0.7)
            for r in mine:
                ax.annotate(r["student"], (r["params"], scale * r[what]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    params = [r["params"] for r in rows] or [1]
    for ax, label in ((axes[0], "worst-class accuracy (%)"), (axes[1], "NSD (lower = fairer)")):
        ax.set_xscale("log")
        ax.set_xlim(min(params) / 1.5, max(params) * 1.5)  # explicit: an all-nan panel has no data limits
        ax.set_xlabel("student parameters")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="method ← teacher (dashed: teacher)", title_fontsize=7)
    return _finish(fig, "Capacity gap: how much of the teacher's robust fairness survives", caption)
