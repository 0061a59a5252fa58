"""Every method's per-sample loss against its formula written out by hand.

The models are tiny linear maps in float64 and the reference formulas below use only
plain tensor arithmetic (explicit exp/log/sums, the linear map as a matmul), so they
share no code with fairard.methods.
"""

import pytest
import torch
from torch import nn

from fairard.fairness import ClassStats
from fairard.methods import (METHODS, AttackConfig, Forward, get_method, kl_div, list_methods,
                             parse_method_name)

B, C, SHAPE = 4, 3, (1, 2, 3)
Y = torch.tensor([0, 2, 1, 2])


def linear(seed, classes=C):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(6, classes)).double()
    with torch.no_grad():
        m[1].weight.copy_(torch.randn(classes, 6, generator=g, dtype=torch.float64))
        m[1].bias.copy_(torch.randn(classes, generator=g, dtype=torch.float64))
    return m


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, *SHAPE, generator=g, dtype=torch.float64)
    x_adv = (x + (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5) * 0.6).clamp(0, 1)
    return x, x_adv


# ---- hand-written reference formulas ---------------------------------------------------------

def z(m, x):
    """The linear model as an explicit matmul."""
    return x.reshape(x.shape[0], -1) @ m[1].weight.T + m[1].bias


def softmax(logits):
    e = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def kl(p, q, log_eps=0.0):
    """sum_c p log(p/q); with log_eps, p (log(p + eps) - log q) as RSLAD/MTARD/ABSLD code it."""
    return (p * (torch.log(p + log_eps) - torch.log(q))).sum(dim=1)


def ce(logits, y):
    return -torch.log(softmax(logits)[torch.arange(len(y)), y])


def ce_input_grad(m, x, y):
    """d CE_i / d x_i of a linear model: W^T (softmax(z_i) - e_{y_i}), reshaped like x."""
    onehot = torch.eye(m[1].weight.shape[0], dtype=x.dtype)[y]
    return ((softmax(z(m, x)) - onehot) @ m[1].weight).reshape(x.shape)


# ---- fixtures ----------------------------------------------------------------------------------

@pytest.fixture
def nets():
    return linear(1), linear(2), linear(3)  # student, robust teacher, natural teacher


def forward(nets, epoch=0, seed=0, y=Y):
    s, t, nt = nets
    x, x_adv = inputs(seed)
    return Forward(s, x, y, x_adv=x_adv, teacher=t, nat_teacher=nt, epoch=epoch, num_classes=C)


def loss_of(name, nets, epoch=0, seed=0, **options):
    return get_method(name, C, **options).per_sample_loss(forward(nets, epoch, seed))


# ---- registry, options, configs ----------------------------------------------------------------

def test_registry_names_and_errors():
    assert set(list_methods()) == {"natural", "pgd_at", "trades", "ard", "iad", "rslad", "mtard", "kdiga",
                                   "kdiga_ard", "absld", "cfa", "frl-rw", "frl-rmrw", "bat"}
    with pytest.raises(ValueError, match="valid: .*'ard'"):
        get_method("ardd")
    with pytest.raises(ValueError, match="valid options.*'tau'"):
        get_method("ard", temperature=3)
    with pytest.raises(ValueError, match="choose one of"):
        get_method("mtard", mtard_clean_target="teacher")
    assert get_method("ard", tau=None).tau == 30.0  # None = not set, keep the default
    assert parse_method_name("fair-rslad") == ("rslad", True)
    assert type(get_method("fair-ard")) is type(get_method("ard"))
    with pytest.raises(ValueError, match="unknown method 'fair-x'"):
        parse_method_name("fair-x")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_hparams_are_the_options(name):
    m = get_method(name, C)
    defaults = type(m).option_defaults()
    expected = {k: (1.0 if k == "kl_scale" else v) for k, v in defaults.items()}
    assert m.hparams == expected


