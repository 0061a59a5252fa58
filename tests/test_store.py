"""The result store (fairard.store): file modes, claims, the log committed with the checkpoint, content keys
(data and teacher checkpoints) and unreadable files, on synthetic data and the smoke profile."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fairard import store
from fairard import train as T
from fairard.__main__ import main
from fairard.studies import main_results
from fairard.train import TrainConfig
from fairard.utils import save_torch, write_json

STUDY = ["main_results", "--profile", "smoke", "--methods", "ard,fair-ard", "--headline", "ard",
         "--attacks", "clean,pgd20", "--overrides", '{"eval_per_class": 2}']


def test_files_are_readable_by_the_group_and_interrupted_writes_are_cleaned(tmp_path):
    old = os.umask(0o022)
    try:
        assert write_json(tmp_path / "a.json", {}).stat().st_mode & 0o777 == 0o644
        assert save_torch(tmp_path / "b.pt", {"w": torch.ones(1)}).stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        assert write_json(tmp_path / "c.json", {}).stat().st_mode & 0o777 == 0o640  # the umask is respected
    finally:
        os.umask(old)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".final.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "run" / "final.pt").write_bytes(b"kept")
    assert store.clean_temp_files(tmp_path / "run") == 1
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["final.pt"]


def test_a_claim_is_exclusive_and_a_stale_one_is_taken_over(tmp_path, capfd):
    first = store.Claim(tmp_path, timeout=60)
    assert first.acquire()
    assert not store.Claim(tmp_path, timeout=60).acquire()           # held, heartbeat fresh
    holder = store.claim_holder(tmp_path)
    assert holder["pid"] == os.getpid() and not holder["stale"]
    first.release()
    assert store.claim_holder(tmp_path) is None

    # another host's claim with no heartbeat for longer than the timeout
    (tmp_path / "claim.json").write_text(json.dumps({"host": "gone-node", "pid": 1, "token": "x"}))
    old = os.stat(tmp_path / "claim.json").st_mtime - 30
    os.utime(tmp_path / "claim.json", (old, old))
    assert not store.Claim(tmp_path, timeout=60).acquire()           # 30 s old: not stale yet at 60 s
    taker = store.Claim(tmp_path, timeout=10)
    assert taker.acquire() and taker.held()
    assert "taking over" in capfd.readouterr().err
    taker.release()

    # a process of this host that is gone: stale at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "claim.json").write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "token": "y"}))
    assert store.claim_holder(tmp_path, timeout=60)["stale"]


def test_an_epoch_is_never_logged_twice_or_lost(synthetic_root, tmp_path, monkeypatch):
    """A crash after the checkpoint but before the log: the resumed run rewrites the log from the
    checkpoint's history; before this change the log held the epoch twice after resuming."""
    cfg = TrainConfig(method="natural", student="resnet8", data_root=str(synthetic_root), n_per_class=4,
                      epochs=3, batch_size=20, monitor_n=0, device="cpu", amp="off")
    real = T.Trainer.write_log
    calls = []

    def crash_after_checkpoint_of_epoch_1(self):
        calls.append(len(self.history))
        if len(self.history) == 2 and calls.count(2) == 1:
            raise KeyboardInterrupt("killed between the checkpoint and the log")
        real(self)

    monkeypatch.setattr(T.Trainer, "write_log", crash_after_checkpoint_of_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, tmp_path, progress=False)
    assert [r["epoch"] for r in store.read_log(tmp_path)] == [0]      # one behind the checkpoint
    T.train(cfg, tmp_path, progress=False)
    assert [r["epoch"] for r in store.read_log(tmp_path)] == [0, 1, 2]


