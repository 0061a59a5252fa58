"""The training engine: schedules, Fair weighting over epochs, exact resume, kill/resume, NaN guard, DDP."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, shared_data_root
from fairard.fairness import class_weights
from fairard.train import TrainConfig, Trainer, TrainingDiverged, lr_at, train


def small_cfg(root, teacher, **kw):
    base = dict(method="fair-ard", student="resnet8", teacher="resnet8", teacher_checkpoint=str(teacher),
                data_root=str(root), epochs=2, milestones=(1,), batch_size=32, attack_steps=2, monitor_n=20,
                device="cpu", amp="off")
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedules():
    assert [lr_at(e, 0.1, (2, 4)) for e in range(6)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    official = [lr_at(e, 0.1, (2, 4), "official_single_decay") for e in range(6)]
    assert official == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.01, 0.01])
    with pytest.raises(ValueError, match="valid: step, official_single_decay"):
        TrainConfig(method="ard", lr_schedule="cosine")


def test_fair_weights_start_at_one_and_follow_epoch_kappa(synthetic_root, teacher_ckpt, tmp_path):
    trainer = Trainer(small_cfg(synthetic_root, teacher_ckpt), tmp_path, progress=False)
    trainer.fit(resume=False)
    first, second = trainer.history
    assert first["class_weights"] == [1.0] * 10
    kappa = torch.tensor(first["class_stats"]["kappa"], dtype=torch.float64)
    expected = class_weights(kappa, beta=2.0, clamp=(5 / 6, 5 / 2))
    assert torch.allclose(torch.tensor(first["next_class_weights"], dtype=torch.float64), expected, atol=1e-6)
    assert second["class_weights"] == first["next_class_weights"]
    assert second["class_weights"] != first["class_weights"]
    assert all(0 <= k <= 2 for k in first["class_stats"]["kappa"])  # 2 attack steps
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [0, 1]


def _states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["fair-ard", "fair-rslad"])
def test_resume_equals_uninterrupted(synthetic_root, teacher_ckpt, tmp_path, method):
    cfg = small_cfg(synthetic_root, teacher_ckpt, method=method)
    full = Trainer(cfg, tmp_path / "full", progress=False)
    full.fit(resume=False)

    first = Trainer(cfg, tmp_path / "split", progress=False)
    first.epochs = 1  # stop after epoch 0, as if interrupted there
    first.fit(resume=False)
    second = Trainer(cfg, tmp_path / "split", progress=False)
    assert second.resume() and second.start_epoch == 1
    second.fit(resume=False)

    assert _states_equal(full.student.state_dict(), second.student.state_dict())
    assert torch.equal(full.weighting.weights, second.weighting.weights)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in second.history]


def test_resume_refuses_other_config(synthetic_root, teacher_ckpt, tmp_path):
    t = Trainer(small_cfg(synthetic_root, teacher_ckpt, epochs=1), tmp_path, progress=False)
    t.fit(resume=False)
    other = Trainer(small_cfg(synthetic_root, teacher_ckpt, epochs=1, beta=3.0), tmp_path, progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        other.resume()


def _cli(root, teacher, out, epochs, *extra):
    return [sys.executable, "-m", "fairard", "train", "--method", "fair-ard", "--student", "resnet8",
            "--teacher", "resnet8", "--teacher-checkpoint", str(teacher), "--data-root", str(root),
            "--epochs", str(epochs), "--milestones", "2", "--batch-size", "32", "--attack-steps", "3",
            "--monitor-n", "0", "--device", "cpu", "--amp", "off", "--out", str(out), *extra]


def test_killed_mid_epoch_resumes_to_same_weights(tmp_path, teacher_ckpt):
    from conftest import write_synthetic_cifar

    root = write_synthetic_cifar(tmp_path / "data", n_train=60)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    epochs = 4
    subprocess.run(_cli(root, teacher_ckpt, tmp_path / "ref", epochs), check=True, env=env, capture_output=True)

    victim = subprocess.Popen(_cli(root, teacher_ckpt, tmp_path / "run", epochs), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 1):
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = log.read_text().count("\n")
    assert 1 <= done < epochs, "the run should have been killed part-way"
    assert not (tmp_path / "run" / "final.pt").exists()

    again = subprocess.run(_cli(root, teacher_ckpt, tmp_path / "run", epochs), env=env, capture_output=True, text=True)
    assert again.returncode != 0 and "--resume" in again.stderr  # never silently overwrites a run
    subprocess.run(_cli(root, teacher_ckpt, tmp_path / "run", epochs, "--resume"), check=True, env=env,
                   capture_output=True)
    ref = torch.load(tmp_path / "ref" / "final.pt", weights_only=True)
    resumed = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert _states_equal(ref, resumed)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(synthetic_root, teacher_ckpt, tmp_path, monkeypatch):
    trainer = Trainer(small_cfg(synthetic_root, teacher_ckpt, epochs=3), tmp_path, progress=False)
    original = trainer.method.per_sample_loss

    def poisoned(f):
        loss = original(f)
        return loss * float("nan") if f.epoch == 1 else loss

    monkeypatch.setattr(trainer.method, "per_sample_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="nan/inf in epoch 1.*checkpoint.*kept"):
        trainer.fit(resume=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["student"].values()
                                       if v.is_floating_point())


def test_missing_teacher_is_a_clear_error(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="needs a teacher.*train-teacher"):
        Trainer(TrainConfig(method="ard", student="resnet8", data_root=str(synthetic_root), device="cpu"), tmp_path)


def test_cli_unknown_method_lists_valid(synthetic_root, tmp_path):
    r = subprocess.run([sys.executable, "-m", "fairard", "train", "--method", "fair-foo", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "valid:" in r.stderr and "fair-rslad" in r.stderr


DDP_SCRIPT = textwrap.dedent("""
    import json, sys, torch, torch.nn as nn
    from fairard.models import register_model
    from fairard.train import TrainConfig, Trainer, init_distributed

    @register_model
    def tiny_cnn(num_classes=10, **kw):  # no BatchNorm: per-rank batch statistics would differ
        return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, num_classes))

    root, teacher, out = sys.argv[1:4]
    rank, world = init_distributed()
    cfg = TrainConfig(method="fair-ard", student="tiny_cnn", teacher="tiny_cnn", teacher_checkpoint=teacher,
                      data_root=root, epochs=2, milestones=(), batch_size=40, attack_steps=3, monitor_n=0,
                      device="cpu", amp="off", lr=0.05)
    trainer = Trainer(cfg, out + "/run", progress=False)
    trainer.fit(resume=False)
    if rank == 0:
        json.dump({"world": world, "history": trainer.history}, open(out + "/result.json", "w"))
