"""The trainer's wiring, checked against hand computations on a fixed batch.

Every test injects what it controls into the Trainer object it runs (the training batches, the class
weights, a spy around the bound ``trainer._attack`` the loop calls), so no module attribute is patched.
Each docstring names the change to the code that makes the test fail.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fixed_batch import HandSGD, fixed_batches, make_trainer, save_probe

W0 = torch.tensor([2.5, 0.9, 1.7, 0.85, 1.2, 2.1, 1.0, 1.4, 0.95, 1.9])  # forced first-epoch class weights


def attack_spy(trainer):
    """Record every training attack: its inputs, output, the student's predictions and mode at each attack
    forward, and a copy of the student as it is just before the loss (parameters of the coming step)."""
    calls, original = [], trainer._attack

    def spy(f, x_start, eps, spec, probe):
        preds, modes = [], []
        def record(module, inputs, output):
            preds.append(output.detach().argmax(1))
            modes.append(module.training)

        hook = trainer.student.register_forward_hook(record)
        try:
            x_adv, kappa = original(f, x_start, eps, spec, probe)
        finally:
            hook.remove()
        calls.append(SimpleNamespace(x=f.x.clone(), y=f.y.clone(), eps=eps, x_adv=x_adv.clone(), preds=preds,
                                     modes=modes, epoch=f.epoch, student=copy.deepcopy(trainer.student)))
        return x_adv, kappa

    trainer._attack = spy
    return calls


def hand_ard_loss(student, teacher, x, x_adv, tau=30.0):
    """ARD's per-sample loss written out: tau^2 * KL(softmax(T(x)/tau) || softmax(S(x')/tau)) / C."""
    with torch.no_grad():
        p = torch.softmax(teacher(x) / tau, 1)
    log_q = torch.log_softmax(student(x_adv) / tau, 1)
    return tau ** 2 * (p * (p.log() - log_q)).sum(1) / p.shape[1]


def hand_class_weights(kappa_mean, beta=2.0):
    raw = (1 / (kappa_mean.double() + 1e-5)) ** beta
    return (len(raw) * raw / raw.sum()).clamp(5 / 6, 5 / 2)


def class_mean(values, y):
    return torch.stack([values[y == k].double().mean() for k in range(10)])


@pytest.fixture(scope="module")
def fair_ard_run(synthetic_root, tmp_path_factory):
    """Two epochs of Fair-ARD, one fixed batch of 20 each, first-epoch weights forced to W0."""
    tmp = tmp_path_factory.mktemp("fair-ard")
    teacher = save_probe(tmp / "teacher.pt", seed=1)
    trainer = make_trainer(synthetic_root, tmp / "run", fixed_batches(1, per_class=2), teacher,
                           method="fair-ard", epochs=2)
    trainer.weighting.weights = W0.clone()
    start = [p.detach().clone() for p in trainer.student.parameters()]
    calls = attack_spy(trainer)
    trainer.fit(resume=False)
    return SimpleNamespace(trainer=trainer, calls=calls, start=start, history=trainer.history)


def _hand_step(run, epoch, weights, sgd, params):
    """Check the copy's parameters equal ``params``; return the hand SGD update of the weighted loss."""
    c = run.calls[epoch]
    net = c.student.train()
    for p, q in zip(net.parameters(), params):
        torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)
    loss = (weights.float()[c.y] * hand_ard_loss(net, run.trainer.teacher, c.x, c.x_adv)).sum() / len(c.y)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    return sgd.step([p.detach() for p in net.parameters()], grads)


def test_steps_are_sgd_on_the_class_weighted_loss(fair_ard_run):
    """Both steps equal SGD (lr 0.1, momentum 0.9, Nesterov, wd 2e-4) on sum_i w_{y_i} l_i / B computed by hand,
    with the forced weights in epoch 0 and the weights of epoch 0's kappa in epoch 1.
    Fails if the class weights are not applied, are indexed by anything but the label, are divided by
    sum(w) instead of B, if epoch 0 already used the next weights, or if Fair-* loses Nesterov/momentum/wd."""
    run = fair_ard_run
    sgd = HandSGD(lr=0.1, momentum=0.9, weight_decay=2e-4, nesterov=True)
    after_first = _hand_step(run, 0, W0, sgd, run.start)
    w1 = torch.tensor(run.history[0]["next_class_weights"])
    after_second = _hand_step(run, 1, w1, sgd, after_first)
    for p, q in zip(run.trainer.student.parameters(), after_second):
        torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)
    assert not torch.equal(w1, W0)