def test_attack_configs_and_recipes():
    cfg = {n: METHODS[n].attack for n in METHODS}
    assert cfg["kdiga"] is None and cfg["natural"] is None
    for n in ("ard", "iad", "pgd_at", "kdiga_ard"):
        assert (cfg[n].loss, cfg[n].random_start, cfg[n].student_mode) == ("ce", "uniform", "train")
    for n in ("rslad", "absld", "trades", "cfa"):
        assert (cfg[n].loss, cfg[n].random_start, cfg[n].student_mode) == ("kl", "normal", "eval")
    assert (cfg["mtard"].loss, cfg["mtard"].random_start, cfg["mtard"].student_mode) == ("ce", "normal", "eval")
    assert cfg["ard"] == AttackConfig("ce", "uniform", "train", steps=10, eps=8 / 255, step_size=2 / 255)
    assert METHODS["rslad"].optim.milestones == (215, 260, 285) and METHODS["mtard"].optim.epochs == 300
    assert METHODS["ard"].optim.milestones == (100, 150) and METHODS["kdiga_ard"].optim.epochs == 200
    assert METHODS["trades"].optim.weight_decay == 5e-4 and METHODS["cfa"].optim.epochs == 200
    assert not METHODS["trades"].needs_teacher and METHODS["ard"].needs_teacher
    assert get_method("mtard").needs_nat_teacher
    assert not get_method("mtard", mtard_clean_target="robust_teacher_adv").needs_nat_teacher


# ---- shared helpers ----------------------------------------------------------------------------

def test_kl_div_conventions():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(B, C, generator=g, dtype=torch.float64), torch.randn(B, C, generator=g, dtype=torch.float64)
    assert torch.allclose(kl_div(a, b), kl(softmax(a), softmax(b)))
    assert torch.allclose(kl_div(a, b, reduction="mean"), kl(softmax(a), softmax(b)) / C)
    assert torch.allclose(kl_div(a, b, tau=4.0), kl(softmax(a / 4), softmax(b / 4)))
    taus = torch.tensor([1.0, 2.0, 0.5, 3.0])
    assert torch.allclose(kl_div(a, b, tau=taus, student_tau=1.0),
                          kl(softmax(a / taus[:, None].double()), softmax(b)))
    assert torch.allclose(kl_div(a, b, target_log_eps=1e-5), kl(softmax(a), softmax(b), 1e-5))
    assert kl_div(a.bfloat16(), b.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="reduction"):
        kl_div(a, b, reduction="batchmean")


def test_forward_is_lazy_cached_and_teacher_frozen(nets):
    calls = []
    s, t, nt = nets
    counted = lambda x: (calls.append(1), s(x))[1]  # noqa: E731
    x, x_adv = inputs()
    f = Forward(counted, x, Y, teacher=t)
    assert not calls
    assert f.s_clean is f.s_clean and len(calls) == 1
    assert f.s_clean.requires_grad and not f.t_clean.requires_grad
    with pytest.raises(ValueError, match="x_adv is not set"):
        f.s_adv
    f.x_adv = x_adv
    assert torch.allclose(f.s_adv, z(s, x_adv))
    with pytest.raises(ValueError, match="nat_teacher=..."):
        f.nt_clean
    with pytest.raises(ValueError, match="teacher=..."):
        Forward(s, x, Y).t_clean


# ---- teachers' objectives ----------------------------------------------------------------------

def test_natural_pgd_at_trades(nets):
    s = nets[0]
    x, x_adv = inputs()
    assert torch.allclose(loss_of("natural", nets), ce(z(s, x), Y))
    assert torch.allclose(loss_of("pgd_at", nets), ce(z(s, x_adv), Y))
    expected = ce(z(s, x), Y) + 6.0 * kl(softmax(z(s, x)), softmax(z(s, x_adv)))
    assert torch.allclose(loss_of("trades", nets), expected)
    f = forward(nets)
    target = get_method("trades").attack_target(f)
    assert torch.allclose(target, softmax(z(s, x))) and not target.requires_grad
    assert "s_clean" not in f.__dict__  # the attack target must not fill the loss's cached forward


