"""The result store: where runs, evaluations and results live under ``$FAIRARD_RESULTS``, their keys, and
the rules that let many workers share it.

    $FAIRARD_RESULTS/runs/<method>-<student>-s<seed>-<train key>/
        checkpoint.pt, final.pt, log.jsonl, config.json   (training, fairard.train)
        evals/<attack>-<key>.json, evals/eps1-<key>.json   (one attack's per-class evaluation each)
        result-<run key>.json                              (config, evaluation, provenance)
        claim.json                                         (while a worker runs it)
    $FAIRARD_RESULTS/teachers/<method>-<arch>-<train key>/ (a trained teacher, same layout)
    $FAIRARD_RESULTS/teacher-evals/<arch>-<key>/           (a teacher's evaluations and result)
    $FAIRARD_RESULTS/queue/<run id>.json                   (runs submitted to workers, fairard.executors)
    $FAIRARD_RESULTS/.fingerprints.json                    (sha256 of data files and checkpoints, by path+size+mtime)

Keys are content hashes of everything that determines the numbers: a training run's key
(``train_key``) covers its full config and the training-arithmetic version (``TrainConfig.key``), a
fingerprint of the data files it reads and the sha256 of every checkpoint it reads (its teachers), so
other data or an overwritten teacher gives new keys and only the runs that depend on them are redone.
Each attack's evaluation is stored on its own (an added attack evaluates only that attack) under a key
of its budget and the evaluation-code version; the assembled result is keyed by training key plus
evaluation settings (``run_key``).

Every file is written atomically (``fairard.utils``, mode 0644 under the usual umask) and the result
last, so a half-finished run is never read as finished.  A worker holds a ``Claim`` on a run while it
runs it: an exclusive lock file with host, pid and a heartbeat; a claim without heartbeat for
``claim_timeout()`` seconds (or whose process is gone, on the same host) is taken over and the run resumes
from its checkpoint.  A file that cannot be read is reported with its path, moved aside and recomputed
(``read_json``, ``read_log``); nothing else is redone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import torch

from . import data as D
from .train import TrainConfig
from .utils import TEMP_SUFFIX, new_file_mode, quarantine, write_json, write_text


REPO = Path(__file__).resolve().parents[1]


def results_dir() -> Path:
    """``$FAIRARD_RESULTS`` (made absolute), else ``data/results`` of the checkout (the working directory
    outside one): notebooks run from any folder share one cache."""
    env = os.environ.get("FAIRARD_RESULTS")
    if env:
        return Path(env).expanduser().absolute()
    return (REPO if (REPO / "pyproject.toml").exists() else Path.cwd()) / "data" / "results"


def portable_path(path: str | None) -> str | None:
    """A checkpoint path inside the results folder, written relative to it: cache keys then survive
    moving or copying the folder (e.g. results computed on a GPU machine, read back for the book)."""
    if not path:
        return path
    try:
        return "$FAIRARD_RESULTS/" + Path(path).absolute().relative_to(results_dir()).as_posix()
    except ValueError:
        return path


def content_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


# ---- fingerprints: sha256 of a file, computed once per (path, size, mtime) ----------------------------
_SHA256: dict[tuple, str] = {}


def _fingerprint_file() -> Path:
    return results_dir() / ".fingerprints.json"


def file_sha256(path) -> str:
    """The sha256 of a file's bytes, cached by (absolute path, size, mtime) in memory and in the store's
    ``.fingerprints.json``, so a data file or checkpoint is hashed once, not once per run."""
    path = Path(path).expanduser().absolute()
    st = path.stat()
    sig = (str(path), st.st_size, st.st_mtime_ns)
    if sig in _SHA256:
        return _SHA256[sig]
    table = read_json(_fingerprint_file()) or {}
    entry = table.get(str(path))
    if entry and (entry.get("size"), entry.get("mtime_ns")) == sig[1:]:
        _SHA256[sig] = entry["sha256"]
        return entry["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    _SHA256[sig] = digest.hexdigest()
    table = read_json(_fingerprint_file()) or {}  # re-read: another worker may have added entries
    table[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _SHA256[sig]}
    write_json(_fingerprint_file(), table)
    return _SHA256[sig]


def data_fingerprint(dataset: str, root=None) -> str:
    """A hash of the bytes of every file ``fairard.data.load_split`` reads for both splits of ``dataset``
    (downloading it first if it is not there); the folder's name or place does not enter."""
    files = {split: D.source_files(dataset, split, root) for split in D.SPLITS}
    if not all(files.values()):
        for split in D.SPLITS:
            D.load_split(dataset, split, root)  # downloads, or raises DataNotFoundError listing where it looked
        files = {split: D.source_files(dataset, split, root) for split in D.SPLITS}
    return content_hash({split: [file_sha256(f) for f in fs] for split, fs in files.items()})


CHECKPOINTS_READ = ("teacher_checkpoint", "nat_teacher_checkpoint", "init_checkpoint")  # TrainConfig fields


def train_key(cfg: TrainConfig) -> str:
    """The key of a training run: its config (``TrainConfig.key``: every field but device and data root,
    plus the training-arithmetic version) with each checkpoint it reads (teachers, FRL's starting point)
    replaced by its sha256, and the fingerprint of the data.  Raises FileNotFoundError while a checkpoint
    it reads does not exist yet."""
    by_content = dataclasses.replace(cfg, **{role: getattr(cfg, role) and "sha256:" + file_sha256(getattr(cfg, role))
                                             for role in CHECKPOINTS_READ})
    return content_hash({"config": by_content.key(), "data": data_fingerprint(cfg.dataset, cfg.data_root)})


