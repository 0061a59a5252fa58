"""Fair-ARD class weights, per-class statistics and the per-epoch weighting schedule."""

import json
import os

import pytest
import torch
import torch.distributed as dist

from fairard.fairness import DIFFICULTY_MEASURES, ClassStats, FairWeighting, class_weights

KAPPA = torch.tensor([8.0, 8.8, 6.0, 4.0, 5.5, 5.0, 7.5, 8.0, 8.5, 8.3])


def reference_weights(d, beta, eps=1e-5):
    """The papers.md 1.5 formula written out with Python floats."""
    raw = [(1.0 / (v + eps)) ** beta for v in d]
    return [len(d) * r / sum(raw) for r in raw]


def test_matches_formula_and_sums_to_c_without_clamp():
    w = class_weights(KAPPA, beta=2.0, clamp=None)
    assert torch.allclose(w, torch.tensor(reference_weights(KAPPA.tolist(), 2.0)), rtol=1e-6)
    assert w.sum().item() == pytest.approx(10.0, rel=1e-6)


def test_clamp_applied_after_normalisation():
    w = class_weights(KAPPA, beta=2.0)
    unclamped = torch.tensor(reference_weights(KAPPA.tolist(), 2.0))
    assert torch.allclose(w, unclamped.clamp(5 / 6, 5 / 2), rtol=1e-6)
    # papers.md 1.5 worked example: six easy classes on the floor, hardest 2.46, sum 11.4.
    assert int((w == torch.tensor(5 / 6)).sum()) == 6
    assert w.max().item() == pytest.approx(2.46, abs=0.01)
    assert w.sum().item() == pytest.approx(11.4, abs=0.05)
    # beta=3 pushes the hardest class to the ceiling.
    assert class_weights(KAPPA, beta=3.0).max().item() == pytest.approx(2.5)


def test_beta_zero_is_the_base_method():
    assert torch.equal(class_weights(KAPPA, beta=0.0), torch.ones(10))
    assert torch.equal(class_weights(KAPPA, beta=0.0, clamp=None), torch.ones(10))


def test_lower_kappa_gets_larger_weight():
    kappa = KAPPA.unique()  # distinct values, so the order is strict
    w = class_weights(kappa, beta=2.0, clamp=None)
    order = torch.argsort(kappa)  # hardest first
    assert torch.all(w[order][:-1] > w[order][1:])
    assert w.argmax().item() == kappa.argmin().item()


def test_hundred_classes():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(100, generator=g) * 10
    w = class_weights(d, beta=2.0, clamp=None)
    assert w.shape == (100,)
    assert w.sum().item() == pytest.approx(100.0, rel=1e-5)
    assert torch.allclose(w, torch.tensor(reference_weights(d.tolist(), 2.0), dtype=torch.float32), rtol=1e-5)
    clamped = class_weights(d, beta=2.0)
    assert clamped.min() >= 5 / 6 - 1e-7 and clamped.max() <= 5 / 2 + 1e-7


def test_zero_easiness_stays_finite_and_eps_zero_reproduces_fair_rslad():
    d = torch.tensor([0.0, 5.0, 10.0])
    w = class_weights(d, beta=2.0, clamp=None)
    assert torch.isfinite(w).all() and w[0] == w.max()
    d = torch.tensor([2.0, 5.0, 10.0])
    assert torch.allclose(class_weights(d, eps=0.0, clamp=None), torch.tensor(reference_weights([2, 5, 10], 2.0, 0.0)))


@pytest.mark.parametrize("bad", [torch.ones(2, 5), torch.tensor([1.0, -1.0]), torch.tensor([1.0, float("nan")])])
def test_bad_difficulty_is_rejected(bad):
    with pytest.raises(ValueError, match="difficulty"):
        class_weights(bad)