def test_epoch_statistics_equal_a_hand_count(fair_ard_run):
    """kappa = correct predictions over the attack's forwards before each step, robust accuracy = the loss's
    student(x') prediction, adv_loss = the *unweighted* per-sample loss; the next weights follow from kappa
    and are the ones epoch 1 uses. Fails if kappa counts the final iterate or skips the first, if the
    logged loss statistic is the class-weighted one, or if the weights lag or lead by an epoch."""
    run = fair_ard_run
    for epoch, c in enumerate(run.calls):
        record = run.history[epoch]
        assert len(c.preds) == 3  # attack_steps forwards, each before its step
        kappa = torch.stack([(p == c.y) for p in c.preds]).sum(0)
        stats = record["class_stats"]
        torch.testing.assert_close(torch.tensor(stats["kappa"], dtype=torch.float64), class_mean(kappa, c.y))
        net = c.student.train()
        with torch.no_grad():
            robust = net(c.x_adv).argmax(1) == c.y
            loss = hand_ard_loss(net, run.trainer.teacher, c.x, c.x_adv)
        torch.testing.assert_close(torch.tensor(stats["robust_correct"], dtype=torch.float64), class_mean(robust, c.y))
        # tau = 30 makes the KL a small difference of logs: fp32 cancellation leaves ~0.1 % of it uncertain.
        torch.testing.assert_close(torch.tensor(stats["adv_loss"], dtype=torch.float64), class_mean(loss, c.y),
                                   rtol=5e-3, atol=0)
        torch.testing.assert_close(torch.tensor(record["next_class_weights"], dtype=torch.float64),
                                   hand_class_weights(class_mean(kappa, c.y)), rtol=1e-6, atol=1e-6)
    assert run.history[0]["class_weights"] == pytest.approx(W0.tolist())
    assert run.history[1]["class_weights"] == run.history[0]["next_class_weights"]


@pytest.mark.parametrize("method,mode", [("ard", True), ("iad", True), ("rslad", False), ("mtard", False)])
def test_training_attack_runs_in_the_methods_mode(synthetic_root, tmp_path, method, mode):
    """ARD and IAD attack their student in train mode (batch statistics), RSLAD and MTARD in eval mode, and the
    loss forwards run in train mode afterwards. Fails if the trainer sets the wrong mode for the attack or
    leaves the student in eval mode for the loss."""
    teacher = save_probe(tmp_path / "teacher.pt", seed=1)
    kw = {"method_options": {"mtard_clean_target": "robust_teacher_adv"}} if method == "mtard" else {}
    trainer = make_trainer(synthetic_root, tmp_path / "run", fixed_batches(1), teacher, method=method, **kw)
    calls = attack_spy(trainer)
    loss_modes = []
    original_loss = trainer.method.per_sample_loss
    trainer.method.per_sample_loss = lambda f: (loss_modes.append(f.student.training), original_loss(f))[1]
    trainer.fit(resume=False)
    assert calls[0].modes == [mode] * 3
    assert loss_modes == [True]


# ------------------------------------------------------------------ optimiser and schedule defaults

# The official recipes (research/papers.md): SGD lr 0.1, momentum 0.9; weight decay, epochs and lr milestones
# per method; Nesterov only in the Fair-* scripts.
OFFICIAL = {
    "natural": (5e-4, 100, (75, 90)), "pgd_at": (5e-4, 100, (75, 90)), "trades": (5e-4, 100, (75, 90)),
    "ard": (2e-4, 200, (100, 150)), "iad": (2e-4, 200, (100, 150)), "kdiga": (2e-4, 200, (100, 150)),
    "kdiga_ard": (2e-4, 200, (100, 150)), "cfa": (5e-4, 200, (100, 150)),
    "rslad": (2e-4, 300, (215, 260, 285)), "mtard": (2e-4, 300, (215, 260, 285)),
    "absld": (2e-4, 300, (215, 260, 285)),
    "frl-rw": (5e-4, 120, (40, 80)), "frl-rmrw": (5e-4, 120, (40, 80)), "bat": (2e-4, 200, (74, 89, 99)),
}
OFFICIAL_LR = {"frl-rw": 0.001, "frl-rmrw": 0.001}  # FRL fine-tunes at lr 0.001; every other recipe starts at 0.1