# ---- distillation ------------------------------------------------------------------------------

def test_ard(nets):
    s, t, _ = nets
    x, x_adv = inputs()
    adv_kl = kl(softmax(z(t, x) / 30), softmax(z(s, x_adv) / 30)) / C
    assert torch.allclose(loss_of("ard", nets), 900 * adv_kl)
    adv_kl1 = kl(softmax(z(t, x)), softmax(z(s, x_adv))) / C
    assert torch.allclose(loss_of("ard", nets, tau=1.0, alpha=0.7), 0.7 * adv_kl1 + 0.3 * ce(z(s, x), Y))
    f = forward(nets)
    get_method("ard").per_sample_loss(f)
    assert "s_clean" not in f.__dict__  # alpha=1: no clean student forward


def test_iad_before_and_after_begin(nets):
    s, t, _ = nets
    x, x_adv = inputs()
    base = kl(softmax(z(t, x)), softmax(z(s, x_adv)))
    assert torch.allclose(loss_of("iad", nets, epoch=59), base)
    trust = softmax(z(t, x_adv))[torch.arange(B), Y] ** 0.1
    introspect = (1 - trust) * kl(softmax(z(s, x)), softmax(z(s, x_adv)))
    assert torch.allclose(loss_of("iad", nets, epoch=60), base + introspect)
    assert torch.allclose(loss_of("iad", nets, epoch=60, alpha=0.5), base + introspect + 0.5 * ce(z(s, x_adv), Y))


def test_rslad_and_cifar100_scale(nets):
    s, t, _ = nets
    x, x_adv = inputs()
    p = softmax(z(t, x))
    expected = 5 / 6 * kl(p, softmax(z(s, x_adv)), 1e-5) / C + 1 / 6 * kl(p, softmax(z(s, x)), 1e-5) / C
    assert torch.allclose(loss_of("rslad", nets), expected)
    assert torch.allclose(get_method("rslad", C).attack_target(forward(nets)), p)
    big = (linear(1, 100), linear(2, 100), None)
    f100 = lambda: Forward(big[0], x, Y, x_adv=x_adv, teacher=big[1], num_classes=100)  # noqa: E731
    scaled = get_method("rslad", 100).per_sample_loss(f100())
    plain = get_method("rslad", 100, kl_scale=1.0).per_sample_loss(f100())
    assert get_method("rslad", 100).kl_scale == 10.0 and torch.allclose(scaled, 10 * plain)


def mtard_terms(nets, seed, clean_target="natural_teacher"):
    s, t, nt = nets
    x, x_adv = inputs(seed)
    p_nat = softmax(z(nt, x)) if clean_target == "natural_teacher" else softmax(z(t, x_adv))
    kl_adv = kl(softmax(z(t, x_adv)), softmax(z(s, x_adv)), 1e-5) / C
    kl_nat = kl(p_nat, softmax(z(s, x)), 1e-5) / C
    return kl_adv, kl_nat


def test_mtard_loss_and_lambda_update(nets):
    m = get_method("mtard", C)
    lam_nat, eta, init = 0.5, 0.025, None
    for seed in range(3):
        kl_adv, kl_nat = mtard_terms(nets, seed)
        init = init or (kl_adv.mean().item(), kl_nat.mean().item())
        r_adv, r_nat = kl_adv.mean().item() / init[0], kl_nat.mean().item() / init[1]
        lam_nat = lam_nat - eta * (lam_nat - r_nat / (r_adv + r_nat))
        loss = m.per_sample_loss(forward(nets, seed=seed))
        assert m.lambda_nat.item() == pytest.approx(lam_nat, rel=1e-6)
        assert m.lambda_adv.item() == pytest.approx(1 - lam_nat, rel=1e-6)
        assert torch.allclose(loss, (1 - lam_nat) * kl_adv + lam_nat * kl_nat, rtol=1e-6)
        loss.sum().backward()  # the in-place lambda update must not break autograd
    assert m.lambda_nat.item() != 0.5
    m.on_lr_decay()
    assert m.eta_now.item() == pytest.approx(0.0025)
    m.eval()  # evaluation batches leave the state alone
    before = m.lambda_nat.clone()
    m.per_sample_loss(forward(nets, seed=7))
    assert torch.equal(m.lambda_nat, before)


