"""Every committed results folder re-derived from what it stores.

The per-class accuracy, average, mean, worst class and NSD of every attack must follow from the stored
confusion matrix; a Fair-* run's class weights must follow from its logged kappa epoch by epoch; and the
table in ``results/README.md`` must print the numbers of the JSON files. A number edited by hand, a metric
computed with another definition (e.g. sample std in NSD), or weights that lag their kappa fail here.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import REPO

RESULTS = REPO / "results"
FOLDERS = sorted(p for p in RESULTS.iterdir() if p.is_dir() and (p / "runs").is_dir())
EVALUATIONS = sorted(f for d in FOLDERS for f in [*d.glob("runs/*/result*.json"), *d.glob("teacher-evals/*.json")])


def test_there_are_committed_results():
    assert FOLDERS and EVALUATIONS


@pytest.mark.parametrize("path", EVALUATIONS, ids=lambda p: f"{p.parent.parent.parent.name}/{p.parent.name}/{p.name}")
def test_every_summary_follows_from_its_confusion_matrix(path):
    """Per attack: per-class accuracy = diagonal / row sum; accuracy = trace / total; mean class accuracy;
    worst class = argmin (index and name); NSD = population std / mean of the class accuracies; n = total
    (the full test set, or aa_per_class per class for AutoAttack)."""
    r = json.loads(path.read_text())
    ev, settings = r["evaluation"], r["eval_settings"]
    assert set(ev["attacks"]) == set(settings["attacks"])
    for name, s in ev["attacks"].items():
        conf = np.array(s["confusion"], dtype=np.int64)
        assert conf.shape == (10, 10)
        per_class = np.diag(conf) / conf.sum(1)
        assert s["per_class"] == pytest.approx(per_class.tolist(), abs=1e-12), name
        assert s["accuracy"] == pytest.approx(np.trace(conf) / conf.sum(), abs=1e-6), name
        assert s["mean_class_accuracy"] == pytest.approx(per_class.mean(), abs=1e-12), name
        assert s["worst_class"] == int(per_class.argmin()) and s["worst_class_accuracy"] == per_class.min(), name
        assert s["worst_class_name"] == ev["class_names"][s["worst_class"]], name
        assert s["nsd"] == pytest.approx(per_class.std(ddof=0) / per_class.mean(), rel=1e-9), name
        per_class_n = settings["aa_per_class"] if name.startswith("aa") else settings["eval_per_class"]
        expected_n = 10 * per_class_n if per_class_n else ev["n"]
        assert s["n"] == conf.sum() == expected_n, name
        if per_class_n:
            assert conf.sum(1).tolist() == [per_class_n] * 10, name


def _hand_weights(kappa, beta=2.0, clamp=(5 / 6, 5 / 2)):
    raw = (1 / (np.asarray(kappa, dtype=np.float64) + 1e-5)) ** beta
    return np.clip(len(raw) * raw / raw.sum(), *clamp)


RUNS = sorted(f for d in FOLDERS for f in d.glob("runs/*/result*.json"))


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.parent.name)
def test_logged_class_weights_follow_the_logged_kappa(path):
    """Fair-* runs: epoch 0 trains with weights 1; the weights of epoch e+1 are (1/(kappa_e + 1e-5))^beta
    normalised to sum C, clamped to the run's clamp; result.json's histories are the log's. Base runs log no
    weights. Fails if a logged weight does not follow its kappa, or lags/leads it by an epoch."""
    r = json.loads(path.read_text())
    log = [json.loads(line) for line in (path.parent / "log.jsonl").read_text().splitlines()]
    assert [rec["epoch"] for rec in log] == list(range(r["config"]["epochs"]))
    if not r["method"].startswith("fair-"):
        assert all(rec["class_weights"] is None for rec in log)
        return
    cfg = r["config"]
    assert cfg["difficulty"] == "kappa"
    assert log[0]["class_weights"] == [1.0] * 10
    for rec, nxt in zip(log, log[1:] + [None]):
        expected = _hand_weights(rec["class_stats"]["kappa"], cfg["beta"], tuple(cfg["clamp"]))
        assert rec["next_class_weights"] == pytest.approx(expected.tolist(), rel=1e-6)
        if nxt is not None:
            assert nxt["class_weights"] == rec["next_class_weights"]
    assert r["class_weights_history"] == [rec["class_weights"] for rec in log]
    assert r["kappa_history"] == [rec["class_stats"]["kappa"] for rec in log]


def _readme_tables():
    """{folder name: [(label, cells)]} for the summary table under each folder's heading in results/README.md."""
    text = (RESULTS / "README.md").read_text()
    out = {}
    for section in re.split(r"\n## ", text)[1:]:
        name = re.match(r"`([^`/]+)/?`", section)
        rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
        if name and rows and "PGD-20" in "|".join(rows[0]):
            out[name.group(1)] = rows
    return out


def test_readme_tables_print_the_stored_numbers():
    """results/README.md: each row (teacher, then each method) shows clean / PGD-20 / CW-inf / AA average and
    worst-class accuracy in % (one decimal) and the PGD-20 NSD of the stored result."""
    tables = _readme_tables()
    assert tables and set(tables) <= {d.name for d in FOLDERS}
    for folder, rows in tables.items():
        head, body = rows[0], rows[1:]
        assert [h.strip() for h in head[1:]] == ["clean avg / worst", "PGD-20 avg / worst", "CW∞ avg / worst",
                                                 "AA avg / worst", "PGD-20 NSD"]
        runs = {json.loads(f.read_text())["method"]: json.loads(f.read_text())
                for f in (RESULTS / folder).glob("runs/*/result*.json")}
        teachers = [json.loads(f.read_text()) for f in (RESULTS / folder).glob("teacher-evals/*.json")]
        checked = 0
        for cells in body:
            label = cells[0].strip()
            if set(label) <= set("-: "):
                continue
            if label.lower().startswith("teacher"):
                (r,) = teachers
            else:
                r = runs[label.split(" (")[0].lower()]
            attacks = r["evaluation"]["attacks"]
            for cell, attack in zip(cells[1:5], ("clean", "pgd20", "cw20", "aa")):
                avg, worst = (float(v) for v in cell.split("/"))
                assert avg == round(100 * attacks[attack]["accuracy"], 1), (label, attack)
                assert worst == round(100 * attacks[attack]["worst_class_accuracy"], 1), (label, attack)
            assert float(cells[5]) == round(attacks["pgd20"]["nsd"], 3), label
            checked += 1
        assert checked == len(runs) + len(teachers), folder