@pytest.mark.parametrize("fair", [False, True])
def test_optimiser_follows_each_methods_recipe(synthetic_root, tmp_path, fair):
    """The SGD the trainer builds for every registered method (and its fair- variant): lr 0.1, momentum 0.9,
    the method's weight decay, epochs and milestones, batch 128, Nesterov exactly for fair-*.
    Fails if a method's defaults change or the Nesterov rule is lost."""
    from fairard.methods import list_methods

    assert sorted(list_methods()) == sorted(OFFICIAL)
    teacher = save_probe(tmp_path / "teacher.pt", seed=1)
    for method, (wd, epochs, milestones) in OFFICIAL.items():
        name = f"fair-{method}" if fair else method
        frl = {"init_checkpoint": str(teacher), "val_per_class": 1} if method.startswith("frl") else {}
        trainer = make_trainer(synthetic_root, tmp_path / name, fixed_batches(1), teacher, method=name,
                               nat_teacher="probe_cnn", nat_teacher_checkpoint=teacher, epochs=None, milestones=None,
                               batch_size=None, **frl)
        (group,) = trainer.optimizer.param_groups
        lr = OFFICIAL_LR.get(method, 0.1)
        assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (lr, 0.9, wd, fair), name
        assert (trainer.epochs, tuple(trainer.milestones), trainer.batch_size) == (epochs, milestones, 128), name


# ------------------------------------------------------------------ stateful methods inside the trainer

def test_cfa_classwise_eps_reaches_the_attack(synthetic_root, tmp_path):
    """With calibrated class accuracies R_k, CFA's training attack perturbs each sample by exactly
    eps_k = (lambda1 + R_k) * 8/255 at most (and reaches it). Fails if the trainer attacks with the uniform
    eps, or with the radius of another sample's class."""
    trainer = make_trainer(synthetic_root, tmp_path, fixed_batches(1, per_class=2), method="cfa",
                           method_options={"begin": 0})
    robust_acc = 0.025 * torch.arange(10.0)  # eps_k from 4/255 to 5.8/255, all below 3 steps of 2/255
    trainer.method.class_robust_acc.copy_(robust_acc)
    trainer.method.has_stats.fill_(True)
    calls = attack_spy(trainer)
    trainer.fit(resume=False)
    c = calls[0]
    expected = (0.5 + robust_acc[c.y]) * 8 / 255
    reached = (c.x_adv - c.x).abs().flatten(1).amax(1)
    torch.testing.assert_close(reached, expected, rtol=0, atol=1e-6)


def _run_with_epoch_snapshots(trainer, before_epoch=None):
    """fit(), recording the student's state at the end of each train_epoch (before FAWA looks at it)."""
    states, original = [], trainer.train_epoch

    def wrapped(epoch, bar=None):
        if before_epoch is not None:
            before_epoch(epoch)
        record = original(epoch, bar)
        states.append({k: v.detach().clone() for k, v in trainer.student.state_dict().items()})
        return record

    trainer.train_epoch = wrapped
    trainer.fit(resume=False)
    return states


