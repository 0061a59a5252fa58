"""One module per notebook: ``fairard.studies.<notebook>`` holds that notebook's study.

Each study module has the same four entry points:

- ``validate(...)``: every parameter of the notebook at once (a ``Setup``, or a ``Checked`` with the
  notebook's own values); the notebook's parameters are its keyword arguments, which the CLI turns into
  options (``python -m fairard plan|run STUDY --help``);
- ``plan(params) -> list[Run]``: the runs the study needs (``fairard.runs.Run``; teachers as needs);
- ``collect(params)``: what the notebook draws, read from the store (it computes nothing and says which
  runs are missing);
- ``study(params, *, executor="local", jobs=None, gpus=None, jobs_per_gpu=1, slurm=None)``: compute the
  pending runs with an executor (``fairard.executors``), then ``collect``.

The weighting explorer replays one recorded run (``recorded_run``) and is not a grid of runs.
"""
from __future__ import annotations

import importlib

from ..executors import compute
from ..runs import Run, Study, collect_study, missing_error, student_run

STUDIES = ("main_results", "inheritance", "capacity_gap", "ablations", "kdiga", "aa_variants")


def study_module(name: str):
    """The module of study ``name``; the error lists the valid names."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; valid: {', '.join(STUDIES)}")
    return importlib.import_module(f"{__name__}.{name}")


def grid_study(setup, runs, name: str, progress, executor: dict) -> Study:
    """Compute ``runs`` (teacher evaluations and student runs, as ``fairard.runs.study_runs`` lists them),
    then read them back as a ``Study``."""
    progress = getattr(setup, "progress", True) if progress is None else progress
    executed, computed, seconds = compute(runs, progress=progress, **executor)
    return collect_study(setup, runs, name, computed, seconds, executed)


def arm_runs(p, arms, attacks) -> list[Run]:
    """One run per distinct config of ``arms`` (dicts with ``label`` and ``cfg``): arms that share a config
    (e.g. an ablation's baseline) share its run."""
    return list({arm["cfg"].key(): student_run(p, arm["cfg"], attacks) for arm in arms}.values())


def labelled_results(p, arms, attacks, name: str) -> tuple[list[dict], list[dict]]:
    """(results, skipped) of ``arms``, read from the store: every result relabelled ``method = arm label``
    (the registered name kept as ``run_method``) so ``tables.summarize_runs`` groups by arm; an arm whose
    run the trainer refused (a difficulty measure the method does not record) is skipped with the reason."""
    results, skipped, missing = [], [], []
    for arm in arms:
        run = student_run(p, arm["cfg"], attacks)
        got = run.load()
        extra = {k: v for k, v in arm.items() if k not in ("cfg", "label")}
        if got is not None:
            results.append({**got, "from_cache": True, "run_method": got["method"], "method": arm["label"], **extra})
        elif (run.failure() or {}).get("refused"):
            skipped.append({"label": arm["label"], **extra, "reason": run.failure()["error"]})
        else:
            missing.append(run)
    if missing:
        raise missing_error(list({r.id: r for r in missing}.values()), name)
    return results, skipped
