import pytest
import torch
import torch.nn as nn

from fairard import attacks as A

EPS = 8 / 255


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("start", ["uniform", "normal", None])
def test_pgd_stays_in_ball_and_box(tiny_problem, loss, start):
    model, x, y = tiny_problem
    x_adv = A.pgd(model, x, y, eps=EPS, steps=5, loss=loss, random_start=start)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_lowers_accuracy_of_trained_model(tiny_problem):
    model, x, y = tiny_problem
    clean = accuracy(model, x, y)
    assert clean > 0.9
    assert accuracy(model, A.pgd(model, x, y, eps=EPS, steps=10), y) < clean - 0.3
    assert accuracy(model, A.fgsm(model, x, y, eps=EPS), y) < clean


def test_pgd_reaches_analytic_optimum_of_linear_model():
    # Two classes, linear logits: CE grows with -(w_y - w_o).x, so the L-inf optimum is the corner
    # x - eps * sign(w_y - w_o), clipped to [0, 1].
    torch.manual_seed(0)
    model = nn.Linear(20, 2)
    x = torch.rand(16, 20) * 0.8 + 0.1
    y = torch.randint(0, 2, (16,))
    x_adv = A.pgd(model, x, y, eps=EPS, step_size=EPS / 4, steps=10, random_start=None)
    w = model.weight.detach()
    direction = (w[y] - w[1 - y]).sign()
    expected = (x - EPS * direction).clamp(0, 1)
    assert torch.allclose(x_adv, expected, atol=1e-6)


def test_kappa_equals_per_sample_reference(tiny_problem):
    model, x, y = tiny_problem
    seed, steps = 3, 6
    gen = lambda: torch.Generator().manual_seed(seed)
    _, kappa = A.pgd(model, x, y, eps=EPS, steps=steps, return_kappa=True, generator=gen())
    # Reference: rebuild every iterate x^(t) (t = 0..K-1) and count per sample in plain Python.
    iterates = [A.pgd(model, x, y, eps=EPS, steps=t, generator=gen()) for t in range(steps)]
    reference = []
    for i in range(len(x)):
        count = 0
        for it in iterates:
            with torch.no_grad():
                count += int(model(it[i:i + 1]).argmax(1).item() == y[i].item())
        reference.append(count)
    assert kappa.tolist() == reference
    assert kappa.max() <= steps and kappa.float().mean() > 0


def test_attack_preserves_mode_and_param_grads(tiny_problem):
    model, x, y = tiny_problem
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    A.pgd(model, x[:8], y[:8], steps=3)
    assert model.training
    assert all(torch.all(p.grad == 7.0) for p in model.parameters())
    model.eval()
    A.pgd(model, x[:8], y[:8], steps=3)
    assert not model.training
    for p in model.parameters():
        p.grad = None


def test_kl_attack_moves_away_from_target(tiny_problem):
    model, x, y = tiny_problem
    with torch.no_grad():
        target = model(x).softmax(1)
    x_adv = A.pgd(model, x, y, steps=5, loss="kl", target_probs=target, random_start="normal")
    with torch.no_grad():
        kl = A.attack_loss(model(x_adv), y, "kl", target)
    assert kl.mean() > 0.1
    with pytest.raises(ValueError, match="target_probs"):
        A.pgd(model, x, y, steps=1, loss="kl")


def test_cw_loss_formula():
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    # sample 0: margin 2-1=1 -> -(1+50); sample 1: margin 1-3=-2 -> -(48)
    assert torch.allclose(A.attack_loss(logits, y, "cw"), torch.tensor([-51.0, -48.0]))


def test_per_sample_eps_tensor(tiny_problem):
    model, x, y = tiny_problem
    eps = torch.linspace(0, EPS, len(x))
    x_adv = A.pgd(model, x, y, eps=eps, steps=3)
    assert torch.all((x_adv - x).abs().flatten(1).amax(1) <= eps + 1e-6)


def test_bf16_autocast_runs(tiny_problem):
    model, x, y = tiny_problem
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv, kappa = A.pgd(model, x[:16], y[:16], steps=3, return_kappa=True)
    assert x_adv.dtype == torch.float32 and (x_adv - x[:16]).abs().max() <= EPS + 1e-6


def test_unknown_names_are_listed(tiny_problem):
    model, x, y = tiny_problem
    with pytest.raises(ValueError, match="valid: 'ce', 'cw', 'kl'"):
        A.pgd(model, x, y, loss="hinge")
    with pytest.raises(ValueError, match="random_start"):
        A.pgd(model, x, y, random_start="gauss")


def test_early_stops_pick_first_adversarial_and_last_clean_iterates():
    """Five checked iterates x^(t) = t (a constant image per step) and the final x^(5) = 5; each sample's
    correct/wrong pattern over the checks is hand-made."""
    from fairard.attacks import EarlyStops

    wrong = torch.tensor([  # rows: samples, columns: checks t = 0..4
        [0, 0, 0, 0, 0],    # never fooled: both are the final iterate
        [1, 1, 0, 0, 0],    # fooled at once: last clean = x^0 itself; 2nd wrong check at t=1
        [0, 0, 1, 0, 1],    # last clean = x^1; 2nd wrong check at t=4 (flip-back does not reset)
        [0, 0, 0, 1, 0],    # last clean = x^2; only one wrong check: tau=1 runs to the end
    ]).bool()
    y = torch.zeros(4, dtype=torch.long)

    def run(tau):
        watch = EarlyStops(y, tau)
        for t in range(5):
            logits = torch.stack([torch.tensor([0.0, 1.0]) if w else torch.tensor([1.0, 0.0]) for w in wrong[:, t]])
            watch(torch.full((4, 1, 2, 2), float(t)), logits)
        first_adv, last_clean = watch.result(torch.full((4, 1, 2, 2), 5.0))
        return first_adv[:, 0, 0, 0].tolist(), last_clean[:, 0, 0, 0].tolist()

    assert run(tau=1) == ([5, 1, 4, 5], [5, 0, 1, 2])
    assert run(tau=0) == ([5, 0, 2, 3], [5, 0, 1, 2])


def test_pgd_observer_sees_every_checked_iterate(tiny_problem):
    model, x, y = tiny_problem
    seen = []
    x_adv = A.pgd(model, x[:8], y[:8], steps=3, random_start=None, observe=lambda xa, lg: seen.append((xa, lg)))
    assert len(seen) == 3 and torch.equal(seen[0][0], x[:8])
    assert torch.allclose(seen[1][1], model(seen[1][0]))
    assert not torch.equal(seen[-1][0], x_adv)   # the final iterate is never checked
