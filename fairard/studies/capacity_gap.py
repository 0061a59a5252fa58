"""capacity_gap.ipynb: students of growing size distilled from one or more teachers; how much of the
teacher's (worst-class) robustness survives as the capacity gap grows."""
from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np

from ..models import build_model
from ..profiles import Setup, validate as validate_setup
from ..runs import Run, Study, collect_study, study_runs
from ..tables import class_accuracy, md_table, na_format, spearman
from . import grid_study


def validate(profile: str = "quick", methods=("ard",), seeds=(0,), ladder=None, teacher_ladder=None,
             attack: str = "pgd20", attacks=None, dataset: str = "cifar10", device: str = "auto", results_dir=None,
             overrides=None, progress: bool = True) -> Setup:
    """Every parameter of capacity_gap.ipynb in one call: ``ladder`` (students, small to large; None: the
    profile's), ``teacher_ladder`` (None: the profile's teacher alone), ``attack`` among ``attacks``."""
    return validate_setup(profile, dataset=dataset, methods=methods, attacks=attacks, seeds=seeds, ladder=ladder,
                          teacher_ladder=teacher_ladder, focus=attack, device=device, results_dir=results_dir,
                          overrides=overrides, progress=progress)


def plan(setup: Setup) -> list[Run]:
    """Each student of ``setup.ladder`` distilled (``setup.methods``, ``setup.seeds``) from each teacher of
    ``setup.teacher_ladder`` (default: the profile's teacher alone)."""
    grid = []
    for t in setup.teacher_ladder or (setup.teacher,):
        prof = setup if t == setup.teacher else dataclasses.replace(setup, teacher=t, teacher_kwargs={})
        grid += [(prof, m, st, s) for st in setup.ladder for m in setup.methods for s in setup.seeds]
    return study_runs(setup, grid)


def collect(setup: Setup) -> Study:
    """The study's results and teacher evaluation(s), read from the store (nothing is computed)."""
    return collect_study(setup, plan(setup), "capacity_gap")


def study(setup: Setup, *, progress: bool | None = None, **executor) -> Study:
    """``plan``, compute what the store lacks, then ``collect``; the keywords after ``progress`` choose who
    computes the pending runs (``fairard.executors.execute_runs``: executor, jobs, gpus, jobs_per_gpu, slurm)."""
    return grid_study(setup, plan(setup), "capacity_gap", progress, executor)


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
             f"{100 * r['mean']:.1f}", f"{100 * r['worst']:.1f}", na_format(r["nsd"], "{:.3f}"),
             f"{100 * r['teacher_worst']:.1f}", na_format(r["kept_mean"]), na_format(r["kept_worst"]), na_format(r["spearman"])]
            for r in rows]
    return md_table(["teacher", "method", "student", "params", "gap (teacher/student params)", "seeds", "mean %",
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