def test_mtard_clean_target_switch(nets):
    kl_adv, kl_nat = mtard_terms(nets, 0, "robust_teacher_adv")
    quirk = loss_of("mtard", nets, mtard_clean_target="robust_teacher_adv")
    assert torch.allclose(quirk, 0.5 * kl_adv + 0.5 * kl_nat)  # the first batch keeps 0.5/0.5
    assert not torch.allclose(quirk, loss_of("mtard", nets))


def kdiga_reference(nets, alpha=0.5, gamma=0.5, student_input="clean", teacher_input="clean"):
    s, t, _ = nets
    x, x_adv = inputs()
    xs = x if student_input == "clean" else x_adv
    xt = x if teacher_input == "clean" else x_adv
    kd = alpha * kl(softmax(z(t, xt)), softmax(z(s, xs))) / C
    diff = (ce_input_grad(s, x, Y) - ce_input_grad(t, x, Y)).reshape(B, -1)
    return kd + (1 - alpha) * ce(z(s, x), Y), diff


def test_kdiga_per_sample_and_official_batch(nets):
    rest, diff = kdiga_reference(nets)
    per_sample = torch.sqrt((diff ** 2).sum(dim=1))
    assert torch.allclose(loss_of("kdiga", nets), rest + 0.5 * per_sample)
    official = 0.5 / B * torch.sqrt(((diff / B) ** 2).sum())
    quirk = loss_of("kdiga", nets, grad_align="official_batch")
    assert torch.allclose(quirk, rest + official)
    assert torch.allclose(quirk.mean(), rest.mean() + official)  # the trainer's mean gives the fork's scalar


def test_kdiga_alignment_zero_for_identical_models(nets):
    s = nets[0]
    x, _ = inputs()
    m = get_method("kdiga", C)
    f = Forward(s, x, Y, teacher=s, num_classes=C)
    g_s, g_t = m._gradient_terms(f)
    assert torch.equal(m.alignment(g_s, g_t), torch.zeros(B))
    g_s, g_t = m._gradient_terms(forward(nets))
    assert (m.alignment(g_s, g_t) > 0).all()


def test_kdiga_alignment_backpropagates_to_student(nets):
    s, t, _ = nets
    x, _ = inputs()
    m = get_method("kdiga", C, alpha=0.5, gamma=1.0)
    with_align = m.per_sample_loss(forward(nets)).sum()
    (grad_w,) = torch.autograd.grad(with_align, s[1].weight)
    assert t[1].weight.grad is None  # the teacher's gradient is a constant
    # Same loss written out by hand, differentiated by autograd through the explicit formula.
    rest, diff = kdiga_reference(nets)
    (ref_w,) = torch.autograd.grad((rest + torch.sqrt((diff ** 2).sum(dim=1))).sum(), s[1].weight)
    assert torch.allclose(grad_w, ref_w)
    (no_align_w,) = torch.autograd.grad(get_method("kdiga", C, gamma=0.0).per_sample_loss(forward(nets)).sum(),
                                        s[1].weight)
    assert not torch.allclose(grad_w, no_align_w)


def test_kdiga_under_bf16_autocast(nets):
    s, t = nets[0].float(), nets[1].float()
    x, _ = inputs()
    x = x.float()
    m = get_method("kdiga", C)
    exact = m.per_sample_loss(Forward(s, x, Y, teacher=t, num_classes=C))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = Forward(s, x, Y, teacher=t, num_classes=C)
        loss = m.per_sample_loss(f)
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    assert torch.allclose(loss, exact, rtol=1e-5)  # the gradient forwards ran in fp32
    loss.sum().backward()
    assert torch.isfinite(s[1].weight.grad).all()


