import json
import math

import pytest
import torch

from fairard import evaluate as E
from fairard.autoattack import autoattack
from fairard.metrics import class_accuracy, confusion_matrix, nsd, summarize

NAMES = [f"c{k}" for k in range(10)]


def test_metrics_on_hand_made_predictions():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    p = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 2, 2, 2, 2])
    conf = confusion_matrix(y, p, 3)
    assert conf.tolist() == [[3, 1, 0], [2, 2, 0], [0, 0, 4]]
    s = summarize(y, p, ["a", "b", "c"])
    assert s["per_class"] == [0.75, 0.5, 1.0]
    assert s["worst_class"] == 1 and s["worst_class_name"] == "b" and s["worst_class_accuracy"] == 0.5
    assert s["accuracy"] == pytest.approx(9 / 12)
    mean = (0.75 + 0.5 + 1.0) / 3
    std = math.sqrt(((0.75 - mean) ** 2 + (0.5 - mean) ** 2 + (1.0 - mean) ** 2) / 3)  # population std
    assert s["nsd"] == pytest.approx(std / mean)
    assert nsd(torch.tensor([0.5, 0.5, 0.5])) == 0.0


def test_class_without_samples_is_nan_not_worst():
    acc = class_accuracy(confusion_matrix(torch.tensor([0, 0, 2]), torch.tensor([0, 1, 2]), 3))
    assert acc[0] == 0.5 and math.isnan(acc[1]) and acc[2] == 1.0
    s = summarize(torch.tensor([0, 0, 2]), torch.tensor([0, 1, 2]), ["a", "b", "c"])
    assert s["worst_class"] == 0 and s["per_class"][1] is None


def test_evaluate_end_to_end(tiny_problem):
    model, x, y = tiny_problem
    model.train()
    result = E.evaluate(model, x, y, attacks="clean,fgsm,pgd20,cw20", class_names=NAMES, eps=4.5 / 255,
                        progress=False, check_large_eps=100)
    assert model.training  # mode restored
    r = result["attacks"]
    assert set(r) == {"clean", "fgsm", "pgd20", "cw20"}
    assert r["clean"]["accuracy"] > 0.9
    assert r["pgd20"]["accuracy"] < r["clean"]["accuracy"]
    for k in range(10):  # PGD-20 never beats FGSM by more than noise on a linear model
        assert r["pgd20"]["per_class"][k] <= r["fgsm"]["per_class"][k] + 0.1
    assert len(r["pgd20"]["confusion"]) == 10 and sum(map(sum, r["pgd20"]["confusion"])) == len(x)
    assert result["sanity"]["eps1_pgd_accuracy"] < 0.05
    json.dumps(result)  # serialisable
    table = E.format_table(result)
    assert "worst" in table and "c9" in table and "pgd20" in table


def test_sanity_report_flags_pgd_above_clean():
    res = {"clean": {"per_class": [0.5, 0.6]}, "pgd20": {"per_class": [0.4, 0.7]}, "aa": {"per_class": [0.3, 0.2]}}
    warnings = E.sanity_report(res)
    assert len(warnings) == 1 and "class 1" in warnings[0] and "pgd20" in warnings[0]


def test_unknown_attack_lists_valid_names(tiny_problem):
    model, x, y = tiny_problem
    with pytest.raises(ValueError, match="valid: clean, fgsm, pgd20, cw20, aa, aa10"):
        E.evaluate(model, x, y, attacks="clean,pgd100", class_names=NAMES, progress=False)


def test_autoattack_subset_never_above_pgd(tiny_problem):
    model, x, y = tiny_problem
    model.eval()
    eps = 4.5 / 255
    pgd_acc = E.summarize(y, E.predict_under_attack(model, x, y, "pgd20", eps=eps), NAMES)
    pred = autoattack(model, x, y, eps=eps, attacks=["apgd-ce", "apgd-t"], n_iter=20, verbose=False)
    aa_acc = E.summarize(y, pred, NAMES)
    assert 0 < pgd_acc["accuracy"] < 1
    assert aa_acc["accuracy"] <= pgd_acc["accuracy"]
    for k in range(10):
        assert aa_acc["per_class"][k] <= pgd_acc["per_class"][k] + 1e-9


def test_autoattack_rejects_bad_input(tiny_problem):
    model, x, y = tiny_problem
    model.eval()
    with pytest.raises(ValueError, match="valid: apgd-ce"):
        autoattack(model, x, y, attacks=["pgd"])
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        autoattack(model, x, y, attacks=["apgd-ce"])
    model.eval()


def test_autoattack_log_follows_progress(tiny_problem, capfd):
    """The AutoAttack log is the progress display of an `aa` evaluation: shown by default, silent with
    progress=False (the book's setting), and the robust accuracy is the same either way."""
    model, x, y = tiny_problem
    x, y = x[:20], y[:20]
    quiet = E.evaluate(model, x, y, attacks=["aa10"], class_names=NAMES, progress=False, check_large_eps=0)
    assert "[autoattack]" not in capfd.readouterr().err
    loud = E.evaluate(model, x, y, attacks=["aa10"], class_names=NAMES, progress=True, check_large_eps=0)
    assert "[autoattack] robust accuracy" in capfd.readouterr().err
    assert quiet["attacks"]["aa10"]["per_class"] == loud["attacks"]["aa10"]["per_class"]
