"""Bad input is refused before any work: one table row per bad input of issue 15 (and the class it stands for).

Each row runs the command line in-process and asserts: exit code 2, a short message (no traceback) naming the
option or the file, and that nothing was trained, evaluated or overwritten (spies on the training epoch and on
every evaluation attack; a snapshot of the folder's files). Rows marked ``early`` must also fail before any
data is loaded. Tiny synthetic data and resnet8, so a row that wrongly starts work still ends fast.
"""
import hashlib
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import fairard.data as D
import fairard.evaluate as EV
from fairard import checks
from fairard.__main__ import main
from fairard.fairness import FairWeighting
from fairard.models import CheckpointError, build_model, load_checkpoint
from fairard.train import TrainConfig, Trainer, TrainingDiverged

from conftest import write_synthetic_cifar

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Data folders (good, truncated train.npz, a class missing), checkpoints (good, NaN, pickled callable,
    truncated), run folders holding a damaged checkpoint.pt, and a regular file to put outputs 'under'."""
    base = tmp_path_factory.mktemp("checks")
    good = write_synthetic_cifar(base / "good", n_train=12, n_test=4)
    truncated = write_synthetic_cifar(base / "truncated", n_train=12, n_test=4)
    npz = truncated / "cifar10" / "train.npz"
    npz.write_bytes(npz.read_bytes()[:5000])
    lacking = write_synthetic_cifar(base / "lacking", n_train=12, n_test=4)
    with np.load(lacking / "cifar10" / "train.npz") as f:
        keep = f["y"] != 3
        x, y = f["x"][keep], f["y"][keep]
    np.savez(lacking / "cifar10" / "train.npz", x=x, y=y)

    torch.manual_seed(0)
    state = build_model("resnet8", 10).state_dict()
    torch.save(state, base / "good.pt")
    torch.save({k: v.clone().fill_(math.nan) if v.is_floating_point() else v for k, v in state.items()},
               base / "nan.pt")
    torch.save({"state_dict": state, "hook": os.system}, base / "callable.pt")
    (base / "truncated.pt").write_bytes((base / "good.pt").read_bytes()[:3000])
    for name, content in (("run-truncated", (base / "good.pt").read_bytes()[:3000]),
                          ("run-garbage", b"not a checkpoint at all" * 10)):
        (base / name).mkdir()
        (base / name / "checkpoint.pt").write_bytes(content)
    (base / "a-file").write_text("a regular file: nothing can be created under it\n")
    (base / "a-folder").mkdir()
    return base


def _teacher(*extra, data="good"):
    return ["train-teacher", "--arch", "resnet8", "--method", "natural", "--data-root", f"{{base}}/{data}",
            "--device", "cpu", "--monitor-n", "0", "--batch-size", "10", "--out", "{base}/out/run", *extra]


def _fair(*extra):
    return ["train", "--method", "fair-ard", "--student", "resnet8", "--teacher", "resnet8", "--teacher-checkpoint",
            "{base}/good.pt", "--data-root", "{base}/good", "--device", "cpu", "--monitor-n", "0",
            "--out", "{base}/out/run", *extra]


def _eval(*extra, ckpt="good.pt"):
    return ["evaluate", "--arch", "resnet8", "--checkpoint", f"{{base}}/{ckpt}", "--data-root", "{base}/good",
            "--device", "cpu", "--quiet", "--attacks", "clean,pgd20", *extra]


def _demo(*extra):
    return ["demo", "--data-root", "{base}/good", "--device", "cpu", "--n-per-class", "5", "--eval-per-class", "2",
            "--teacher-epochs", "1", "--student-epochs", "1", "--runs", "{base}/out/runs",
            "--out", "{base}/out/demo.json", *extra]


def _study(*extra):
    return ["study", "main_results", "--profile", "smoke", "--methods", "ard,fair-ard", "--quiet", *extra]


# (id, argv, words the message must name, early: refused before any data is loaded)
ROWS = [
    # --epochs 0 / negative: "finished" with untrained weights (train, train-teacher, demo)
    ("epochs-0", _teacher("--epochs", "0"), ["--epochs", "0"], True),
    ("epochs-negative", _fair("--epochs", "-2"), ["--epochs", "-2"], True),
    ("demo-teacher-epochs-0", _demo("--teacher-epochs", "0"), ["--teacher-epochs"], True),
    ("demo-student-epochs-negative", _demo("--student-epochs", "-1"), ["--student-epochs"], True),
    # 0 silently meaning "all" or "default"; negative counts crashing
    ("n-per-class-0", _teacher("--n-per-class", "0"), ["--n-per-class", "all"], True),
    ("n-per-class-negative", _teacher("--n-per-class", "-5"), ["--n-per-class"], True),
    ("evaluate-n-per-class-0", _eval("--n-per-class", "0"), ["--n-per-class", "all"], True),
    ("demo-eval-per-class-0", _demo("--eval-per-class", "0"), ["--eval-per-class"], True),
    ("batch-size-0", _teacher("--batch-size", "0"), ["--batch-size"], True),
    ("evaluate-batch-size-0", _eval("--batch-size", "0"), ["--batch-size"], True),
    # the other numeric domains
    ("lr-0", _teacher("--lr", "0"), ["--lr", "> 0"], True),
    ("lr-nan", _teacher("--lr", "nan"), ["--lr", "finite"], True),
    ("weight-decay-negative", _teacher("--weight-decay", "-1e-4"), ["--weight-decay"], True),
    ("milestones-0", _teacher("--milestones", "0"), ["--milestones"], True),
    ("milestones-decreasing", _teacher("--milestones", "3,2"), ["--milestones", "increasing"], True),
    ("seed-negative", _teacher("--seed", "-1"), ["--seed"], True),
    ("val-per-class-negative", _teacher("--val-per-class", "-1"), ["--val-per-class"], True),
    ("monitor-n-negative", _teacher("--monitor-n", "-1"), ["--monitor-n"], True),
    ("eps-0", _eval("--eps", "0"), ["--eps"], True),
    ("eps-inf", _eval("--eps", "inf"), ["--eps", "finite"], True),
    ("epochs-not-a-number", _teacher("--epochs", "two"), ["--epochs", "two"], True),
    # Fair-ARD's options: checked before the first epoch, naming the option
    ("clamp-reversed", _fair("--clamp", "3,1"), ["--clamp", "low <= high"], True),
    ("clamp-one-value", _fair("--clamp", "1"), ["--clamp"], True),
    ("clamp-three-values", _fair("--clamp", "1,2,3"), ["--clamp"], True),
    ("clamp-not-finite", _fair("--clamp", "1,inf"), ["--clamp", "finite"], True),
    ("beta-negative", _fair("--beta", "-2"), ["--beta", ">= 0"], True),
    ("beta-nan", _fair("--beta", "nan"), ["--beta", "finite"], True),
    ("attack-steps-0", _fair("--attack-steps", "0"), ["--attack-steps"], True),
    # outputs checked writable before the work
    ("evaluate-out-unwritable", _eval("--out", "{base}/a-file/result.json"), ["--out", "a-file"], True),
    ("evaluate-out-is-a-folder", _eval("--out", "{base}/a-folder"), ["--out", "a-folder", "folder"], True),
    ("train-out-unwritable", _teacher()[:-1] + ["{base}/a-file/run"], ["--out", "a-file"], True),
    ("demo-out-unwritable", _demo("--out", "{base}/a-file/demo.json"), ["--out", "a-file"], True),
    ("demo-runs-unwritable", _demo("--runs", "{base}/a-file/runs"), ["--runs", "a-file"], True),
    ("study-results-unwritable", _study("--results", "{base}/a-file/results"), ["--results", "a-file"], True),
    # damaged run checkpoints: the friendly loader, not a raw unpickling trace
    ("resume-truncated-checkpoint", _teacher("--resume")[:-2] + ["{base}/run-truncated", "--resume"],
     ["run-truncated/checkpoint.pt", "damaged or truncated"], False),
    ("resume-garbage-checkpoint", _teacher("--resume")[:-2] + ["{base}/run-garbage", "--resume"],
     ["run-garbage/checkpoint.pt", "not a PyTorch checkpoint"], False),
    # one line where a trace was
    ("truncated-train-npz", _teacher(data="truncated"), ["train.npz", "truncated"], False),
    ("device-banana-train", _teacher("--device", "banana"), ["--device", "banana", "cpu"], True),
    ("device-banana-evaluate", _eval("--device", "banana"), ["--device", "banana"], True),
    pytest.param("device-cuda-without-gpu", _teacher("--device", "cuda"), ["--device", "cuda", "no CUDA"], True,
                 marks=pytest.mark.skipif(not NO_CUDA, reason="a GPU is visible here")),
    pytest.param("device-cuda-evaluate-without-gpu", _eval("--device", "cuda:0"), ["--device", "cuda"], True,
                 marks=pytest.mark.skipif(not NO_CUDA, reason="a GPU is visible here")),
    ("student-kw-bad-value", _fair("--student-kw", "width=abc"), ["--student-kw", "width"], True),
    ("student-kw-unknown", _fair("--student-kw", "depth_x=3"), ["--student-kw", "depth_x"], True),
    ("student-kw-not-key-value", _fair("--student-kw", "width"), ["--student-kw", "KEY=VALUE"], True),
    ("option-unknown", _fair("--option", "foo=30"), ["foo", "valid options"], True),
    # misleading or silent
    ("evaluate-pickled-callable", _eval(ckpt="callable.pt"), ["callable.pt", "callable", "posix.system"], False),
    ("evaluate-truncated-checkpoint", _eval(ckpt="truncated.pt"), ["truncated.pt", "damaged or truncated"], False),
    ("evaluate-nan-weights", _eval(ckpt="nan.pt"), ["nan.pt", "non-finite"], False),
    ("evaluate-duplicate-attacks", _eval("--attacks", "clean,pgd20,pgd20"), ["--attacks", "pgd20", "more than once"],
     True),
    ("evaluate-no-attacks", _eval("--attacks", ""), ["--attacks", "empty", "pgd20"], True),
    ("train-data-lacks-a-class", _teacher(data="lacking"), ["class", "[3]", "lacking"], False),
    ("n-per-class-more-than-the-data", _teacher("--n-per-class", "13"), ["--n-per-class", "13", "at most 12"],
     False),
    ("evaluate-n-per-class-more-than-the-data", _eval("--n-per-class", "5"), ["--n-per-class", "at most 4"], False),
    ("demo-eval-per-class-more-than-the-data", _demo("--eval-per-class", "5"), ["--eval-per-class", "at most 4"],
     False),
    ("study-headline-missing-from-methods", _study("--headline", "rslad"), ["rslad", "fair-rslad", "methods"], True),
    ("study-eval-per-class-more-than-the-data", _study("--overrides", '{"eval_per_class": 5}'),
     ["eval_per_class", "at most 4"], False),
    ("study-n-per-class-0", _study("--overrides", '{"n_per_class": 0}'), ["n_per_class", "all"], True),
    ("val-per-class-leaves-no-training-images", _teacher("--n-per-class", "3", "--val-per-class", "3"),
     ["--val-per-class", "at most 2"], False),
]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def spies(monkeypatch):
    """Counts training epochs, evaluation attacks and data loads."""
    calls = {"epochs": 0, "attacks": 0, "loads": 0}

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(Trainer, "train_epoch", counting("epochs", Trainer.train_epoch))
    monkeypatch.setattr(EV, "predict_under_attack", counting("attacks", EV.predict_under_attack))
    monkeypatch.setattr(D, "load_split", counting("loads", D.load_split))
    return calls


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as stop:  # argparse's own errors
        rc = stop.code
    captured = capsys.readouterr()
    return rc, captured.err


ROWS = [pytest.param(*r, id=r[0]) if type(r) is tuple else pytest.param(*r.values, id=r.values[0], marks=r.marks)
        for r in ROWS]


@pytest.mark.parametrize("row, argv, words, early", ROWS)
def test_bad_input_is_refused_before_any_work(env, spies, capsys, monkeypatch, row, argv, words, early):
    monkeypatch.setenv("FAIRARD_DATA", str(env / "good"))
    monkeypatch.setenv("FAIRARD_RESULTS", str(env / "out" / "results"))
    before = _snapshot(env)
    rc, err = run_cli([a.replace("{base}", str(env)) for a in argv], capsys)
    assert rc == 2, err
    assert "Traceback" not in err and 1 <= len(err.strip().splitlines()) <= 2, err
    for word in words:
        assert word in err, (word, err)
    assert spies["epochs"] == 0 and spies["attacks"] == 0, "work started before the input was checked"
    if early:
        assert spies["loads"] == 0, "data was loaded before the input was checked"
    after = _snapshot(env)
    assert {k: v for k, v in after.items() if k in before} == before, "a file was overwritten"
    assert not any(k.endswith((".pt", ".json", ".jsonl")) for k in set(after) - set(before)), \
        f"outputs were written: {sorted(set(after) - set(before))}"


def test_a_bug_still_shows_its_traceback(env, monkeypatch):
    """Only errors fairard raises about the input become one line; a ValueError from inside a library keeps
    its trace (here: numpy's, planted in the data loader)."""
    def broken(*a, **k):
        return np.zeros(3).reshape(2, 2)  # ValueError raised by numpy, not by fairard

    monkeypatch.setattr(D, "load_split", broken)
    with pytest.raises(ValueError, match="reshape"):
        main([a.replace("{base}", str(env)) for a in _teacher()])


def test_zero_or_all_means_what_it_says(env, spies, capsys):
    """--n-per-class all evaluates every test image (and records None, not 0); a positive count that many."""
    out = env / "out" / "eval-all.json"
    assert run_cli([a.replace("{base}", str(env)) for a in _eval("--n-per-class", "all", "--attacks", "clean", "--out", str(out))],
                   capsys)[0] == 0
    import json
    result = json.loads(out.read_text())
    assert result["n"] == 40 and result["n_per_class"] is None
    x, y = D.test_tensors("cifar10", 2, root=env / "good")
    assert len(y) == 20
    with pytest.raises(ValueError, match="n_per_class.*all"):
        D.test_tensors("cifar10", 0, root=env / "good")


# ---------------------------------------------------------------- the Python API: the same checks, once
@pytest.mark.parametrize("field, value, words", [
    ("epochs", 0, ["epochs", "positive"]),
    ("batch_size", 0, ["batch_size"]),
    ("n_per_class", 0, ["n_per_class", "all"]),
    ("n_per_class", -3, ["n_per_class"]),
    ("attack_steps", 0, ["attack_steps"]),
    ("beta", -2.0, ["beta", ">= 0"]),
    ("beta", math.nan, ["beta", "finite"]),
    ("clamp", (3, 1), ["clamp", "low <= high"]),
    ("clamp", (1,), ["clamp"]),
    ("lr", -0.1, ["lr"]),
    ("seed", -1, ["seed"]),
    ("milestones", (0, 5), ["milestones"]),
    ("device", "banana", ["device", "banana"]),
    ("difficulty", "hardness", ["difficulty", "kappa"]),
])
def test_train_config_refuses_values_outside_their_domain(field, value, words):
    with pytest.raises(ValueError) as err:
        TrainConfig(method="fair-ard", student="resnet8", **{field: value})
    for word in words:
        assert word in str(err.value)


def test_profile_counts_take_all_and_never_0():
    from fairard import profiles

    assert profiles.get_profile("quick", n_per_class="all", eval_per_class="all").n_per_class is None
    assert profiles.get_profile("quick", eval_per_class="all").eval_per_class is None
    assert profiles.get_profile("quick", n_per_class="7").n_per_class == 7
    for field in ("n_per_class", "eval_per_class", "aa_per_class", "student_epochs", "batch_size", "attack_steps"):
        with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
            profiles.get_profile("quick", **{field: 0})
    with pytest.raises(ValueError, match="aa_per_class must be a positive integer"):
        profiles.get_profile("quick", aa_per_class="all")  # None there means "as eval_per_class", not all


def test_train_config_reads_all_as_the_whole_training_set():
    assert TrainConfig(method="ard", n_per_class="all").n_per_class is None
    assert TrainConfig(method="ard", n_per_class="all").key() == TrainConfig(method="ard").key()


# ---------------------------------------------------------------- state: never checkpoint nan, name the cause
def _fair_trainer(env, out, **kw):
    cfg = TrainConfig(method="fair-ard", student="resnet8", teacher="resnet8", teacher_checkpoint=str(env / "good.pt"),
                      data_root=str(env / "good"), n_per_class=2, epochs=2, batch_size=10, attack_steps=1,
                      device="cpu", monitor_n=0, amp="off", **kw)
    return Trainer(cfg, out, progress=False)


def test_non_finite_class_weights_are_never_checkpointed_and_the_cause_is_named(env, tmp_path, monkeypatch):
    original = FairWeighting.end_epoch

    def overflowing(self, stats):  # what a huge beta does: (1/d)**beta overflows, weights become nan
        weights = original(self, stats)
        self.weights = weights * math.nan
        return self.weights

    monkeypatch.setattr(FairWeighting, "end_epoch", overflowing)
    trainer = _fair_trainer(env, tmp_path / "run", beta=3.0)
    with pytest.raises(TrainingDiverged, match=r"class weights.*--beta 3\.0.*lower --beta") as err:
        trainer.fit(resume=False)
    assert "nothing was checkpointed" in str(err.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / "final.pt").exists()


def test_non_finite_weights_are_never_checkpointed(env, tmp_path, monkeypatch):
    trainer = _fair_trainer(env, tmp_path / "run")
    original = Trainer.train_epoch

    def poisoning(self, epoch, bar=None):
        record = original(self, epoch, bar)
        if epoch == 1:
            with torch.no_grad():
                next(self.student.parameters()).fill_(math.inf)
        return record

    monkeypatch.setattr(Trainer, "train_epoch", poisoning)
    with pytest.raises(TrainingDiverged, match="student's weights.*epoch 1.*checkpoint.*kept.*--lr"):
        trainer.fit(resume=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 0 and not checks.non_finite(state["student"])
    assert torch.isfinite(state["weighting"]["weights"]).all()


def test_resuming_a_checkpoint_with_nan_weights_is_refused(env, tmp_path):
    trainer = _fair_trainer(env, tmp_path / "run")
    trainer.out_dir.mkdir()
    state = trainer.state_dict(0)
    state["student"] = {k: v.clone().fill_(math.nan) if v.is_floating_point() else v
                        for k, v in state["student"].items()}
    torch.save(state, trainer.checkpoint_path)
    with pytest.raises(CheckpointError, match="non-finite.*remove it"):
        trainer.resume()


def test_evaluate_refuses_nan_outputs_of_finite_weights(tiny_problem):
    """Finite weights, nan outputs (a division by zero inside the model): refused, not 'airplane 100 %'."""
    model, x, y = tiny_problem

    class Broken(torch.nn.Module):
        def forward(self, inp):
            return model(inp) / 0 * 0

    with pytest.raises(ValueError, match="nan/inf"):
        EV.evaluate(Broken(), x, y, attacks=("clean",), class_names=[str(k) for k in range(10)], progress=False)


def test_a_checkpoint_pickling_a_callable_is_named_as_such(env):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint("resnet8", env / "callable.pt")
    msg = str(err.value)
    assert "callable" in msg and "posix.system" in msg and "damaged" not in msg and str(env / "callable.pt") in msg
