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