def run_key(cfg: TrainConfig, settings: dict) -> str:
    """The key of one result: the training key plus the evaluation settings (attacks, subsets, eps, seed,
    evaluation-code version)."""
    return content_hash({"train": train_key(cfg), "eval": settings})


def run_dir(cfg: TrainConfig) -> Path:
    """The folder of a training run; every evaluation of it (any attack list) lives inside."""
    return results_dir() / "runs" / f"{cfg.method}-{cfg.student}-s{cfg.seed}-{train_key(cfg)}"


def result_file(cfg: TrainConfig, settings: dict) -> Path:
    return run_dir(cfg) / f"result-{run_key(cfg, settings)}.json"


# ---- reading back: an unreadable file is reported, moved aside and recomputed ---------------------------
def read_json(path, required=()) -> dict | None:
    """A JSON object from ``path``; None when there is none.  A file that is empty, truncated, not an object
    or lacks a ``required`` key is moved aside with a message naming it (``fairard.utils.quarantine``) and
    None is returned, so the caller recomputes it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError(f"a JSON {type(obj).__name__}, not an object")
        missing = [k for k in required if k not in obj]
        if missing:
            raise ValueError(f"lacks {missing}")
    except ValueError as err:
        quarantine(path, str(err) or "empty")
        return None
    return obj


def load_result(path) -> dict | None:
    """A finished result (None when absent or unreadable: then it is recomputed)."""
    return read_json(path, required=("key", "evaluation"))


def read_log(folder) -> list[dict]:
    """The per-epoch training log of a run folder.  The log is a copy of the history in ``checkpoint.pt``
    (``fairard.train.Trainer.write_log``): a missing or unreadable log is rewritten from it."""
    folder = Path(folder)
    path = folder / "log.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        pass
    except ValueError as err:
        quarantine(path, f"{type(err).__name__}: {err}")
    checkpoint = folder / "checkpoint.pt"
    if not checkpoint.exists():
        return []
    history = json.loads(torch.load(checkpoint, map_location="cpu", weights_only=True)["history"])
    write_text(path, "".join(json.dumps(r) + "\n" for r in history))
    return history


def clean_temp_files(folder) -> int:
    """Remove the temporary files an interrupted atomic write left in ``folder`` (call it holding the
    folder's claim: nobody else writes there); returns how many."""
    removed = 0
    for tmp in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed += 1
    if removed:
        print(f"fairard: removed {removed} temporary file(s) of an interrupted write in {folder}", file=sys.stderr)
    return removed


# ---- claims: one worker per run -----------------------------------------------------------------------
def claim_timeout() -> float:
    """Seconds without a heartbeat after which a claim is stale (``$FAIRARD_CLAIM_TIMEOUT``, default 120)."""
    return float(os.environ.get("FAIRARD_CLAIM_TIMEOUT", 120))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_holder(folder, timeout: float | None = None) -> dict | None:
    """Who holds the claim on a run folder: {host, pid, token, age (s since the heartbeat), stale}; None if nobody."""
    path = Path(folder) / "claim.json"
    try:
        age = time.time() - path.stat().st_mtime
        info = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return None
    except ValueError:  # being written this instant
        info = {}
    timeout = claim_timeout() if timeout is None else timeout
    gone = info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"])
    return {**info, "age": age, "stale": age > timeout or gone}


class Claim:
    """An exclusive claim on a run folder: ``claim.json`` created with O_EXCL, holding host, pid and a
    token; a thread touches it every ``timeout / 4`` s (the heartbeat).  ``acquire()`` returns False when
    a live worker holds it and takes over a stale claim (one taker at a time).  Use as a context manager
    after ``acquire()``, or call ``release()``."""

    def __init__(self, folder, timeout: float | None = None):
        self.folder = Path(folder)
        self.path = self.folder / "claim.json"
        self.timeout = claim_timeout() if timeout is None else timeout
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread = None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, new_file_mode())
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, fh)
        self._thread = threading.Thread(target=self._heartbeat, daemon=True, name=f"claim {self.folder.name}")
        self._thread.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.timeout / 4):
            if not self.held():
                print(f"fairard: lost the claim on {self.folder} (taken over after a stall)", file=sys.stderr)
                return
            os.utime(self.path)

    def held(self) -> bool:
        try:
            return json.loads(self.path.read_text()).get("token") == self.token
        except (FileNotFoundError, ValueError):
            return False

    def acquire(self) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._create():
            return True
        holder = claim_holder(self.folder, self.timeout)
        if holder is None:
            return self._create()
        if not holder["stale"]:
            return False
        guard = self.folder / "claim.takeover"
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, new_file_mode()))
        except FileExistsError:  # another worker is taking over (or died doing it: its guard goes stale too)
            try:
                if time.time() - guard.stat().st_mtime > self.timeout:
                    guard.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return False
        try:
            holder = claim_holder(self.folder, self.timeout)
            if holder is not None and holder["stale"]:
                self.path.unlink(missing_ok=True)
                print(f"fairard: taking over {self.folder}: the claim of {holder.get('host')} pid {holder.get('pid')} "
                      f"had no heartbeat for {holder['age']:.0f} s; the run resumes from its checkpoint",
                      file=sys.stderr, flush=True)
            return self._create()
        finally:
            guard.unlink(missing_ok=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.held():
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


_CACHE_ENTRIES = ("runs/*/result*.json", "runs/*/final.pt", "runs/*/evals/*.json", "teachers/*/final.pt",
                  "teacher-evals/*.json", "teacher-evals/*/*.json", "teacher-evals/*/evals/*.json")


def cache_snapshot() -> dict[str, int]:
    """Finished cache entries (results, final weights, teacher evaluations) and their mtimes."""
    root = results_dir()
    return {str(f.relative_to(root)): f.stat().st_mtime_ns for pat in _CACHE_ENTRIES for f in root.glob(pat)}
