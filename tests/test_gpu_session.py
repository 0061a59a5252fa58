"""benchmarks/gpu_session.py, the one command a lent GPU window runs: its dry run end to end on CPU (tiny JPEG
packs rebuilt by the real decoder, a study banked within its deadline, one archive that reads back as a Study),
and the rules that decide what a window runs."""
import dataclasses
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_session  # noqa: E402

TOOL = next((p for p in (REPO / ".gpu" / "cifar_jpeg_to_npz.py", REPO.parent / "shared" / "tools" / "cifar_jpeg_to_npz.py")
             if p.exists()), None)


def test_a_pair_starts_only_when_both_runs_fit():
    assert gpu_session.pair_fits(left_s=160, epochs=10, epoch_s=5, eval_s=20)       # 2 * 70 * 1.1 = 154 s
    assert not gpu_session.pair_fits(left_s=150, epochs=10, epoch_s=5, eval_s=20)
    assert not gpu_session.pair_fits(left_s=0, epochs=1, epoch_s=0.1, eval_s=0.1)


def test_a_window_takes_the_first_seeds_no_recorded_window_with_its_settings_has(tmp_path):
    same, other = {"student_epochs": 10}, {"student_epochs": 20}
    for name, overrides, done in (("w1", same, [["ard", 0], ["ard", 1], ["rslad", 0]]), ("w2", other, [["ard", 2]]),
                                  ("w3", same, [["ard", 3]])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "window.json").write_text(json.dumps({"overrides": overrides, "done": done}))
    assert gpu_session.recorded_seeds(tmp_path, same) == {0, 1, 3}
    assert gpu_session.recorded_seeds(tmp_path, {"student_epochs": 5}) == set()


@pytest.mark.skipif(TOOL is None, reason="the JPEG-pack decoder (../shared/tools/cifar_jpeg_to_npz.py) is not here")
def test_tiny_jpeg_packs_rebuild_to_a_loadable_cifar10(tmp_path):
    from fairard.data import load_split

    gpu_session.write_tiny_packs(tmp_path / "packs", n_train=3, n_test=1)
    subprocess.run([sys.executable, str(TOOL), str(tmp_path / "packs"), str(tmp_path / "data" / "cifar10")], check=True,
                   capture_output=True)
    x, y = load_split("cifar10", "train", tmp_path / "data", download=False)
    assert x.shape == (30, 32, 32, 3) and x.dtype == np.uint8 and np.bincount(y).tolist() == [3] * 10


def test_dry_run_banks_a_study_in_one_archive_that_reads_back(tmp_path, synthetic_root, monkeypatch):
    """The dry run's study and packing (data and benchmark stages are their own tests' business): a teacher and
    the ARD and RSLAD pairs at smoke size, then one archive with results/<window>/ and no weights."""
    from fairard.runs import load_recorded

    out = tmp_path / "out"
    env = {"FAIRARD_DATA": str(synthetic_root), "OMP_NUM_THREADS": "1", "FAIRARD_COMMIT": "abc123"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("OUT", raising=False)
    assert gpu_session.main(["run", "--dry-run", "--stages", "study", "--budget", "600", "--seeds", "0",
                             "--out", str(out), "--work", str(tmp_path / "work"), "--window", "dry-w1"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["dry-w1.tgz", "summary.txt"]
    with tarfile.open(out / "dry-w1.tgz") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "checkout", filter="data")
    assert not [n for n in names if n.endswith(".pt")]
    window = json.loads((tmp_path / "checkout" / "results" / "dry-w1" / "window.json").read_text())
    assert window["done"] == [["ard", 0], ["rslad", 0]] and window["skipped"] == []
    session = json.loads((tmp_path / "checkout" / "benchmarks" / "results" / "dry-w1" / "session.json").read_text())
    assert session["stages"]["study"]["returncode"] == 0 and session["commit"] == "abc123"
    study = load_recorded(tmp_path / "checkout" / "results" / "dry-w1")
    assert sorted(r["method"] for r in study.results) == ["ard", "fair-ard", "fair-rslad", "rslad"]
    assert {r["window"] for r in study.results} == {"dry-w1"}
    assert {r["provenance"]["git_commit"] for r in study.results} == {"abc123"}


def test_several_windows_read_back_as_replicates_each_named(tmp_path):
    from fairard.runs import load_recorded

    for window in ("h200-w1", "h200-w2"):
        subprocess.run(["cp", "-r", str(REPO / "results" / "h100-2026-11-22"), str(tmp_path / window)], check=True)
    study = load_recorded(tmp_path / "h200-w1", tmp_path / "h200-w2")
    assert sorted((r["window"], r["method"]) for r in study.results) == [
        ("h200-w1", "ard"), ("h200-w1", "fair-ard"), ("h200-w2", "ard"), ("h200-w2", "fair-ard")]
    assert sorted(study.teachers) == ["resnet18 (h200-w1)", "resnet18 (h200-w2)"]
    assert "2 windows" in study.setup.name and study.setup.headline_pairs == (("ard", "fair-ard"),)
    assert list(load_recorded(tmp_path / "h200-w1").teachers) == ["resnet18"]  # one window: named as before
    other = next((tmp_path / "h200-w2" / "runs").glob("*/result*.json"))
    record = json.loads(other.read_text())
    record["config"]["epochs"] = 20
    other.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="different settings"):
        load_recorded(tmp_path / "h200-w1", tmp_path / "h200-w2")


def test_auto_profile_is_gpu_with_a_gpu_and_quick_without(monkeypatch, capsys, tmp_path):
    import torch

    from fairard import profiles

    # no data on disk: the profiles' test-set counts are not checked against whatever $FAIRARD_DATA holds
    # (the notebook tests point it at a tiny synthetic set, smaller than quick's eval_per_class)
    monkeypatch.setenv("FAIRARD_DATA", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profiles.validate("auto").name == "quick"
    assert "profile auto -> quick: no CUDA GPU is visible" in capsys.readouterr().out
    with pytest.raises(ValueError, match="engine 'graph'.*no CUDA GPU"):
        profiles.validate("gpu")
    assert profiles.validate("gpu", overrides={"engine": "eager"}).engine == "eager"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    setup = profiles.validate("auto")
    assert setup.name == "gpu" and setup.engine == "graph" and setup.students == ("resnet18",)
    assert "profile auto -> gpu: a CUDA GPU is visible (NVIDIA H200)" in capsys.readouterr().out


def test_runs_of_a_graph_profile_use_the_graph_engine_where_the_method_allows(monkeypatch):
    from fairard import profiles, runs

    p = profiles.PROFILES["gpu"]
    monkeypatch.setattr(runs, "teacher_checkpoint", lambda *a, **k: "teacher.pt")
    assert runs.student_config(p, "fair-ard").engine == "graph"
    assert runs.student_config(p, "fair-iad").engine == "eager"    # IAD switches a term on at an epoch
    assert runs.teacher_config(p).engine == "graph"
    eager = dataclasses.replace(p, engine="eager")
    assert runs.student_config(p, "fair-ard").key() == runs.student_config(eager, "fair-ard").key()  # same run
