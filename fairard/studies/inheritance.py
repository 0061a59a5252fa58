"""inheritance.ipynb: do students inherit the teacher's class-wise robustness (ranking and fairness)?"""
from __future__ import annotations

import numpy as np

from ..profiles import Setup, validate as validate_setup
from ..runs import Run, Study, collect_study, study_runs
from ..tables import class_accuracy, md_table, na_format, pearson, spearman
from . import grid_study


def validate(profile: str = "quick", methods=("ard", "iad", "rslad", "mtard", "kdiga"), seeds=(0,),
             attack: str = "pgd20", attacks=None, students=None, dataset: str = "cifar10", device: str = "auto",
             results_dir=None, overrides=None, progress: bool = True) -> Setup:
    """Every parameter of inheritance.ipynb in one call; ``attack`` (the class-wise comparison's) must be
    among the evaluated ``attacks``."""
    return validate_setup(profile, dataset=dataset, methods=methods, attacks=attacks, seeds=seeds, students=students,
                          focus=attack, device=device, results_dir=results_dir, overrides=overrides,
                          progress=progress)


def plan(setup: Setup) -> list[Run]:
    """The teacher and every (method, student, seed) of ``setup``."""
    return study_runs(setup, [(setup, m, st, s) for st in setup.students for m in setup.methods for s in setup.seeds])


def collect(setup: Setup) -> Study:
    """The study's results and teacher evaluation(s), read from the store (nothing is computed)."""
    return collect_study(setup, plan(setup), "inheritance")


def study(setup: Setup, *, progress: bool | None = None, **executor) -> Study:
    """``plan``, compute what the store lacks, then ``collect``; the keywords after ``progress`` choose who
    computes the pending runs (``fairard.executors.execute_runs``: executor, jobs, gpus, jobs_per_gpu, slurm)."""
    return grid_study(setup, plan(setup), "inheritance", progress, executor)


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


def inheritance_markdown(rows) -> str:
    body = [[r["method"], r["student"], ",".join(map(str, r["seeds"])), na_format(100 * r["mean"], "{:.1f}"),
             f"{100 * r['worst']:.1f} ({r['worst_class']})", na_format(r["nsd"], "{:.3f}"), na_format(r["pearson"]),
             na_format(r["spearman"])] for r in rows]
    return md_table(["model", "arch", "seeds", "mean %", "worst % (class)", "NSD", "Pearson r vs teacher",
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
