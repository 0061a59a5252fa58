"""The evaluate command end to end on a tiny synthetic CIFAR-10 stand-in."""
import json
import subprocess
import sys

import torch

from fairard.models import build_model


def _run(*args):
    return subprocess.run([sys.executable, "-m", "fairard", *args], capture_output=True, text=True, timeout=300)


def test_evaluate_command_writes_per_class_json(synthetic_root, tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    torch.save({"state_dict": build_model("resnet8", 10).state_dict()}, ckpt)
    out = tmp_path / "res.json"
    r = _run("evaluate", "--arch", "resnet8", "--checkpoint", str(ckpt), "--data-root", str(synthetic_root),
             "--attacks", "clean,fgsm,pgd20", "--n-per-class", "3", "--device", "cpu", "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert set(result["attacks"]) == {"clean", "fgsm", "pgd20"}
    assert result["n"] == 30 and len(result["attacks"]["pgd20"]["per_class"]) == 10
    assert result["arch"] == "resnet8" and "git_commit" in result["provenance"]
    assert "worst" in r.stdout and "airplane" in r.stdout


def test_evaluate_command_bad_input_lists_valid_names(synthetic_root, tmp_path):
    r = _run("evaluate", "--arch", "resnet9000", "--checkpoint", str(tmp_path / "x.pt"), "--data-root",
             str(synthetic_root))
    assert r.returncode == 2 and "resnet18" in r.stderr and "wrn" in r.stderr
    r = _run("evaluate", "--arch", "resnet8", "--checkpoint", str(tmp_path / "x.pt"), "--attacks", "clean,pgd7")
    assert r.returncode == 2 and "valid: clean, fgsm, pgd20, cw20, aa, aa10" in r.stderr
    r = _run("evaluate", "--arch", "resnet8", "--checkpoint", str(tmp_path / "missing.pt"),
             "--data-root", str(synthetic_root))
    assert r.returncode == 2 and "missing.pt" in r.stderr


def test_demo_main_job_runs_end_to_end(synthetic_root, tmp_path):
    out = tmp_path / "demo.json"
    r = _run("demo", "--data-root", str(synthetic_root), "--n-per-class", "20", "--eval-per-class", "2",
             "--teacher-epochs", "1", "--student-epochs", "1", "--device", "cpu", "--runs", str(tmp_path / "runs"),
             "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())["results"]
    assert set(result) == {"teacher (resnet20, PGD-AT)", "student (resnet8, ard)", "student (resnet8, fair-ard)"}
    assert all(set(v["attacks"]) == {"clean", "pgd20"} for v in result.values())
    assert "JPEG-derived" in r.stdout


def test_train_with_fewer_images_than_a_batch_is_a_clear_error(synthetic_root, tmp_path):
    r = _run("train-teacher", "--arch", "resnet8", "--method", "natural", "--data-root", str(synthetic_root),
             "--n-per-class", "5", "--batch-size", "128", "--device", "cpu", "--out", str(tmp_path / "t"))
    assert r.returncode == 2 and "fewer than one batch" in r.stderr


def test_study_command_runs_a_notebook_study_and_reuses_the_cache(synthetic_root, tmp_path):
    args = ("study", "main_results", "--profile", "smoke", "--methods", "ard,fair-ard", "--headline", "ard",
            "--results", str(tmp_path / "results"), "--quiet")
    env_run = lambda *a: subprocess.run([sys.executable, "-m", "fairard", *a], capture_output=True, text=True,
                                        timeout=300, env={**__import__("os").environ, "FAIRARD_DATA": str(synthetic_root)})
    first = env_run(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "| fair-ard | resnet8 | 0 |" in first.stdout and "fair-ard vs ard" in first.stdout
    again = env_run(*args)
    assert again.returncode == 0 and again.stdout.count(": cached") == 2 and "0 cache entries written" in again.stdout
    bad = env_run("study", "main_results", "--profile", "smoke", "--methods", "ard,fair-foo")
    assert bad.returncode == 2 and "valid:" in bad.stderr and "fair-ard" in bad.stderr