""")


def test_torchrun_two_processes_match_one(synthetic_root, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    sys.path.insert(0, str(tmp_path))
    torch.manual_seed(0)
    teacher = nn_teacher = tmp_path / "teacher.pt"
    import torch.nn as nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    torch.save(model.state_dict(), teacher)
    results = {}
    for world in (1, 2):
        out = tmp_path / f"w{world}"
        out.mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port",
               str(29500 + world + os.getpid() % 1000), str(script), str(synthetic_root), str(teacher), str(out)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        results[world] = json.loads((out / "result.json").read_text())
    assert results[2]["world"] == 2
    one, two = results[1]["history"], results[2]["history"]
    for h1, h2 in zip(one, two):
        assert h1["class_stats"]["kappa"] == pytest.approx(h2["class_stats"]["kappa"], abs=1e-6)
        assert h1["next_class_weights"] == pytest.approx(h2["next_class_weights"], abs=1e-5)
    assert one[1]["class_weights"] != [1.0] * 10
    # The trained weights, not only the statistics: two half-batches with all-reduced gradients take the same
    # steps as one process (up to the rounding of the gradient sum). Fails if a rank skips the all-reduce.
    final = [torch.load(tmp_path / f"w{world}" / "run" / "final.pt", weights_only=True) for world in (1, 2)]
    initial = model.state_dict()  # the student starts from seed 0 too: the same weights as this teacher
    assert final[0].keys() == final[1].keys() == initial.keys()
    for k in final[0]:
        torch.testing.assert_close(final[1][k], final[0][k], rtol=1e-4, atol=1e-6)
        assert not torch.allclose(final[0][k], initial[k])  # it trained


@pytest.mark.skipif(shared_data_root() is None, reason="needs the CIFAR-10 copy ($FAIRARD_DATA or ../shared/data)")
def test_trades_teacher_more_robust_than_natural(tmp_path):
    from fairard.evaluate import predict_under_attack
    from fairard.metrics import summarize
    from fairard.__main__ import load_test_images

    root = shared_data_root()
    x, y = load_test_images("cifar10", root, 50, "cpu")
    robust = {}
    for method in ("natural", "trades"):
        cfg = TrainConfig(method=method, student="resnet8", data_root=str(root), n_per_class=100, epochs=3,
                          milestones=(), batch_size=64, monitor_n=0, device="cpu", attack_steps=5)
        model = train(cfg, tmp_path / method, progress=False)
        pred = predict_under_attack(model, x, y, "pgd20")
        robust[method] = summarize(y, pred, [str(k) for k in range(10)])["accuracy"]
    assert robust["trades"] > robust["natural"] + 0.03, robust


@pytest.mark.parametrize("method,measure", [("fair-ard", "robust_acc"), ("fair-ard", "adv_loss"),
                                            ("fair-ard", "clean_acc"), ("fair-kdiga", "robust_acc")])
def test_every_difficulty_measure_yields_weights(synthetic_root, teacher_ckpt, tmp_path, method, measure):
    trainer = Trainer(small_cfg(synthetic_root, teacher_ckpt, method=method, difficulty=measure, epochs=1,
                                monitor_n=0), tmp_path, progress=False)
    trainer.fit(resume=False)
    record = trainer.history[0]
    stat = {"robust_acc": "robust_correct", "adv_loss": "adv_loss", "clean_acc": "clean_correct"}[measure]
    values = torch.tensor(record["class_stats"][stat], dtype=torch.float64)
    easiness = 1 / values if measure == "adv_loss" else values
    expected = class_weights(easiness, beta=2.0, clamp=(5 / 6, 5 / 2))
    assert torch.allclose(torch.tensor(record["next_class_weights"], dtype=torch.float64), expected, atol=1e-5)


def test_eval_mode_training_attack_folds_batchnorm_and_attacks_alike(synthetic_root, teacher_ckpt, tmp_path):
    """RSLAD attacks its student in eval mode: the trainer folds BN into the convolutions for that attack
    (and in the frozen teacher) only; the folded attack is the same attack up to rounding."""
    from fairard.attacks import pgd
    from fairard.methods import Forward
    trainer = Trainer(small_cfg(synthetic_root, teacher_ckpt, method="rslad", attack_steps=5, monitor_n=0),
                      tmp_path, progress=False)
    trainer.fit(resume=False)  # trained BN statistics, so folding has something to fold
    x, y, _ = next(iter(trainer.train_loader))
    f = Forward(trainer.student, x, y, teacher=trainer.teacher, epoch=0, num_classes=10)
    spec, probe = trainer._attack_spec()
    calls = []
    hook = trainer.student.bn1.register_forward_pre_hook(lambda m, _: calls.append(m))
    x_start = x.clone()
    x_adv, _ = trainer._attack(f, x_start, spec.eps, spec, probe)
    hook.remove()
    assert calls == []  # the stem's BN never ran as a module: its convolution carried it, folded
    assert not any(getattr(m, "fold", False) for m in trainer.student.modules())  # folding ended with the attack
    assert all(m.fold for m in trainer.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    trainer.student.eval()
    x_ref = pgd(trainer.student, x, y, eps=spec.eps, step_size=spec.step_size, steps=5, loss="kl",
                target_probs=trainer.method.attack_target(f), x_start=x_start)
    trainer.student.train()
    assert (x_adv != x).float().mean() > 0.5
    assert (x_adv == x_ref).float().mean() > 0.99  # fp32 rounding may flip a rare gradient sign


def test_run_key_names_the_training_arithmetic(monkeypatch):
    import fairard.train as T
    cfg = TrainConfig(method="ard", teacher="resnet8", teacher_checkpoint="t.pt")
    before = cfg.key()
    monkeypatch.setattr(T, "TRAINING_ARITHMETIC", T.TRAINING_ARITHMETIC + 1)
    assert cfg.key() != before  # runs and checkpoints of older arithmetic are not reused


@pytest.mark.parametrize("dataset, size, classes", [("svhn", 32, 10), ("tiny-imagenet", 64, 200)])
def test_trains_and_monitors_on_synthetic_svhn_and_tiny_imagenet(tmp_path, dataset, size, classes):
    """End to end on a synthetic npz stand-in: each dataset's class count, image size, augmentation and lr."""
    import numpy as np

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        y = np.arange(classes).repeat(2 if classes == 10 else 1)
        x = rng.integers(0, 256, (len(y), size, size, 3), dtype=np.uint8)
        (tmp_path / dataset).mkdir(exist_ok=True)
        np.savez(tmp_path / dataset / f"{split}.npz", x=x, y=y)
    cfg = TrainConfig(method="pgd_at", student="resnet8", dataset=dataset, data_root=str(tmp_path), epochs=1,
                      batch_size=10, attack_steps=1, monitor_n=10 if classes == 10 else 0, device="cpu", amp="off")
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.train_loader.flip is (dataset != "svhn")
    assert trainer.train_loader.padding == (8 if size == 64 else 4)
    assert trainer.base_lr == pytest.approx(0.01 if dataset == "svhn" else 0.1)   # SVHN: lr x0.1
    model = trainer.fit()
    assert model.get_classifier().out_features == classes
    if classes == 10:  # the per-epoch PGD-10 monitor; at 200 classes it would cost a minute on CPU
        assert len(trainer.history[0]["monitor"]["clean"]["per_class"]) == classes


