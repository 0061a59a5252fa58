"""The result store: where runs, evaluations and results live under ``$FAIRARD_RESULTS``, and their keys.

    $FAIRARD_RESULTS/runs/<method>-<student>-s<seed>-<train key>/
        checkpoint.pt, final.pt, log.jsonl, config.json   (training, fairard.train)
        evals/<attack>-<key>.json, evals/eps1-<key>.json   (one attack's per-class evaluation each)
        result-<run key>.json                              (config, evaluation, provenance)
    $FAIRARD_RESULTS/teachers/<method>-<arch>-<key>/       (a trained teacher, same layout)
    $FAIRARD_RESULTS/teacher-evals/<arch>-<key>/           (a teacher's evaluations and result)

A training run is keyed by its full training config (``train_key``); each attack's evaluation is
stored on its own inside it, so a notebook that adds an attack evaluates only that attack; the
assembled result is keyed by training config + evaluation settings (``run_key``).  Every file is
written atomically and the result last, so a half-finished run is never read as finished.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from .train import TrainConfig


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


def train_key(cfg: TrainConfig) -> str:
    """The cache key of a training run: its config, teacher (and init) checkpoints relative to the results folder."""
    portable = dataclasses.replace(cfg, teacher_checkpoint=portable_path(cfg.teacher_checkpoint),
                                   nat_teacher_checkpoint=portable_path(cfg.nat_teacher_checkpoint),
                                   init_checkpoint=portable_path(cfg.init_checkpoint))
    return portable.key()


def run_key(cfg: TrainConfig, settings: dict) -> str:
    """The key of one result: the training key plus the evaluation settings (attacks, subsets, eps, seed)."""
    return content_hash({"train": train_key(cfg), "eval": settings})


def run_dir(cfg: TrainConfig) -> Path:
    """The folder of a training run; every evaluation of it (any attack list) lives inside."""
    return results_dir() / "runs" / f"{cfg.method}-{cfg.student}-s{cfg.seed}-{train_key(cfg)}"


def result_file(cfg: TrainConfig, settings: dict) -> Path:
    return run_dir(cfg) / f"result-{run_key(cfg, settings)}.json"


def load_result(path) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


_CACHE_ENTRIES = ("runs/*/result*.json", "runs/*/final.pt", "runs/*/evals/*.json", "teachers/*/final.pt",
                  "teacher-evals/*.json", "teacher-evals/*/*.json", "teacher-evals/*/evals/*.json")


def cache_snapshot() -> dict[str, int]:
    """Finished cache entries (results, final weights, teacher evaluations) and their mtimes."""
    root = results_dir()
    return {str(f.relative_to(root)): f.stat().st_mtime_ns for pat in _CACHE_ENTRIES for f in root.glob(pat)}