def test_fawa_averages_only_qualifying_epochs(synthetic_root, tmp_path):
    """FAWA's EMA takes an epoch's weights only when its validation worst-class accuracy reaches the threshold:
    with epochs 0 and 2 qualifying and epoch 1 not, the final weights are 0.88 * w0 + 0.12 * w2 (integer
    buffers from w2). Fails if FAWA averages every epoch, never, or the trainer ignores its result."""
    trainer = make_trainer(synthetic_root, tmp_path, fixed_batches(1), method="cfa", epochs=3, val_per_class=2)
    thresholds = {0: 0.0, 1: 1.01, 2: 0.0}  # worst-class accuracy is in [0, 1]: 0 always, 1.01 never qualifies
    states = _run_with_epoch_snapshots(
        trainer, before_epoch=lambda e: setattr(trainer.method, "fawa_threshold", thresholds[e]))
    final = trainer.final_state_dict()
    for k, v in final.items():
        expected = 0.88 * states[0][k] + 0.12 * states[2][k] if v.is_floating_point() else states[2][k]
        torch.testing.assert_close(v, expected, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(states[1]["0.weight"], states[2]["0.weight"])  # epoch 1 trained but was skipped


def test_absld_temperatures_step_by_r_and_r_decays_before_the_update(synthetic_root, tmp_path):
    """ABSLD moves the class temperatures at every epoch end by at most r (exactly r for the class farthest
    from the mean loss); at the epoch that ends in an lr decay, r is lowered first (0.1 -> 0.01).
    Fails if the end-of-epoch hook is not called, if the decay hook is not called or comes after it."""
    teacher = save_probe(tmp_path / "teacher.pt", seed=1)
    trainer = make_trainer(synthetic_root, tmp_path / "run", fixed_batches(1, per_class=2), teacher,
                           method="absld", epochs=2, milestones=(2,))
    taus = [(trainer.method.tau_adv.clone(), trainer.method.tau_nat.clone())]
    original = trainer.train_epoch

    def wrapped(epoch, bar=None):
        record = original(epoch, bar)
        taus.append((trainer.method.tau_adv.clone(), trainer.method.tau_nat.clone()))
        return record

    trainer.train_epoch = wrapped
    trainer.fit(resume=False)
    for epoch, r in ((0, 0.1), (1, 0.01)):  # epoch 1 ends at the milestone 2
        for before, after in zip(taus[epoch], taus[epoch + 1]):
            assert float((after - before).abs().max()) == pytest.approx(r, rel=1e-5), (epoch, before, after)
    assert float(trainer.method.r_now) == pytest.approx(0.01)


def test_mtard_balance_follows_the_rule_every_batch(synthetic_root, tmp_path):
    """MTARD's lambda_nat <- lambda_nat - eta (lambda_nat - Lhat_nat / (Lhat_adv + Lhat_nat)), Lhat = batch-mean
    KL / first batch's, lambda_adv = 1 - lambda_nat, eta x0.1 at the lr decay, and each batch's loss uses the
    updated lambdas. Fails if the balance is not updated, not normalised by the first batch's losses, or if
    eta does not decay at the lr decay."""
    teacher = save_probe(tmp_path / "teacher.pt", seed=1)
    trainer = make_trainer(synthetic_root, tmp_path / "run", fixed_batches(3), teacher, method="fair-mtard",
                           nat_teacher="probe_cnn", nat_teacher_checkpoint=teacher, epochs=2, milestones=(1,))
    trainer.weighting.weights = W0.clone()
    seen, original = [], trainer.method.per_sample_loss

    def spy(f):
        out = original(f)
        with torch.no_grad():  # the two KLs from the forwards the loss cached, by hand (log(p + 1e-5) target, /C)
            kls = []
            for t, s in ((f.t_adv, f.s_adv), (f.nt_clean, f.s_clean)):
                p = torch.softmax(t, 1)
                kls.append(((p * (torch.log(p + 1e-5) - torch.log_softmax(s, 1))).sum(1) / 10))
        seen.append((f.epoch, kls, out.detach().clone()))
        return out

    trainer.method.per_sample_loss = spy
    trainer.fit(resume=False)
    lam, init = 0.5, None
    for epoch, (kl_adv, kl_nat), out in seen:
        eta = 0.025 if epoch == 0 else 0.0025
        means = torch.stack([kl_adv.mean(), kl_nat.mean()])
        init = means if init is None else init
        rel = means / init
        lam = lam - eta * (lam - float(rel[1] / rel.sum()))
        torch.testing.assert_close(out, (1 - lam) * kl_adv + lam * kl_nat, rtol=1e-5, atol=1e-8)
    assert len(seen) == 6 and lam != 0.5
    assert float(trainer.method.lambda_nat) == pytest.approx(lam, rel=1e-5)
    assert float(trainer.method.lambda_adv) == pytest.approx(1 - lam, rel=1e-5)
