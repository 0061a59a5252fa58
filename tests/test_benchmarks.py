"""The training benchmark compares like with like: its official-style baseline optimises the same
objective as fairard's Trainer, only in the official scripts' per-sample loop structure."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_throughput import official_weighted_loss  # noqa: E402

from fairard.methods import Forward, get_method  # noqa: E402

B, C = 16, 10


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    adv, clean, teacher = (torch.randn(B, C, generator=g, dtype=torch.float64) * 3 for _ in range(3))
    y = torch.randint(0, C, (B,), generator=g)
    weights = torch.rand(C, generator=g, dtype=torch.float64) * 2 + 0.5
    return adv.requires_grad_(True), clean.requires_grad_(True), teacher, y, weights


@pytest.mark.parametrize("method", ["fair-ard", "fair-rslad"])
def test_baseline_loss_equals_the_trainers_weighted_loss(method):
    adv, clean, teacher, y, weights = _batch(0)
    baseline = official_weighted_loss(method, adv, clean, teacher, y, weights)
    f = Forward(student=None, x=None, y=y)
    f.s_adv, f.s_clean, f.t_clean = adv, clean, teacher  # preset forwards, as the Trainer shares them
    ours = (get_method(method).per_sample_loss(f) * weights[y]).mean()
    torch.testing.assert_close(baseline, ours)
    g_base = torch.autograd.grad(baseline, (adv, clean), allow_unused=True)
    g_ours = torch.autograd.grad(ours, (adv, clean), allow_unused=True)
    for a, b in zip(g_base, g_ours):
        torch.testing.assert_close(torch.zeros_like(adv) if a is None else a, torch.zeros_like(adv) if b is None else b)


def test_baseline_loss_follows_the_class_weights():
    adv, clean, teacher, y, weights = _batch(1)
    doubled = official_weighted_loss("fair-ard", adv, clean, teacher, y, 2 * weights)
    torch.testing.assert_close(doubled, 2 * official_weighted_loss("fair-ard", adv, clean, teacher, y, weights))
    heavier = weights.clone()
    heavier[y[0]] += 5.0
    assert official_weighted_loss("fair-rslad", adv, clean, teacher, y, heavier) > \
        official_weighted_loss("fair-rslad", adv, clean, teacher, y, weights)


def test_study_throughput_benchmark_runs(synthetic_root, capsys):
    """benchmarks/study_throughput.py --quick measures 1 and 2 concurrent runs and prints the table."""
    from study_throughput import main

    rows = main(["--quick", "--device", "cpu", "--data-root", str(synthetic_root)])
    assert [r["concurrency"] for r in rows] == [1, 2] and all(r["run_epochs_per_hour"] > 0 for r in rows)
    assert rows[0]["speedup"] == 1.0
    assert "runs at once" in capsys.readouterr().out


@pytest.mark.parametrize("option, value", [("--n-per-class", "0"), ("--batch-size", "-1"), ("--repeats", "x"),
                                           ("--workers", "-2")])
def test_throughput_benchmark_refuses_a_bad_count_with_a_usage_error(option, value, capsys):
    import train_throughput

    with pytest.raises(SystemExit) as stop:
        train_throughput.parse_args([option, value, "--device", "cpu"])
    assert stop.value.code == 2
    assert f"argument {option}: expected an integer" in capsys.readouterr().err
