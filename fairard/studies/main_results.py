"""main_results.ipynb: every method on every student; the headline Fair-* pairs on every seed."""
from __future__ import annotations

from ..profiles import MAIN_METHODS, Setup, validate as validate_setup
from ..runs import Run, Study, collect_study, study_runs
from . import grid_study


def validate(profile: str = "auto", methods=MAIN_METHODS, headline=None, seeds=None, other_seeds=None,
             attacks=None, students=None, dataset: str = "cifar10", device: str = "auto", results_dir=None,
             overrides=None, progress: bool = True) -> Setup:
    """Every parameter of main_results.ipynb in one call (``fairard.profiles.validate``). ``headline`` None:
    ard and rslad, each where both versions are among the methods; a headline method given explicitly must
    have both versions among the methods. The default profile "auto" is ``gpu`` where a CUDA GPU is visible,
    else ``quick`` (``profiles.default_profile``)."""
    return validate_setup(profile, dataset=dataset, methods=methods, attacks=attacks, seeds=seeds,
                          other_seeds=other_seeds, headline=headline, students=students, device=device,
                          results_dir=results_dir, overrides=overrides, progress=progress)


def plan(setup: Setup) -> list[Run]:
    """Every method of ``setup.methods`` on every student: the headline pairs on ``setup.seeds``, every
    other method on ``setup.other_seeds`` (the CPU budget's compromise, stated in the notebook)."""
    paired = {m for pair in setup.headline_pairs for m in pair}
    return study_runs(setup, [(setup, m, st, s) for st in setup.students for m in setup.methods
                              for s in (setup.seeds if m in paired else setup.other_seeds)])


def collect(setup: Setup) -> Study:
    """The study's results and teacher evaluation(s), read from the store (nothing is computed)."""
    return collect_study(setup, plan(setup), "main_results")


def study(setup: Setup, *, progress: bool | None = None, **executor) -> Study:
    """``plan``, compute what the store lacks, then ``collect``; the keywords after ``progress`` choose who
    computes the pending runs (``fairard.executors.execute_runs``: executor, jobs, gpus, jobs_per_gpu, slurm)."""
    return grid_study(setup, plan(setup), "main_results", progress, executor)
