"""Evaluation budgets pinned: what each named attack actually runs, in which mode, on which images.

Two independent views of every white-box attack: a spy on ``fairard.attacks.pgd`` (the function both the
evaluation table and ``fgsm`` call through the module) for its declared budget, and a recording model that
sees the iterates the attack really feeds it (start, step size, number of steps, radius, loss via the sign
of the first step). AutoAttack is checked on the ``pyautoattack.AutoAttack`` object ``fairard.autoattack``
builds, just before it would run. Each docstring names the change that makes the test fail.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import make_blobs, write_synthetic_cifar
from fairard import attacks as A
from fairard import data as D
from fairard import evaluate as E

EPS = 8 / 255
NAMES = [f"c{k}" for k in range(10)]

# name -> (steps, step size, loss, random start) of the white-box attacks (Fair-ARD's eval.py, papers.md 1.7)
WHITE_BOX = {"fgsm": (1, 8 / 255, "ce", "normal"), "pgd20": (20, 2 / 255, "ce", "uniform"),
             "cw20": (20, 2 / 255, "cw", "uniform")}
# name -> iterations of APGD-CE / APGD-T / FAB-T (Square: 5000 queries in both)
AUTOATTACK = {"aa": 100, "aa10": 10}


class Recorder(nn.Module):
    """Wraps a model and keeps every input it is given, with the mode it was in."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs, self.modes = model, [], []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        self.modes.append(self.training)
        return self.model(x)


def linear_problem(n_per_class=2):
    x, y = make_blobs(n_per_class=n_per_class)  # values near 0.5: no eps-ball touches the [0, 1] box
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 10)).eval()
    return model, x, y


def hand_loss(logits, y, loss):
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="sum")
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, 10).bool(), float("-inf")).amax(1)
    return -(true - other + 50).clamp(min=0).sum()


def test_every_named_attack_has_a_pinned_budget():
    """Adding an evaluation attack without pinning its budget here fails this test."""
    assert set(E.EVAL_ATTACKS) == {"clean"} | set(WHITE_BOX) | set(AUTOATTACK)


@pytest.mark.parametrize("name", list(WHITE_BOX))
def test_white_box_attack_runs_its_budget(name, monkeypatch):
    """eps 8/255; FGSM one step of 8/255 from x + 0.001 N(0, I); PGD-20 and CW-inf 20 steps of 2/255 from a
    uniform start, CW on the margin loss. Fails if a step count, step size, start, radius or loss changes
    (e.g. PGD-20 with 10 steps or an 8/255 step, CW-inf on the CE loss), or if the model attacked or
    judged is in train mode."""
    steps, step_size, loss, start = WHITE_BOX[name]
    calls, original = [], A.pgd
    monkeypatch.setattr(A, "pgd", lambda *a, **kw: (calls.append(kw), original(*a, **kw))[1])
    model, x, y = linear_problem()
    rec = Recorder(model)
    E.predict_under_attack(rec, x, y, name, eps=EPS)

    assert len(calls) == 1
    kw = calls[0]
    assert (kw["eps"], kw["step_size"], kw["steps"], kw["loss"], kw["random_start"]) == (EPS, step_size, steps, loss,
                                                                                          start)
    iterates, judged = rec.inputs[:-1], rec.inputs[-1]
    assert len(iterates) == steps and rec.modes == [False] * (steps + 1)
    first = iterates[0] - x
    if start == "uniform":
        assert first.abs().max() <= EPS + 1e-7 and first.std() == pytest.approx(EPS / 3 ** 0.5, rel=0.05)
    else:
        assert first.std() == pytest.approx(0.001, rel=0.05)
    trajectory = iterates + [judged]
    moves = [float((after - before).abs().max()) for before, after in zip(trajectory, trajectory[1:])]
    assert moves[0] == pytest.approx(step_size, abs=1e-6)  # some pixel moves a full step from the start
    assert max(moves) <= step_size + 1e-6                  # later steps may be cut short by the projection
    assert (judged - x).abs().max() <= EPS + 1e-6
    # The first step follows the sign of the named loss's input gradient wherever it was not projected.
    x0 = iterates[0].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(hand_loss(model(x0), y, loss), x0)
    free = (trajectory[1] - x).abs() < EPS - 1e-6
    assert free.float().mean() > 0.3
    assert torch.equal(torch.sign(trajectory[1] - iterates[0])[free], grad.sign()[free])


