"""Executors: who computes a study's pending runs, from one process to a SLURM cluster.

- ``local`` with one worker (the default on a CPU, and on one GPU with ``jobs_per_gpu=1``): this process,
  run after run (``fairard.runs.execute``), with tqdm bars and a line per epoch.
- ``local`` with several: ``--jobs N`` CPU workers (the cores split between them: ``N`` processes of
  ``cores // N`` threads), or ``--gpus 0,1 --jobs-per-gpu K`` (``K`` workers on each GPU; several runs
  share one GPU, which a batch-128 run leaves mostly idle).
- ``slurm``: one array job of workers through ``submitit`` (``pip install -e .[cluster]``); its
  ``cluster="local"`` runs the same code path on this machine.

Every multi-worker executor shares one protocol through the store (``fairard.store``): the pending runs are
written to ``queue/<run id>.json``; each worker (``work``; by hand: ``python -m fairard worker --store DIR``)
takes a run whose needs are finished and that nobody holds, claims it, computes it, and goes on until the
queue is empty.  A student never starts before its teacher is finished, a run is computed once however many
workers there are, and a killed worker's run is taken over when its claim goes stale and resumes from its
checkpoint.  The submitting process watches the store: one line per finished run (and per epoch of the runs
in progress), done / total and an ETA, on stderr.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from .runs import POLL_S, Run, epoch_line, execute, read_log_quietly, report_line
from .store import cache_snapshot, claim_holder, read_json, results_dir, write_json

EXECUTORS = ("local", "slurm")


# ---- the queue ---------------------------------------------------------------------------------------------
def with_needs(runs) -> list[Run]:
    """``runs`` and everything they need, each once, needs first."""
    out: dict[str, Run] = {}

    def add(run):
        for need in run.needs:
            add(need)
        out.setdefault(run.id, run)

    for run in runs:
        add(run)
    return list(out.values())


def queue_dir() -> Path:
    return results_dir() / "queue"


def submit(runs) -> list[Run]:
    """Write every unfinished run (needs included) to the queue; returns them.  A failed attempt's marker
    is cleared: submitting again retries it."""
    pending = [r for r in with_needs(runs) if r.load() is None]
    for run in pending:
        (queue_dir() / f"{run.id}.failed.json").unlink(missing_ok=True)
        if not (queue_dir() / f"{run.id}.json").exists():
            write_json(queue_dir() / f"{run.id}.json", run.to_json())
    return pending


def queued() -> list[tuple[Path, Run]]:
    out = []
    for path in sorted(queue_dir().glob("*.json")):
        if path.name.endswith(".failed.json"):
            continue
        entry = read_json(path, ("kind", "profile", "config", "needs"))
        if entry is not None:
            out.append((path, Run.from_json(entry)))
    return out


def _fail(path: Path, run: Run, error: str) -> None:
    write_json(path.with_name(path.name.replace(".json", ".failed.json")), {"name": run.name, "error": error})
    path.unlink(missing_ok=True)


def work(store=None, *, device: str | None = None, progress: bool = False, quiet: bool = False,
         poll: float = POLL_S) -> int:
    """A worker: claim and compute queued runs until the queue is empty; returns how many failed.

    A run waits until its needs are finished; one that another worker holds is left to it (and taken over
    if that worker's claim goes stale).  ``device`` overrides the profile's (e.g. "cuda" for a worker
    pinned to one GPU by ``CUDA_VISIBLE_DEVICES``)."""
    if store is not None:
        os.environ["FAIRARD_RESULTS"] = str(Path(store).expanduser().absolute())
    failed = 0
    while True:
        entries = queued()
        if not entries:
            return failed
        progressed = False
        for path, run in entries:
            run = run.on(device) if device else run
            if run.load() is not None:
                path.unlink(missing_ok=True)
                continue
            broken = [n for n in run.needs if n.load() is None and (n.failure() or _failed_in_queue(n))]
            if broken:
                _fail(path, run, f"needs {broken[0].name}, which failed")
                failed += 1
                continue
            if not all(n.done() for n in run.needs):
                continue
            try:
                r = execute(run, progress=progress, wait=False, epoch_lines=not quiet)
            except Exception as err:  # recorded in the run's failed.json by execute; the worker goes on
                _fail(path, run, f"{type(err).__name__}: {err}")
                print(f"fairard worker {os.getpid()}: {run.name} failed: {type(err).__name__}: {err}",
                      file=sys.stderr, flush=True)
                failed += 1
                progressed = True
                continue
            if r is None:  # another worker holds it
                continue
            path.unlink(missing_ok=True)
            if not quiet:
                print(report_line(run, r), flush=True)
            progressed = True
        if not progressed:
            time.sleep(poll)


def _failed_in_queue(run: Run) -> bool:
    return (queue_dir() / f"{run.id}.failed.json").exists()


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3.5 h'."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class Eta:
    """Time left, per kind of run: the mean interval between finishes of the computed runs of each kind
    (a teacher, a student) times the runs of that kind left, so that a long teacher does not inflate
    the students' estimate. A kind with no computed run yet borrows the mean of all of them."""

    def __init__(self, kinds: dict[str, str]):
        self.kinds = dict(kinds)                  # run id -> "teacher" | "student", for the runs to compute
        self.left = dict(self.kinds)
        self.seconds: dict[str, list[float]] = {}
        self.last = time.perf_counter()

    def done(self, run_id: str, computed: bool) -> None:
        """``run_id`` finished now; ``computed``: it was trained or evaluated (not read from the cache)."""
        now, kind = time.perf_counter(), self.left.pop(run_id, None)
        if computed and kind is not None:
            self.seconds.setdefault(kind, []).append(now - self.last)
        self.last = now

    def __str__(self) -> str:
        every = [s for v in self.seconds.values() for s in v]
        if not every or not self.left:
            return ""
        mean = {k: sum(v) / len(v) for k, v in self.seconds.items()}
        left = sum(mean.get(kind, sum(every) / len(every)) for kind in self.left.values())
        return f"; ETA {duration(left)}"


def _kind(run) -> str:
    return "student" if run.kind == "student" else "teacher"


# ---- watching the store --------------------------------------------------------------------------------
class Monitor:
    """Prints, on stderr, one line per run that finishes, one per epoch of the runs in progress, and the
    overall count with an ETA (from the mean time of the runs computed so far)."""

    def __init__(self, runs, stream=sys.stderr):
        self.runs, self.stream = list(runs), stream
        self.total = len(self.runs)
        self.finished: dict[str, bool] = {}     # id -> computed now (False: it was cached)
        self.epochs: dict[str, int] = {}
        self.eta = Eta({run.id: _kind(run) for run in self.runs})

    def poll(self) -> bool:
        """Look at the store once; True when every run is finished or failed."""
        for run in self.runs:
            if run.id in self.finished:
                continue
            result = run.load() if run.done() else None
            failure = None if result is not None else (run.failure() or _queue_failure(run))
            if result is not None or failure is not None:
                self.finished[run.id] = failure is None
                self.eta.done(run.id, failure is None)
                r = None if failure is not None else {**result, "from_cache": False}
                line = report_line(run, r) if failure is None or run.failure() else f"{run.name}: FAILED ({failure['error']})"
                self._say(f"[{len(self.finished)}/{self.total}] {line.strip()}{self.eta}")
                continue
            if run.config is not None:
                try:
                    log = read_log_quietly(run.folder())
                except FileNotFoundError:
                    continue
                for record in log[self.epochs.get(run.id, 0):]:
                    holder = claim_holder(run.folder()) or {}
                    self._say(f"  {run.name}: {epoch_line(record, run.config)} (pid {holder.get('pid', '?')})")
                self.epochs[run.id] = max(self.epochs.get(run.id, 0), len(log))
        return len(self.finished) == self.total

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _queue_failure(run: Run) -> dict | None:
    return read_json(queue_dir() / f"{run.id}.failed.json", ("error",))


# ---- executors -----------------------------------------------------------------------------------------------
def worker_slots(jobs: int | None = None, gpus=None, jobs_per_gpu: int = 1) -> list[dict]:
    """One dict per worker: device, CUDA_VISIBLE_DEVICES (GPU workers) and threads (the CPU's cores split
    between the workers).  ``gpus`` None: every visible GPU, ``jobs_per_gpu`` workers on each; without a GPU,
    ``jobs`` CPU workers (default 1)."""
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if isinstance(jobs_per_gpu, bool) or not isinstance(jobs_per_gpu, int) or jobs_per_gpu < 1:
        raise ValueError(f"jobs_per_gpu must be a positive integer, got {jobs_per_gpu!r}")
    cores = os.cpu_count() or 1
    if isinstance(gpus, str):
        gpus = [g.strip() for g in gpus.split(",") if g.strip()]
    elif gpus is not None:
        gpus = [str(g) for g in (gpus if isinstance(gpus, (list, tuple)) else [gpus])]  # [0, 1] from a notebook
    if gpus is None and torch.cuda.is_available():
        gpus = [str(i) for i in range(torch.cuda.device_count())]
    if gpus:
        visible = torch.cuda.device_count()
        bad = [g for g in gpus if not g.isdigit() or int(g) >= visible]
        if bad:
            raise ValueError(f"gpus {bad} are not visible; valid: {', '.join(map(str, range(visible))) or 'none (no GPU)'}")
        slots = [{"device": "cuda", "gpu": g} for g in gpus for _ in range(jobs_per_gpu)]
    else:
        slots = [{"device": "cpu"} for _ in range(jobs or 1)]
    for slot in slots:
        slot["threads"] = max(1, cores // len(slots))
    return slots


def _check_executor(executor: str) -> None:
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")


def executor_options(executor: str = "local", jobs: int | None = None, gpus=None, jobs_per_gpu: int = 1,
                     slurm: dict | None = None) -> dict:
    """A study's executor keywords (a notebook's parameters), checked before any work starts."""
    _check_executor(executor)
    worker_slots(jobs, gpus, jobs_per_gpu)
    return dict(executor=executor, jobs=jobs, gpus=gpus, jobs_per_gpu=jobs_per_gpu, slurm=slurm)


def execute_runs(runs, *, executor: str = "local", jobs: int | None = None, gpus=None, jobs_per_gpu: int = 1,
                 progress: bool = True, slurm: dict | None = None) -> set[str]:
    """Compute every unfinished run of ``runs`` (needs first) with the chosen executor; returns the ids of
    the runs computed.  Failures other than a trainer's refusal (``fairard.runs.REFUSALS``) raise once the
    other runs are done, naming each failed run."""
    _check_executor(executor)
    slots = worker_slots(jobs, gpus, jobs_per_gpu)
    everything = with_needs(runs)
    pending = [r for r in everything if r.load() is None]
    if executor == "local" and len(slots) == 1:
        _in_process(everything, {r.id for r in pending}, slots[0], progress)
    elif pending:
        cached = sum(r.kind == "student" for r in everything) - sum(r.kind == "student" for r in pending)
        if cached:
            print(f"{cached} run(s) cached", flush=True)
        _slurm(pending, **(slurm or {})) if executor == "slurm" else _pool(pending, slots)
    errors = [f"{r.name}: {f['error']}" for r in pending if r.load() is None
              and not (f := (r.failure() or _queue_failure(r) or {"error": "not computed"})).get("refused")]
    if errors:
        raise RuntimeError(f"{len(errors)} run(s) failed:\n  " + "\n  ".join(errors)
                           + f"\n(details in their failed.json under {results_dir()}; run again to retry)")
    return {r.id for r in pending if r.load() is not None}


def compute(runs, *, progress: bool = True, **options) -> tuple[set[str], list[str], float]:
    """``execute_runs`` plus what a ``Study`` reports: (ids computed, store entries written, seconds)."""
    before, t0 = cache_snapshot(), time.perf_counter()
    executed = execute_runs(runs, progress=progress, **options)
    after = cache_snapshot()
    return executed, sorted(k for k, t in after.items() if before.get(k) != t), time.perf_counter() - t0


def _in_process(everything, pending: set, slot, progress) -> None:
    """This process, run after run; a line per student run (cached ones too) and per computed teacher run,
    with the count and an ETA from the runs computed so far."""
    device = f"cuda:{slot['gpu']}" if "gpu" in slot else None
    eta = Eta({run.id: _kind(run) for run in everything if run.id in pending})
    for k, run in enumerate(everything, 1):
        run = run.on(device) if device else run
        try:
            r = execute(run, progress=progress)
        except Exception:
            if not (run.failure() or {}).get("refused"):
                raise
            r = None
        computed = r is not None and not r["from_cache"]
        eta.done(run.id, computed)
        if run.kind == "student" or run.id in pending:
            print(f"[{k}/{len(everything)}] {report_line(run, r).strip()}{eta if computed else ''}", flush=True)


def _pool(pending, slots) -> None:
    submit(pending)
    procs = []
    for slot in slots:
        env = {**os.environ, "FAIRARD_RESULTS": str(results_dir()), "OMP_NUM_THREADS": str(slot["threads"])}
        if "gpu" in slot:
            env["CUDA_VISIBLE_DEVICES"] = slot["gpu"]
        cmd = [sys.executable, "-m", "fairard", "worker", "--store", str(results_dir()), "--device", slot["device"],
               "--threads", str(slot["threads"]), "--quiet"]  # this process's monitor says what they do
        procs.append(subprocess.Popen(cmd, env=env))
    print(f"fairard: {len(pending)} run(s) to compute by {len(procs)} local worker(s) "
          f"({', '.join(s['device'] + (':' + s['gpu'] if 'gpu' in s else '') for s in slots)}, "
          f"{slots[0]['threads']} thread(s) each)", file=sys.stderr, flush=True)
    monitor = Monitor(pending)
    try:
        while any(p.poll() is None for p in procs):
            monitor.poll()
            time.sleep(1.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
    monitor.poll()


class SlurmWorker:
    """What each task of the SLURM array runs: ``work`` on the store (``jobs_per_gpu`` workers when above 1).
    Preempted or timed out, submitit requeues it (``checkpoint``); its run resumes from its checkpoint once
    the old claim is stale."""

    def __init__(self, store: str, jobs_per_gpu: int = 1, claim_timeout: float | None = None):
        self.store, self.jobs_per_gpu, self.claim_timeout = store, jobs_per_gpu, claim_timeout

    def __call__(self, index: int = 0) -> int:
        os.environ["FAIRARD_RESULTS"] = self.store
        if self.claim_timeout is not None:
            os.environ["FAIRARD_CLAIM_TIMEOUT"] = str(self.claim_timeout)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.jobs_per_gpu == 1:
            return work(self.store, device=device, quiet=True)
        _pool([run for _, run in queued()], [{"device": device, "threads": max(1, (os.cpu_count() or 1) // self.jobs_per_gpu)}
                                           for _ in range(self.jobs_per_gpu)])
        return 0

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmWorker(self.store, self.jobs_per_gpu, self.claim_timeout), *args, **kwargs)


def _slurm(pending, *, tasks: int = 1, partition: str | None = None, time_min: int = 24 * 60, gpus_per_task: int = 1,
           jobs_per_gpu: int = 1, cpus_per_task: int | None = None, cluster: str | None = None, folder=None) -> None:
    try:
        import submitit
    except ImportError:
        raise ValueError("the slurm executor needs submitit: pip install -e '.[cluster]'") from None
    submit(pending)
    ex = submitit.AutoExecutor(folder=str(folder or results_dir() / "slurm"), cluster=cluster)
    params = {"timeout_min": time_min, "nodes": 1, "tasks_per_node": 1}
    if cluster != "local":  # submitit's local cluster has no GPUs or partitions to ask for
        params["gpus_per_node"] = gpus_per_task
        if partition:
            params["slurm_partition"] = partition
        if cpus_per_task:
            params["cpus_per_task"] = cpus_per_task
    ex.update_parameters(**params)
    worker = SlurmWorker(str(results_dir()), jobs_per_gpu, float(os.environ["FAIRARD_CLAIM_TIMEOUT"])
                         if "FAIRARD_CLAIM_TIMEOUT" in os.environ else None)
    jobs = ex.map_array(worker, list(range(tasks)))
    print(f"fairard: {len(pending)} run(s) to compute by a {tasks}-task array job {jobs[0].job_id.split('_')[0]} "
          f"(logs: {ex.folder})", file=sys.stderr, flush=True)
    monitor = Monitor(pending)
    while not all(j.done() for j in jobs):
        monitor.poll()
        time.sleep(2.0)
    monitor.poll()
    for j in jobs:
        if j.exception() is not None:  # the runs it left are reported as failed or not computed by the caller
            print(f"fairard: slurm task {j.job_id} failed: {j.exception()}", file=sys.stderr)