def test_kdiga_ard_teacher_input_switch(nets):
    s, _, _ = nets
    rest, diff = kdiga_reference(nets, student_input="adv")
    align = 0.5 * torch.sqrt((diff ** 2).sum(dim=1))
    assert torch.allclose(loss_of("kdiga_ard", nets), rest + align)
    rest_adv, _ = kdiga_reference(nets, student_input="adv", teacher_input="adv")
    quirk = loss_of("kdiga_ard", nets, kdiga_ard_teacher_input="adv")
    assert torch.allclose(quirk, rest_adv + align)
    assert not torch.allclose(quirk, loss_of("kdiga_ard", nets))


def absld_with_temperatures(**options):
    m = get_method("absld", C, **options)
    m.tau_adv.copy_(torch.tensor([1.0, 2.0, 0.5]))
    m.tau_nat.copy_(torch.tensor([3.0, 1.0, 1.5]))
    return m


@pytest.mark.parametrize("mode", ["separate", "official_product"])
def test_absld_loss_and_attack_target(nets, mode):
    s, t, _ = nets
    x, x_adv = inputs()
    m = absld_with_temperatures(absld_temperature=mode)
    ta = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)[Y]
    tn = torch.tensor([3.0, 1.0, 1.5], dtype=torch.float64)[Y]
    if mode == "official_product":
        ta = tn = ta * tn
    p_adv, p_nat = softmax(z(t, x) / ta[:, None]), softmax(z(t, x) / tn[:, None])
    expected = (5 / 6 * kl(p_adv, softmax(z(s, x_adv)), 1e-5) / C
                + 1 / 6 * kl(p_nat, softmax(z(s, x)), 1e-5) / C)
    assert torch.allclose(m.per_sample_loss(forward(nets)), expected)
    assert torch.allclose(m.attack_target(forward(nets)), p_adv)


def test_absld_switch_changes_loss(nets):
    separate = absld_with_temperatures().per_sample_loss(forward(nets))
    product = absld_with_temperatures(absld_temperature="official_product").per_sample_loss(forward(nets))
    assert not torch.allclose(separate, product)


def test_absld_accumulates_and_updates_temperatures(nets):
    s = nets[0]
    m = get_method("absld", C)
    sums_adv, sums_nat = [0.0] * C, [0.0] * C
    for seed in range(2):
        x, x_adv = inputs(seed)
        m.per_sample_loss(forward(nets, seed=seed))
        for i, k in enumerate(Y.tolist()):
            sums_adv[k] += ce(z(s, x_adv), Y)[i].item()
            sums_nat[k] += ce(z(s, x), Y)[i].item()
    assert torch.allclose(m.ce_sum_adv, torch.tensor(sums_adv, dtype=torch.float32))
    m.eval()
    m.per_sample_loss(forward(nets, seed=9))  # evaluation: no accumulation
    assert torch.allclose(m.ce_sum_adv, torch.tensor(sums_adv, dtype=torch.float32))

    def updated(sums, r=0.1):
        mean = sum(sums) / C
        gaps = [v - mean for v in sums]
        scale = max(abs(g) for g in gaps)
        return [min(max(1.0 - r * g / scale, 0.5), 5.0) for g in gaps]

    m.end_epoch(0)
    assert torch.allclose(m.tau_adv, torch.tensor(updated(sums_adv)))
    assert torch.allclose(m.tau_nat, torch.tensor(updated(sums_nat)))
    assert m.tau_adv[sums_adv.index(max(sums_adv))] < 1  # hardest class: sharper soft label
    assert torch.equal(m.ce_sum_adv, torch.zeros(C)) and torch.equal(m.ce_sum_nat, torch.zeros(C))
    m.end_epoch(1)  # no data this epoch: temperatures unchanged, no NaN
    assert torch.allclose(m.tau_adv, torch.tensor(updated(sums_adv)))
    m.on_lr_decay()
    assert m.r_now.item() == pytest.approx(0.01)