# ---- a computed smoke study -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    """A smoke main_results (teacher, its evaluation, ARD and Fair-ARD) computed through the CLI, with
    ``plan --json`` before and after; data in a folder of its own (the tests change it)."""
    from conftest import write_synthetic_cifar

    data = write_synthetic_cifar(tmp_path_factory.mktemp("store-data"))
    results = tmp_path_factory.mktemp("store-results")
    mp = pytest.MonkeyPatch()
    mp.setenv("FAIRARD_DATA", str(data))
    mp.setenv("FAIRARD_RESULTS", str(results))
    before = plan_json()
    assert main(["run", *STUDY, "--quiet"]) == 0
    yield data, results, before
    mp.undo()


def plan_json():
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", *STUDY, "--json"]) == 0
    return json.loads(out.getvalue())


def statuses(plan) -> dict:
    return {r["name"]: r["status"] for r in plan["runs"]}


def test_plan_json_lists_pending_then_cached_runs(study_store):
    _, results, before = study_store
    names = ["teacher pgd_at resnet8", "teacher evaluation resnet8", "ard resnet8 seed 0", "fair-ard resnet8 seed 0"]
    assert statuses(before) == dict.fromkeys(names, "pending") and before["counts"]["pending"] == 4
    assert [r["key"] is None for r in before["runs"]] == [False, True, True, True]  # keys wait for the teacher
    after = plan_json()
    assert statuses(after) == dict.fromkeys(names, "cached") and after["store"] == str(results)
    teacher = next(r for r in after["runs"] if r["kind"] == "teacher")
    assert all(r["needs"] == [teacher["id"]] for r in after["runs"] if r["kind"] != "teacher")
    assert [r["id"] for r in after["runs"]] == [r["id"] for r in before["runs"]]


def test_other_data_or_an_overwritten_teacher_invalidates_exactly_its_dependents(study_store):
    data, results, _ = study_store
    (teacher_ckpt,) = results.glob("teachers/*/final.pt")
    original = teacher_ckpt.read_bytes()
    state = torch.load(teacher_ckpt, weights_only=True)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, teacher_ckpt)                                   # someone retrained the teacher in place
    assert statuses(plan_json()) == {"teacher pgd_at resnet8": "cached", "teacher evaluation resnet8": "pending",
                                     "ard resnet8 seed 0": "pending", "fair-ard resnet8 seed 0": "pending"}
    teacher_ckpt.write_bytes(original)
    assert set(statuses(plan_json()).values()) == {"cached"}          # the same bytes: the same keys

    train_npz = data / "cifar10" / "train.npz"
    original = train_npz.read_bytes()
    with np.load(train_npz) as f:
        x, y = f["x"].copy(), f["y"]
    x[0, 0, 0, 0] ^= 1                                                # one pixel of one image
    np.savez(train_npz, x=x, y=y)
    assert set(statuses(plan_json()).values()) == {"pending"}        # every run read this data
    train_npz.write_bytes(original)
    assert set(statuses(plan_json()).values()) == {"cached"}


def test_unreadable_files_are_reported_moved_aside_and_recomputed_alone(study_store, monkeypatch, capfd):
    from fairard import profiles, runs

    _, results, _ = study_store
    setup = profiles.validate("smoke", methods=["ard", "fair-ard"], headline=["ard"], attacks=["clean", "pgd20"],
                              overrides={"eval_per_class": 2}, progress=False)
    folders = {r.config.method: r.folder() for r in main_results.plan(setup) if r.kind == "student"}
    trained, evaluated = [], []
    real_epoch, real_evaluate = T.Trainer.train_epoch, runs.evaluate
    monkeypatch.setattr(T.Trainer, "train_epoch", lambda self, *a, **k: trained.append(self.cfg.method)
                        or real_epoch(self, *a, **k))
    monkeypatch.setattr(runs, "evaluate", lambda *a, **k: evaluated.extend(k["attacks"]) or real_evaluate(*a, **k))
    reference = {r["method"]: r["evaluation"] for r in main_results.collect(setup).results}

    def result_of(method):
        (path,) = folders[method].glob("result-*.json")
        return path

    def again(expect_in_stderr):
        trained.clear(), evaluated.clear()
        study = main_results.study(setup)
        err = capfd.readouterr().err
        for text in expect_in_stderr:
            assert text in err, err
        assert {r["method"]: r["evaluation"]["attacks"] for r in study.results} == {
            m: e["attacks"] for m, e in reference.items()}
        return study

    # a truncated result: reassembled from the cached evaluations; nothing trained or evaluated
    path = result_of("ard")
    path.write_text(path.read_text()[:40])
    again([str(path), "moved aside"])
    assert trained == [] and evaluated == [] and list(folders["ard"].glob("result-*.json.corrupt-*"))

    # an empty evaluation file: that attack alone evaluated again
    (pgd,) = folders["ard"].glob("evals/pgd20-*.json")
    pgd.write_text("")
    result_of("ard").unlink()
    again([str(pgd)])
    assert trained == [] and evaluated == ["pgd20"]

    # a torn log line: the log is rewritten from the checkpoint's history
    log = folders["fair-ard"] / "log.jsonl"
    log.write_text(log.read_text() + '{"epoch": 1, "lo')
    result_of("fair-ard").unlink()
    again([str(log)])
    assert trained == [] and [r["epoch"] for r in store.read_log(folders["fair-ard"])] == [0]

    # a garbage final.pt: rebuilt from the finished checkpoint, no epoch trained again
    (folders["ard"] / "final.pt").write_bytes(b"not a checkpoint")
    result_of("ard").unlink()
    next(folders["ard"].glob("evals/clean-*.json")).unlink()
    again([str(folders["ard"] / "final.pt")])
    assert trained == [] and evaluated == ["clean"]

    # a truncated checkpoint of an unfinished run: that run alone trains again
    ckpt = folders["fair-ard"] / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    (folders["fair-ard"] / "final.pt").unlink()
    result_of("fair-ard").unlink()
    shutil.rmtree(folders["fair-ard"] / "evals")
    again([str(ckpt)])
    assert trained == ["fair-ard"] and sorted(evaluated) == ["clean", "pgd20"]
