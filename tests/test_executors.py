"""Executors (fairard.executors): workers sharing one store, a killed worker's run taken over, SLURM through
submitit's local cluster; a smoke plan on synthetic data (teacher, ARD, Fair-ARD, 3 student epochs)."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from fairard import executors, profiles
from fairard.studies import main_results


def setup():
    return profiles.validate("smoke", methods=["ard", "fair-ard"], headline=["ard"], attacks=["clean", "pgd20"],
                             overrides={"eval_per_class": 2, "student_epochs": 3}, progress=False)


def workers(store, n, *, timeout=60.0):
    """Start ``n`` ``python -m fairard worker`` processes on ``store`` (one thread each, as a pool gives them)."""
    env = {**os.environ, "FAIRARD_RESULTS": str(store), "FAIRARD_CLAIM_TIMEOUT": str(timeout),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return [subprocess.Popen([sys.executable, "-m", "fairard", "worker", "--store", str(store), "--threads", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(n)]


def submit(store, monkeypatch):
    monkeypatch.setenv("FAIRARD_RESULTS", str(store))
    plan = main_results.plan(setup())
    executors.submit(plan)
    return plan


def per_class(store, monkeypatch) -> dict:
    monkeypatch.setenv("FAIRARD_RESULTS", str(store))
    study = main_results.collect(setup())
    out = {r["method"]: {a: s["per_class"] for a, s in r["evaluation"]["attacks"].items()} for r in study.results}
    out["teacher"] = {a: s["per_class"] for a, s in study.teacher["evaluation"]["attacks"].items()}
    return out


def final_weights(store, monkeypatch) -> dict:
    monkeypatch.setenv("FAIRARD_RESULTS", str(store))
    return {r.config.method: torch.load(r.folder() / "final.pt", weights_only=True)
            for r in main_results.plan(setup()) if r.kind == "student"}


@pytest.fixture(scope="module")
def sequential(synthetic_root, tmp_path_factory):
    """The plan computed by one worker: the reference."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FAIRARD_DATA", str(synthetic_root))
    store = tmp_path_factory.mktemp("sequential")
    submit(store, mp)
    (proc,) = workers(store, 1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    yield store
    mp.undo()


def test_two_workers_compute_every_run_once_with_the_sequential_results(sequential, tmp_path, monkeypatch):
    store = tmp_path / "two"
    plan = submit(store, monkeypatch)
    procs = workers(store, 2)
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    lines = [line for out, _ in outs for line in out.splitlines()]
    done = sorted(re.sub(r"\s+", " ", line.split(":")[0]).strip() for line in lines)
    assert done == sorted(["teacher pgd_at resnet8", "teacher evaluation resnet8", "ard resnet8 seed 0",
                           "fair-ard resnet8 seed 0"])                 # each run by exactly one worker
    assert all(out for out, _ in outs), "one worker did nothing: the runs were not shared"
    for run in plan:
        if run.kind == "student":
            assert [r["epoch"] for r in __import__("fairard.store").store.read_log(run.folder())] == [0, 1, 2]
    assert not list((store / "queue").glob("*.json")) and not list(store.glob("**/claim.json"))
    assert per_class(store, monkeypatch) == per_class(sequential, monkeypatch)


def test_a_killed_workers_run_is_taken_over_and_ends_with_the_same_weights(sequential, tmp_path, monkeypatch):
    store = tmp_path / "killed"
    shutil.copytree(sequential / "teachers", store / "teachers")      # the teacher is not what this is about
    plan = submit(store, monkeypatch)
    students = [r for r in plan if r.kind == "student"]
    (first,) = workers(store, 1, timeout=3)
    deadline = time.time() + 300
    victim = None
    while victim is None and time.time() < deadline and first.poll() is None:
        for run in students:
            log = run.folder() / "log.jsonl"
            if log.exists() and log.read_text().count("\n") >= 1 and not (run.folder() / "final.pt").exists():
                victim = run
        time.sleep(0.05)
    assert victim is not None, "the worker finished before it could be killed"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (victim.folder() / "claim.json").exists()                  # the dead worker's claim stays behind
    (second,) = workers(store, 1, timeout=3)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    assert f"taking over {victim.folder()}" in err
    assert [r["epoch"] for r in __import__("fairard.store").store.read_log(victim.folder())] == [0, 1, 2]
    mine, reference = final_weights(store, monkeypatch), final_weights(sequential, monkeypatch)
    for method in mine:
        assert mine[method].keys() == reference[method].keys()
        assert all(torch.equal(mine[method][k], reference[method][k]) for k in mine[method]), method


def test_slurm_executor_on_submitits_local_cluster_runs_a_smoke_plan(sequential, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    store = tmp_path / "slurm"
    shutil.copytree(sequential / "teachers", store / "teachers")
    monkeypatch.setenv("FAIRARD_RESULTS", str(store))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    executed = executors.execute_runs(main_results.plan(setup()), executor="slurm",
                                      slurm={"cluster": "local", "tasks": 2, "time_min": 10})
    assert len(executed) == 3                                          # teacher evaluation + 2 students
    assert list((store / "slurm").glob("*_log.out"))                   # submitit's job logs
    assert per_class(store, monkeypatch) == per_class(sequential, monkeypatch)


def test_eta_counts_each_kind_of_run_at_its_own_pace(monkeypatch):
    """A 600 s teacher, then students of 30 s and 20 s: the ETA of the three students left is 75 s, not
    the (600 + 50) / 3 * 3 = 650 s of one mean over both kinds; a cached run's read adds no time."""
    clock = iter([0.0, 600.0, 630.0, 640.0, 660.0, 690.0, 720.0, 750.0])
    monkeypatch.setattr(executors.time, "perf_counter", lambda: next(clock))
    eta = executors.Eta({"T": "teacher", **{f"s{i}": "student" for i in range(5)}, "cached": "student"})
    assert str(eta) == ""                                   # nothing computed yet: no guess
    eta.done("T", True)                                     # 600 s
    assert str(eta) == "; ETA 60 min"                       # 6 students at the teacher's pace until one finishes
    eta.done("s0", True)                                    # 30 s
    eta.done("cached", False)                               # read from the store: 10 s, not a student's pace
    eta.done("s1", True)                                    # 20 s after the cached one
    assert str(eta) == "; ETA 75 s"                         # three students left at 25 s each
    for k in (2, 3, 4):
        eta.done(f"s{k}", True)
    assert str(eta) == ""                                   # nothing left