def test_absld_temperature_clip(nets):
    m = get_method("absld", C, r=10.0)
    m.train()
    m.per_sample_loss(forward(nets))
    m.end_epoch(0)
    assert m.tau_adv.min().item() == 0.5 and m.tau_adv.max().item() <= 5.0


def cfa_stats():
    stats = ClassStats(C)
    stats.update(torch.tensor([0, 0, 1, 2]), robust_correct=torch.tensor([True, False, True, False]))
    return stats  # robust acc per class: 0.5, 1.0, 0.0


def test_cfa_before_and_after_calibration(nets):
    s = nets[0]
    x, x_adv = inputs()
    base_ce, base_kl = ce(z(s, x), Y), kl(softmax(z(s, x)), softmax(z(s, x_adv)))
    m = get_method("cfa", C)
    assert torch.allclose(m.per_sample_loss(forward(nets, epoch=20)), 1 / 7 * base_ce + 6 / 7 * base_kl)
    assert torch.allclose(m.attack_eps(Y, 20), torch.full((B,), 8 / 255))  # no statistics yet
    m.end_epoch(0, cfa_stats())
    assert torch.allclose(m.per_sample_loss(forward(nets, epoch=9)), 1 / 7 * base_ce + 6 / 7 * base_kl)
    assert m.attack_eps(Y, 9) == 8 / 255
    r = torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64)[Y]
    beta_k = (0.5 + r) * 6 / (1 + (0.5 + r) * 6)
    assert torch.allclose(m.per_sample_loss(forward(nets, epoch=10)), (1 - beta_k) * base_ce + beta_k * base_kl)
    assert torch.allclose(m.attack_eps(Y, 10), ((0.5 + r) * 8 / 255).float())
    no_ccm = get_method("cfa", C, ccm=False)
    no_ccm.end_epoch(0, cfa_stats())
    assert no_ccm.attack_eps(Y, 10) == 8 / 255
    with pytest.raises(ValueError, match="robust_correct"):
        m.end_epoch(1)


# ---- checkpointing ---------------------------------------------------------------------------

def test_state_dict_round_trip(nets):
    mtard = get_method("mtard", C)
    for seed in range(2):
        mtard.per_sample_loss(forward(nets, seed=seed))
    mtard.on_lr_decay()
    absld = get_method("absld", C)
    absld.per_sample_loss(forward(nets))
    absld.end_epoch(0)
    absld.per_sample_loss(forward(nets, seed=1))  # half an epoch of sums
    cfa = get_method("cfa", C)
    cfa.end_epoch(0, cfa_stats())
    for trained in (mtard, absld, cfa):
        fresh = get_method(trained.name, C)
        fresh.load_state_dict(trained.state_dict())
        for (name, a), (_, b) in zip(trained.state_dict().items(), fresh.state_dict().items()):
            assert torch.equal(a, b), name
        assert torch.allclose(fresh.per_sample_loss(forward(nets, epoch=12, seed=3)),
                              trained.per_sample_loss(forward(nets, epoch=12, seed=3)))
    assert set(mtard.state_dict()) == {"lambda_adv", "lambda_nat", "eta_now", "init_loss", "init_loss_set"}


# ---- robust-fairness baselines: FRL and BAT ------------------------------------------------------

def frl_validation_table():
    """Hand-made validation predictions: per-class clean acc (0.5, 1, 1), total 5/6;
    PGD acc (0, 0.5, 1), total 1/2; boundary errors (0.5, 0.5, 0), total 1/3."""
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    clean = torch.tensor([1, 0, 1, 1, 1, 1]).bool()
    robust = torch.tensor([0, 0, 1, 0, 1, 1]).bool()
    return y, clean, robust


