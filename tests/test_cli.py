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


def test_export_writes_a_robustbench_pair_that_loads_back_to_the_same_clean_accuracy(tmp_path):
    import pytest

    from conftest import write_synthetic_cifar
    from fairard.data import test_tensors
    from fairard.evaluate import evaluate
    from fairard.export import model_card
    from fairard.models import build_model, load_checkpoint

    root = write_synthetic_cifar(tmp_path / "data", n_train=2, n_test=6)
    torch.manual_seed(0)
    model = build_model("resnet8", 10)
    for m in model.modules():   # non-trivial BN statistics, so a lost buffer would change the predictions
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    ckpt = tmp_path / "student.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, ckpt)
    out = tmp_path / "exports" / "student"
    proc = _run("export", "--arch", "resnet8", "--checkpoint", str(ckpt), "--data-root", str(root), "--out", str(out),
                "--attacks", "clean,pgd20", "--quiet", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    card = json.loads(out.with_name("student.json").read_text())
    assert (card["architecture"], card["dataset"], card["threat_model"]) == ("resnet8", "cifar10", "Linf")
    assert card["eps"] == pytest.approx(8 / 255) and card["autoattack_acc"] is None
    assert isinstance(card["clean_acc"], float) and len(card["per_class_results"]["pgd20"]["per_class"]) == 10
    state = torch.load(out.with_name("student.pt"), weights_only=True)
    assert not any(k.startswith("module.") for k in state)    # a plain state dict
    reloaded = load_checkpoint("resnet8", out.with_name("student.pt"))
    x, y = test_tensors("cifar10", root=root)
    again = evaluate(reloaded, x, y, attacks=("clean",), class_names=card["class_names"], progress=False,
                     check_large_eps=0)
    assert round(100 * again["attacks"]["clean"]["accuracy"], 2) == card["clean_acc"]
    # AutoAttack's accuracy goes in as a number when it was run
    fake = {"eps": 8 / 255, "n": 4, "class_names": ["a", "b"], "attacks": {
        name: {"accuracy": acc, "worst_class_accuracy": 0.0, "worst_class_name": "a", "nsd": 0.1, "per_class": [0, acc]}
        for name, acc in (("clean", 0.75), ("aa", 0.5))}}
    assert (model_card("resnet8", "cifar10", fake)["clean_acc"], model_card("resnet8", "cifar10", fake)["autoattack_acc"]) \
        == (75.0, 50.0)