def make_stats():
    s = ClassStats(3, "cpu")
    y = torch.tensor([0, 0, 1, 1, 1])
    s.update(y, kappa=torch.tensor([10, 6, 2, 3, 4]), robust_correct=torch.tensor([True, False, True, True, False]),
             adv_loss=torch.tensor([0.5, 1.5, 2.0, 4.0, 3.0]))
    s.update(torch.tensor([0]), kappa=torch.tensor([2.0]), clean_correct=torch.tensor([True]))
    return s


def test_classstats_means_and_empty_class():
    s = make_stats()
    assert torch.allclose(s.mean("kappa")[:2], torch.tensor([6.0, 3.0]))
    # class 2 has no sample: the overall mean (10+6+2+3+4+2)/6 instead of NaN
    assert s.mean("kappa")[2].item() == pytest.approx(27 / 6)
    assert torch.allclose(s.mean("robust_acc"), torch.tensor([0.5, 2 / 3, 3 / 5]))
    assert torch.equal(s.mean("robust_acc"), s.mean("robust_correct"))
    assert torch.allclose(s.easiness("adv_loss")[:2], 1 / torch.tensor([1.0, 3.0]))
    assert torch.allclose(s.easiness("kappa"), s.mean("kappa"))
    assert s.mean("clean_acc")[0].item() == 1.0


def test_classstats_errors_and_reset():
    s = make_stats()
    with pytest.raises(ValueError, match="valid"):
        s.easiness("entropy")
    with pytest.raises(ValueError, match="shape"):
        s.update(torch.tensor([0, 1]), kappa=torch.tensor([1.0]))
    s.reset()
    assert not s.has("kappa")
    with pytest.raises(ValueError, match="kappa=..."):
        s.mean("kappa")


def test_classstats_state_dict_and_json():
    s = make_stats()
    t = ClassStats(3)
    t.load_state_dict(s.state_dict())
    for m in DIFFICULTY_MEASURES:
        assert torch.equal(t.easiness(m), s.easiness(m))
    d = json.loads(json.dumps(s.as_dict()))
    assert d["kappa"] == pytest.approx(s.mean("kappa").tolist())
    assert d["count"] == [3, 3, 0]
    with pytest.raises(ValueError, match="num_classes"):
        ClassStats(4).load_state_dict(s.state_dict())


def test_classstats_all_reduce(tmp_path):
    s = make_stats()
    before = s.state_dict()
    s.all_reduce()  # not initialised: no-op
    assert torch.equal(s.sums, before["sums"])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        s.all_reduce()
        s.all_reduce()  # idempotent until the next update
        assert torch.equal(s.sums, before["sums"]) and torch.equal(s.counts, before["counts"])
    finally:
        dist.destroy_process_group()


def test_fair_weighting_schedule():
    fw = FairWeighting(3, beta=2.0, clamp=None)
    y = torch.tensor([2, 0, 1, 0])
    assert torch.equal(fw.weights, torch.ones(3))
    assert torch.equal(fw.sample_weights(y), torch.ones(4))
    stats = ClassStats(3)
    stats.update(torch.tensor([0, 1, 2]), kappa=torch.tensor([9.0, 3.0, 6.0]))
    new = fw.end_epoch(stats)
    assert torch.allclose(new, torch.tensor(reference_weights([9, 3, 6], 2.0)), rtol=1e-6)
    assert torch.equal(fw.sample_weights(y), new[y])
    assert fw.weights[1] > fw.weights[2] > fw.weights[0]


def test_fair_weighting_adv_loss_measure_and_state():
    fw = FairWeighting(2, measure="adv_loss", clamp=None)
    stats = ClassStats(2)
    stats.update(torch.tensor([0, 1]), adv_loss=torch.tensor([0.5, 2.0]))
    w = fw.end_epoch(stats)
    assert w[1] > w[0]  # the class with the higher adversarial loss is harder
    other = FairWeighting(2, measure="adv_loss")
    other.load_state_dict(fw.state_dict())
    assert torch.equal(other.weights, w)
    with pytest.raises(ValueError, match="measure"):
        FairWeighting(2, measure="kappa").load_state_dict(fw.state_dict())
    with pytest.raises(ValueError, match="valid"):
        FairWeighting(2, measure="loss")