@pytest.mark.parametrize("name", ["frl-rw", "frl-rmrw"])
def test_frl_multiplier_update_weights_and_remargin(name):
    m = get_method(name, C)
    w0, w1, w2 = m.weights
    assert torch.allclose(w0, torch.full((C,), 1 / 3)) and torch.allclose(w2, torch.ones(C))  # lambda = 0
    m.update_multipliers(0, *frl_validation_table())
    gap_clean = torch.tensor([0.5, 0, 0]) - 1 / 6 - 0.1          # class clean error - total - bound
    gap_boundary = torch.tensor([0.5, 0.5, 0]) - 1 / 3 - 0.1     # class boundary error - total - bound
    lam0 = (0.05 * gap_clean).clamp(min=0)                        # sums stay below limit 0.5: no rescaling
    lam1 = (2 * 0.05 * gap_boundary).clamp(min=0)
    assert torch.allclose(m.lambda_clean, lam0) and torch.allclose(m.lambda_boundary, lam1)
    w0, w1, w2 = m.weights
    assert torch.allclose(w0, 1 / 3 + lam0 - lam0.sum() / 3) and torch.allclose(w1, 1 / 3 + lam1 - lam1.sum() / 3)
    if name == "frl-rmrw":
        lam2 = 0.1 * gap_boundary                                 # not projected, may go negative
        assert torch.allclose(m.lambda_margin, lam2)
        assert torch.allclose(w2, torch.exp(2 * lam2).clamp(0.98, 2.5)) and w2[2] == pytest.approx(0.98)
        assert torch.allclose(m.attack_eps(Y, 0), 8 / 255 * w2[Y])
    else:
        assert torch.equal(m.lambda_margin, torch.zeros(C)) and m.attack_eps(Y, 0) == 8 / 255


def test_frl_projection_and_rate_halving():
    m = get_method("frl-rw", C, limit=0.01)
    m.update_multipliers(0, *frl_validation_table())
    raw = (0.05 * (torch.tensor([0.5, 0, 0]) - 1 / 6 - 0.1)).clamp(min=0)   # 0.0117 > limit 0.01: rescaled
    assert torch.allclose(m.lambda_clean, raw * 0.01 / raw.sum()) and m.lambda_clean.sum() == pytest.approx(0.01)
    assert [m.rate1_at(e) for e in (0, 38, 39, 78, 79)] == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.0125])
    with pytest.raises(ValueError, match="val_per_class"):
        m.begin_epoch(0, None)


def test_frl_loss_is_the_batch_weighted_trades_mean(nets):
    s = nets[0]
    x, x_adv = inputs()
    m = get_method("frl-rw", C, beta=1.5)
    m.lambda_clean.copy_(torch.tensor([0.2, 0.0, 0.1]))
    m.lambda_boundary.copy_(torch.tensor([0.0, 0.3, 0.0]))
    w0 = torch.tensor([1 / 3 + 0.2 - 0.1, 1 / 3 - 0.1, 1 / 3 + 0.1 - 0.1], dtype=torch.float64)[Y]
    w1 = torch.tensor([1 / 3 - 0.1, 1 / 3 + 0.3 - 0.1, 1 / 3 - 0.1], dtype=torch.float64)[Y]
    ce_i, kl_i = ce(z(s, x), Y), kl(softmax(z(s, x)), softmax(z(s, x_adv)))
    official = (w0 * ce_i + 1.5 * w1 * kl_i).sum() / (w0 + w1).sum()   # frl's batch loss
    per_sample = m.per_sample_loss(forward(nets))
    assert torch.allclose(per_sample.mean(), official)
    assert torch.allclose(per_sample, B * (w0 * ce_i + 1.5 * w1 * kl_i) / (w0 + w1).sum())


def test_bat_loss_and_attack(nets):
    s = nets[0]
    x, x_adv = inputs()
    x_lc = (x + 0.01).clamp(0, 1)
    f = forward(nets)
    f.x_last_clean = x_lc
    uniform = torch.full((B, C), 1 / C, dtype=torch.float64)
    p_lc, p_fa = softmax(z(s, x_lc)), softmax(z(s, x_adv))
    expected = (ce(z(s, x_lc), Y) + 6 * kl(softmax(z(s, x)), p_fa) + kl(p_lc, uniform) + kl(p_fa, uniform))
    m = get_method("bat", C)
    assert torch.allclose(m.per_sample_loss(f), expected)
    assert (m.attack.eps, m.attack.step_size, m.attack.loss, m.attack.random_start) == (0.031, 0.007, "kl", "normal")
    assert METHODS["bat"].optim.milestones == (74, 89, 99)
    with pytest.raises(ValueError, match="early-stopped"):
        m.per_sample_loss(forward(nets))