def test_frl_fine_tunes_its_init_checkpoint_and_resumes_exactly(synthetic_root, teacher_ckpt, tmp_path):
    """FRL starts from the given robust weights, updates its multipliers on the validation split before
    every epoch (state that a resumed run must restore), and refuses to start without either."""
    cfg = dataclasses.replace(small_cfg(synthetic_root, teacher_ckpt, method="frl-rmrw", n_per_class=8,
                                        val_per_class=4, monitor_n=0),
                              teacher=None, teacher_checkpoint=None, init_checkpoint=str(teacher_ckpt))
    start = Trainer(cfg, tmp_path / "start", progress=False)
    assert _states_equal(start.student.state_dict(), torch.load(teacher_ckpt, weights_only=True))
    full = Trainer(cfg, tmp_path / "full", progress=False)
    full.fit(resume=False)
    assert full.method.lambda_margin.abs().sum() > 0   # two updates happened (epochs 0 and 1)
    first = Trainer(cfg, tmp_path / "split", progress=False)
    first.epochs = 1
    first.fit(resume=False)
    second = Trainer(cfg, tmp_path / "split", progress=False)
    second.fit()
    assert _states_equal(full.student.state_dict(), second.student.state_dict())
    assert _states_equal(full.method.state_dict(), second.method.state_dict())
    with pytest.raises(ValueError, match="init-checkpoint"):
        Trainer(dataclasses.replace(cfg, init_checkpoint=None), tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="val_per_class"):
        Trainer(dataclasses.replace(cfg, val_per_class=0), tmp_path / "x", progress=False)
    assert cfg.key() != dataclasses.replace(cfg, init_checkpoint="other.pt").key()


def test_bat_trains_on_its_early_stopped_iterates(synthetic_root, teacher_ckpt, tmp_path, monkeypatch):
    from fairard import methods

    seen = {}
    original = methods.BAT.per_sample_loss

    def spy(self, f):
        seen.update(x=f.x, first_adv=f.x_adv, last_clean=f.x_last_clean)
        return original(self, f)

    monkeypatch.setattr(methods.BAT, "per_sample_loss", spy)
    cfg = dataclasses.replace(small_cfg(synthetic_root, teacher_ckpt, method="bat", epochs=1, attack_steps=3,
                                        n_per_class=8, monitor_n=0), teacher=None, teacher_checkpoint=None)
    Trainer(cfg, tmp_path, progress=False).fit(resume=False)
    for key in ("first_adv", "last_clean"):
        assert (seen[key] - seen["x"]).abs().max() <= 0.031 + 1e-6
    assert not torch.equal(seen["first_adv"], seen["last_clean"])