class AutoAttackSpy:
    """Replaces ``pyautoattack.AutoAttack``: builds the real object, then records its configuration where the
    evaluation would start and returns the clean predictions instead of attacking."""

    seen: list = []

    def __new__(cls, model, **kwargs):
        import pyautoattack

        adversary = cls.real(model, **kwargs)

        def run(x, y, batch_size=250, **_):
            cls.seen.append({
                "version": adversary.version, "norm": adversary.norm, "eps": adversary.epsilon,
                "attacks": list(adversary.attacks_to_run) if adversary.version == "custom" else None,
                "apgd_iter": adversary.apgd.n_iter, "apgd_t_iter": adversary.apgd_targeted.n_iter,
                "fab_iter": adversary.fab.n_iter, "apgd_t_targets": adversary.apgd_targeted.n_target_classes,
                "fab_targets": adversary.fab.n_target_classes, "square_queries": adversary.square.n_queries,
                "training": model.training})
            with torch.no_grad():
                return x, model(x).argmax(1)

        adversary.run_standard_evaluation = run
        return adversary


@pytest.mark.parametrize("name", list(AUTOATTACK))
def test_autoattack_runs_fra31_standard_with_its_iterations(name, monkeypatch):
    """`aa` is fra31's standard version (APGD-CE, APGD-T, FAB-T, Square; 9 targets; Square 5000 queries) at
    100 iterations, `aa10` the same with 10; eps 8/255, L-inf, model in eval mode. Fails if `aa10` still runs
    100 iterations, `aa` runs 10, the version or norm changes, or the model is attacked in train mode."""
    import pyautoattack

    AutoAttackSpy.real, AutoAttackSpy.seen = pyautoattack.AutoAttack, []
    monkeypatch.setattr(pyautoattack, "AutoAttack", AutoAttackSpy)
    model, x, y = linear_problem()
    quiet = SimpleNamespace(disable=True)  # no AutoAttack log handler from this test (it would keep its stderr)
    E.predict_under_attack(model, x, y, name, eps=EPS, progress=quiet)
    (seen,) = AutoAttackSpy.seen
    n = AUTOATTACK[name]
    assert seen == {"version": "standard", "norm": "Linf", "eps": EPS, "attacks": None, "apgd_iter": n,
                    "apgd_t_iter": n, "fab_iter": n, "apgd_t_targets": 9, "fab_targets": 9, "square_queries": 5000,
                    "training": False}


def test_batchnorm_model_in_train_mode_is_evaluated_in_eval_mode_and_restored(monkeypatch):
    """A model handed over in train mode is attacked and judged in eval mode by every attack (BatchNorm uses
    its running statistics and does not update them), in fp32, and is back in train mode afterwards.
    Fails if evaluate() forgets eval mode for any attack or does not restore the caller's mode."""
    import pyautoattack

    AutoAttackSpy.real, AutoAttackSpy.seen = pyautoattack.AutoAttack, []
    monkeypatch.setattr(pyautoattack, "AutoAttack", AutoAttackSpy)
    x, y = make_blobs(n_per_class=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.1, 0.1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes, dtypes = [], []
    model[1].register_forward_pre_hook(lambda m, i: (modes.append(m.training), dtypes.append(i[0].dtype)) and None)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast must not reach the evaluation
        E.evaluate(model, x, y, attacks=list(E.EVAL_ATTACKS), class_names=NAMES, eps=EPS, progress=False,
                   check_large_eps=10)
    assert model.training and len(modes) > 40
    assert not any(modes) and set(dtypes) == {torch.float32}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [s["training"] for s in AutoAttackSpy.seen] == [False, False]


def test_test_tensors_are_load_split_as_float_nchw(tmp_path):
    """``data.test_tensors`` (what every evaluation attacks) is ``load_split``'s test split, NCHW-contiguous float32
    in [0, 1] (pixel / 255), same order and labels; with ``n_per_class`` the ``balanced_subset`` rows.
    Fails on an NHWC/HWC mix-up (e.g. H and W swapped), a missing /255, normalised inputs or a reordering."""
    root = write_synthetic_cifar(tmp_path, n_train=2, n_test=5)
    x_np, y_np = D.load_split("cifar10", "test", root)
    assert x_np.shape == (50, 32, 32, 3) and x_np.dtype == np.uint8
    x, y = D.test_tensors("cifar10", root=root)
    assert x.dtype == torch.float32 and x.shape == (50, 3, 32, 32) and x.is_contiguous()
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    torch.testing.assert_close(x, torch.from_numpy(x_np.transpose(0, 3, 1, 2) / 255.0).float(), rtol=0, atol=1e-7)
    assert y.dtype == torch.int64 and y.tolist() == y_np.tolist()
    assert x[3, 1, 7, 20] == pytest.approx(x_np[3, 7, 20, 1] / 255)  # channel, row, column
    xs, ys = D.test_tensors("cifar10", n_per_class=2, seed=3, root=root)
    idx = D.balanced_subset(y_np, 2, seed=3)
    assert torch.equal(xs, x[idx]) and ys.tolist() == y_np[idx].tolist()