# ---- fidelity switches ------------------------------------------------------------------------

def bn_student(seed=1):
    m = nn.Sequential(nn.Flatten(), nn.Linear(6, C), nn.BatchNorm1d(C)).double().train()
    with torch.no_grad():
        m[1].weight.copy_(linear(seed)[1].weight)
    return m


@pytest.mark.parametrize("name, epoch", [("ard", 0), ("iad", 0), ("iad", 70)])
def test_official_clean_forward_changes_bn_statistics_and_nothing_else(nets, name, epoch):
    runs = {}
    for switch in (False, True):
        student = bn_student()
        f = Forward(student, *inputs()[:1], Y, x_adv=inputs()[1], teacher=nets[1], epoch=epoch, num_classes=C)
        loss = get_method(name, C, official_clean_forward=switch).per_sample_loss(f)
        loss.mean().backward()
        runs[switch] = (loss.detach(), [p.grad.clone() for p in student.parameters()],
                        student[2].running_mean.clone(), student[2].num_batches_tracked.item())
    (loss0, grads0, mean0, n0), (loss1, grads1, mean1, n1) = runs[False], runs[True]
    # Equal up to rounding (the first backward of a process can differ in the last bit from later ones).
    assert torch.allclose(loss0, loss1, rtol=1e-12, atol=1e-15)
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-15) for a, b in zip(grads0, grads1))
    assert not torch.allclose(mean0, mean1)
    extra = {"ard": 1, "iad": 2 if epoch < 60 else 1}[name]   # ARD: clean; IAD: clean (if unused) + x'
    assert n1 - n0 == extra


def test_kdiga_batch_gamma_equivalent_per_sample_gamma():
    g_t = torch.zeros(8, 3, 2, 2, dtype=torch.float64)
    g_s = torch.randn(8, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g_s = g_s / g_s.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.3   # every sample's gap has norm 0.3
    batch = get_method("kdiga", C, grad_align="official_batch", gamma=0.5)
    per_sample = get_method("kdiga", C, gamma=batch.per_sample_gamma(0.5, 8))
    assert per_sample.gamma == pytest.approx(0.5 / 8 ** 1.5)
    assert torch.allclose(batch.gamma * batch.alignment(g_s, g_t).mean(),
                          per_sample.gamma * per_sample.alignment(g_s, g_t).mean())


def test_kdiga_ard_step_and_trades_script_budget():
    assert METHODS["kdiga_ard"].attack.step_size == pytest.approx(1.6 / 255)
    assert METHODS["kdiga"].attack is None and METHODS["ard"].attack.step_size == pytest.approx(2 / 255)
    trades = get_method("trades", C, eps=0.031, step_size=0.007)
    assert (trades.attack.eps, trades.attack.step_size, trades.attack_eps(Y, 0)) == (0.031, 0.007, 0.031)
    assert METHODS["trades"].attack.eps == 8 / 255 and get_method("trades", C).attack is METHODS["trades"].attack


def test_method_revision_enters_only_its_own_run_keys(monkeypatch):
    from fairard.train import TrainConfig

    keys = {m: TrainConfig(method=m).key() for m in ("kdiga_ard", "fair-kdiga_ard", "ard")}
    monkeypatch.setattr(METHODS["kdiga_ard"], "revision", 2)
    assert TrainConfig(method="kdiga_ard").key() != keys["kdiga_ard"]
    assert TrainConfig(method="fair-kdiga_ard").key() != keys["fair-kdiga_ard"]
    assert TrainConfig(method="ard").key() == keys["ard"]
