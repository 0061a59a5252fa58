"""fairard.studies (ablations, kdiga, weighting_explorer, aa_variants): input-gradient gap, class weights replayed from a log, the kernel-free explorer,
parameter checks, the ablation plan, tables and figures of the four analysis notebooks."""

import json
import re
import shutil
import subprocess

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from fairard import fairness, profiles, runs, tables  # noqa: E402
from fairard.studies import aa_variants, ablations, kdiga, weighting_explorer  # noqa: E402
from fairard.fairness import class_weights  # noqa: E402

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def synthetic_history(epochs=3, classes=10, seed=0, with_clean=False):
    """A training log as the trainer writes it: per-epoch class means of kappa, robust_correct, adv_loss."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for e in range(epochs):
        stats = {"kappa": (torch.rand(classes, generator=g) * 10).tolist(),
                 "robust_correct": torch.rand(classes, generator=g).tolist(),
                 "adv_loss": (torch.rand(classes, generator=g) + 0.1).tolist(),
                 "count": [20.0] * classes}
        if with_clean:
            stats["clean_correct"] = torch.rand(classes, generator=g).tolist()
        weights = class_weights(torch.tensor(stats["kappa"]), beta=2.0).tolist()
        out.append({"epoch": e, "class_stats": stats, "class_weights": [1.0] * classes if e == 0 else prev,
                    "next_class_weights": weights})
        prev = weights
    return out


def fake_result(method, seed, per_class, student="resnet8", attacks=("clean", "pgd20", "aa", "aa10"), key="k"):
    """A run result with the fields the analysis reads (same per-class accuracy for every attack unless given)."""
    evaluation = {"attacks": {}, "seconds": {}, "class_names": NAMES}
    for a in attacks:
        pc = per_class[a] if isinstance(per_class, dict) else per_class
        mean = sum(pc) / len(pc)
        evaluation["attacks"][a] = {"accuracy": mean, "worst_class_accuracy": min(pc), "nsd": 0.1,
                                    "per_class": list(pc), "n": 10 * len(pc)}
        evaluation["seconds"][a] = 1.0
    return {"method": method, "student": student, "seed": seed, "key": f"{key}{seed}", "evaluation": evaluation,
            "provenance": {"git_commit": "abcdef0123456789-dirty", "versions": {"torch": "2.x"}, "device": "cpu"}}


# ------------------------------------------------------------------------------ input-gradient gap
def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


def test_gradient_gap_zero_for_same_model_positive_otherwise(tiny_problem):
    _, x, y = tiny_problem
    teacher, student = _net(0), _net(1)
    same = kdiga.input_gradient_gap(teacher, teacher, x, y)
    assert same["l2"] == 0.0 and same["cosine"] == pytest.approx(1.0)
    copy = _net(0)  # an identical copy, a different object
    assert kdiga.input_gradient_gap(copy, teacher, x, y)["l2"] == pytest.approx(0.0, abs=1e-12)
    other = kdiga.input_gradient_gap(student, teacher, x, y)
    assert other["l2"] > 0 and other["cosine"] < 1
    assert len(other["per_sample_l2"]) == len(y) and len(other["per_class_l2"]) == 10


def test_gradient_gap_is_per_sample_eval_mode_and_restores_mode(tiny_problem):
    _, x, y = tiny_problem
    teacher, student = _net(0).eval(), _net(1)
    student.train()
    full = kdiga.input_gradient_gap(student, teacher, x, y, batch_size=256)
    one_by_one = kdiga.input_gradient_gap(student, teacher, x, y, batch_size=1)  # eval BN: samples independent
    assert torch.allclose(full["per_sample_l2"], one_by_one["per_sample_l2"], rtol=1e-4, atol=1e-7)
    assert student.training and not teacher.training
    # The definition, written out for sample 0.
    student.eval()
    x0 = x[:1].clone().requires_grad_(True)
    (g_s,) = torch.autograd.grad(nn.functional.cross_entropy(student(x0), y[:1]), x0)
    x0 = x[:1].clone().requires_grad_(True)
    (g_t,) = torch.autograd.grad(nn.functional.cross_entropy(teacher(x0), y[:1]), x0)
    assert float(full["per_sample_l2"][0]) == pytest.approx(float((g_s - g_t).norm()), rel=1e-4)


# ------------------------------------------------------------------------ weights replayed from a log
def test_weights_grid_matches_class_weights():
    history = synthetic_history()
    betas, clamps = [0.0, 1.0, 2.0, 3.5], [list(profiles.OFFICIAL_CLAMP), None, [0.5, 4.0]]
    grid = weighting_explorer.weights_grid(history, betas, clamps, class_names=NAMES)
    json.dumps(grid)  # JSON-able
    assert grid["measures"] == ["kappa", "robust_acc", "adv_loss"] and grid["unavailable"] == ["clean_acc"]
    for m, measure in enumerate(grid["measures"]):
        for c, clamp in enumerate(clamps):
            for b, beta in enumerate(betas):
                for e, h in enumerate(history):
                    stat = {"kappa": "kappa", "robust_acc": "robust_correct", "adv_loss": "adv_loss"}[measure]
                    d = torch.tensor(h["class_stats"][stat])
                    easiness = 1.0 / d if measure == "adv_loss" else d
                    want = class_weights(easiness, beta=beta, clamp=None if clamp is None else tuple(clamp))
                    assert grid["weights"][m][c][b][e] == pytest.approx(want.tolist(), abs=2e-6)
    assert grid["stats"][0][1] == pytest.approx(history[1]["class_stats"]["kappa"], abs=1e-6)


def test_replayed_weights_equal_trainer_weights_and_bad_epoch_is_an_error():
    history = synthetic_history()
    result = {"config": {"beta": 2.0, "clamp": list(profiles.OFFICIAL_CLAMP), "difficulty": "kappa"}}
    assert weighting_explorer.history_consistency(result, history) < 1e-6
    assert weighting_explorer.weights_at(history, -1, 2.0, profiles.OFFICIAL_CLAMP, "kappa").tolist() == pytest.approx(
        history[-1]["next_class_weights"], abs=1e-6)
    with pytest.raises(ValueError, match=r"epoch must be in \[0, 2\]"):
        weighting_explorer.weights_at(history, 3, 2.0, None, "kappa")
    with pytest.raises(ValueError, match="no 'clean_correct'"):
        weighting_explorer.weights_at(history, 0, 2.0, None, "clean_acc")
    assert weighting_explorer.available_measures(synthetic_history(with_clean=True)) == list(fairness.DIFFICULTY_MEASURES)


def test_weights_table_and_figure():
    history = synthetic_history()
    table = weighting_explorer.weights_table(history, -1, 2.0, profiles.OFFICIAL_CLAMP, "kappa", NAMES)
    assert table.count("\n|") >= 11 and "trainer's weight" in table and "weights for epoch 3" in table
    fig = weighting_explorer.weights_figure(history, 0, 3.0, None, "adv_loss", NAMES, "t")
    assert len(fig.axes) == 2
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert heights == pytest.approx(weighting_explorer.weights_at(history, 0, 3.0, None, "adv_loss").tolist(), rel=1e-6)


def test_explorer_widget_updates_weights_live():
    history = synthetic_history()
    box = weighting_explorer.explorer_widget(history, NAMES)
    assert box.state["weights"] == pytest.approx(weighting_explorer.weights_at(history, -1, 2.0, profiles.OFFICIAL_CLAMP, "kappa").tolist())
    box.controls["beta"].value = 4.0
    box.controls["clamp_on"].value = False
    box.controls["epoch"].value = 0
    box.controls["measure"].value = "robust_acc"
    assert box.state["weights"] == pytest.approx(weighting_explorer.weights_at(history, 0, 4.0, None, "robust_acc").tolist())
    assert set(box.controls) == {"beta", "low", "high", "clamp_on", "measure", "epoch"}


# --------------------------------------------------------------------------- kernel-free explorer
def test_static_explorer_html_is_self_contained_with_controls():
    history = synthetic_history()
    grid = weighting_explorer.weights_grid(history, [0.0, 2.0], [list(profiles.OFFICIAL_CLAMP), None], class_names=NAMES[:9] + ["</script>"])
    html = weighting_explorer.static_explorer_html(grid, title="t <b>")
    assert "<script src" not in html.lower()
    assert not re.search(r"https?://", html)
    for control in ('<select data-role="measure"', '<select data-role="clamp"',
                    '<input type="range" data-role="beta"', '<input type="range" data-role="epoch"',
                    '<svg data-role="chart"'):
        assert control in html
    assert html.count("</script>") == 2  # the JSON blob cannot close its script tag early
    assert "t &lt;b&gt;" in html
    payload = re.search(r'<script type="application/json" data-role="grid">(.*?)</script>', html, re.S).group(1)
    assert json.loads(payload.replace("<\\/", "</"))["weights"] == grid["weights"]


_FAKE_DOM = r"""
const html = require('fs').readFileSync(process.argv[2], 'utf8');
const grid = html.match(/data-role="grid">([\s\S]*?)<\/script>/)[1];
const code = html.match(/<script>([\s\S]*?)<\/script>/)[1];
const initial = {};
for (const m of html.matchAll(/data-role="(measure|clamp|beta|epoch)"[^>]*?value="(\d+)"/g)) initial[m[1]] = m[2];
function node(tag) {
  return {tag, attrs: {}, children: [], textContent: '', listeners: {},
          setAttribute(k, v) { this.attrs[k] = v; }, appendChild(c) { this.children.push(c); return c; },
          get firstChild() { return this.children[0] || null; },
          removeChild(c) { this.children.splice(this.children.indexOf(c), 1); },
          addEventListener(ev, fn) { this.listeners[ev] = fn; }};
}
const els = {grid: Object.assign(node('script'), {textContent: grid}), chart: Object.assign(node('svg'), {namespaceURI: 'svg-ns'})};
for (const r of ['measure', 'clamp', 'beta', 'epoch', 'beta-value', 'epoch-value']) els[r] = Object.assign(node(r), {value: initial[r] || '0'});
const root = {querySelector(sel) { return els[sel.match(/data-role="([^"]+)"/)[1]]; }};
global.document = {getElementById() { return root; }, createElementNS(ns, tag) { return node(tag); }};
eval(code);
const count = () => els.chart.children.filter(c => c.tag === 'rect').length;
const first = count();
els.beta.value = '0'; els.clamp.value = '1'; els.epoch.value = '0'; els.beta.listeners.input();
const heights = els.chart.children.filter(c => c.tag === 'rect').map(c => c.attrs.height);
console.log(JSON.stringify({first, second: count(), beta: els['beta-value'].textContent, heights}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the explorer's JavaScript")
def test_static_explorer_javascript_draws_bars(tmp_path):
    history = synthetic_history()
    grid = weighting_explorer.weights_grid(history, [0.0, 2.0], [list(profiles.OFFICIAL_CLAMP), None], class_names=NAMES)
    (tmp_path / "view.html").write_text(weighting_explorer.static_explorer_html(grid))
    (tmp_path / "dom.js").write_text(_FAKE_DOM)
    out = subprocess.run(["node", str(tmp_path / "dom.js"), str(tmp_path / "view.html")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["first"] == got["second"] == 20  # 10 statistic bars + 10 weight bars
    assert got["beta"] == "0"
    # beta = 0: every weight is 1, so all ten weight bars have the same height
    assert len(set(got["heights"][10:])) == 1


# ----------------------------------------------------------------------------------- parameter checks
def test_as_list_reads_papermill_strings():
    assert profiles.as_list('["kappa", "adv_loss"]', "m") == ["kappa", "adv_loss"]
    assert profiles.as_list("kappa, adv_loss", "m") == ["kappa", "adv_loss"]
    assert profiles.as_list("[0, 2.5]", "b", float) == [0.0, 2.5]
    assert profiles.check_clamp("[0.5, 3]") == (0.5, 3.0) and profiles.check_clamp("None") is None
    with pytest.raises(ValueError, match="not a valid float"):
        profiles.as_list(["x"], "b", float)


def test_validation_errors_list_valid_values():
    with pytest.raises(ValueError, match="valid: kappa, robust_acc, adv_loss, clean_acc"):
        ablations.validate("smoke", measures=["kappa", "entropy"])
    with pytest.raises(ValueError, match="valid: measure, beta, clamp, quirks"):
        ablations.validate("smoke", ablations=["temperature"])
    with pytest.raises(ValueError, match="Fair-\\* method.*valid: fair-ard"):
        ablations.validate("smoke", method="ard")
    with pytest.raises(ValueError, match="0 < low <= high"):
        ablations.validate("smoke", clamp=[3, 1])
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        ablations.validate("smoke", betas=[-1])
    with pytest.raises(ValueError, match="valid: smoke, quick, paper"):
        ablations.validate("tiny")
    with pytest.raises(ValueError, match="valid: kd, kdiga, kdiga_ard, fair-kdiga"):
        kdiga.validate("smoke", methods=["kd", "ard"])
    with pytest.raises(ValueError, match="unknown student"):
        kdiga.validate("smoke", students=["resnet9000"])
    with pytest.raises(ValueError, match="missing \\['aa10'\\]"):
        aa_variants.validate("smoke", attacks=["clean", "aa"])
    with pytest.raises(ValueError, match="unknown attack"):
        aa_variants.validate("smoke", attacks=["clean", "aa", "aa10", "aa100"])
    with pytest.raises(ValueError, match="valid: kappa"):
        weighting_explorer.validate("smoke", measure="margin")
    with pytest.raises(ValueError, match="clamp_on must be True or False"):
        weighting_explorer.validate("smoke", clamp_on="yes")
    with pytest.raises(ValueError, match=r"epoch must be in \[0, 3\]"):
        weighting_explorer.validate("smoke", epoch=4)


def test_validate_raises_student_epochs_and_exposes_values():
    c = ablations.validate("smoke", betas="[0, 4]", min_epochs=3)
    assert c.setup.student_epochs == 3 and c.betas == [0.0, 4.0] and c.clamp == profiles.OFFICIAL_CLAMP
    assert "betas" in c.describe() and "student_epochs" in c.describe()
    with pytest.raises(AttributeError, match="no parameter 'gamma'"):
        c.gamma
    k = kdiga.validate("smoke", methods=["kd", "kdiga"])
    assert k.setup.methods == ("kdiga",)  # KD and KDIGA share the registered method
    assert kdiga.validate("smoke", gamma=0.5).gamma == [0.5]
    assert kdiga.validate("smoke", gamma="[0.00035, 0.5]").gamma == [0.00035, 0.5]   # papermill's string
    for bad in (-1, True, "[0.5, -0.1]"):
        with pytest.raises(ValueError, match="gamma"):
            kdiga.validate("smoke", gamma=bad)
    assert kdiga.validate("smoke").gamma_sweep == list(kdiga.GAMMA_SWEEP)        # the sweep runs by default
    assert kdiga.validate("smoke", gamma_sweep=[]).gamma_sweep == []
    assert kdiga.validate("smoke", gamma_sweep=None).gamma_sweep == []
    assert kdiga.validate("smoke", gamma_sweep="[]").gamma_sweep == []                # papermill's -p gamma_sweep '[]'
    assert kdiga.validate("smoke", gamma_sweep="0.001,0.5").gamma_sweep == [0.001, 0.5]  # the CLI's form
    assert kdiga.validate("smoke", methods=["kd"]).setup.methods == ("kdiga",)   # the sweep needs KDIGA's teacher
    for bad in (-0.5, "[0.05, -1]", "x"):
        with pytest.raises(ValueError, match="gamma_sweep"):
            kdiga.validate("smoke", gamma_sweep=bad)


def test_kdiga_gamma_sweep_makes_one_arm_per_value(monkeypatch):
    monkeypatch.setattr(kdiga, "student_config", lambda p, method, **kw: (method, kw["method_options"], kw["seed"]))
    p = profiles.get_profile("smoke", seeds=[0, 1])
    arms = kdiga.kdiga_arms(p, ["kd", "kdiga", "kdiga_ard"], [0.00035, 0.5])
    labels = sorted({a["label"] for a in arms})
    assert labels == ["KD", "KDIGA (γ=0.00035)", "KDIGA (γ=0.5)", "KDIGA-ARD (γ=0.00035)", "KDIGA-ARD (γ=0.5)"]
    assert len(arms) == 5 * 2                                            # every arm on both seeds
    assert {a["cfg"][1]["gamma"] for a in arms if a["label"].startswith("KDIGA (")} == {0.00035, 0.5}
    assert [a["cfg"][1] for a in arms if a["label"] == "KD"] == [{"gamma": 0.0}] * 2
    assert {a["label"] for a in kdiga.kdiga_arms(p, ["kdiga"], [0.5])} == {"KDIGA"}   # one value: the plain label


# ------------------------------------------------------------------------------------ ablation plan
def test_ablation_plan_changes_one_thing_per_arm():
    p = profiles.get_profile("quick")
    plan = ablations.ablation_arms(p, "fair-ard", ablations.ABLATIONS, fairness.DIFFICULTY_MEASURES, [0.0, 1.0, 2.0, 3.0, 4.0],
                           profiles.OFFICIAL_CLAMP, ablations.QUIRKS)
    base = {"difficulty": "kappa", "beta": 2.0, "clamp": profiles.OFFICIAL_CLAMP, "lr_schedule": "step"}
    assert len(plan) == 4 + 5 + 2 + 6
    for arm in plan:
        changed = {k for k in base if arm["overrides"][k] != base[k]} | set(arm["overrides"]) - set(base)
        assert len(changed) <= 1, arm
        assert arm["baseline"] == (not changed and arm["method"] == "fair-ard")
    mtard = [a for a in plan if a["ablation"] == "quirk mtard_clean_target"]
    assert [a["setting"] for a in mtard] == ["natural_teacher", "robust_teacher_adv"]
    assert "method_options" not in mtard[0]["overrides"]  # off = the method's default
    assert mtard[1]["overrides"]["method_options"] == {"mtard_clean_target": "robust_teacher_adv"}
    assert all(a["method"] == "fair-mtard" for a in mtard)
    as_mtard = ablations.ablation_arms(p, "fair-mtard", ["quirks"], [], [], profiles.OFFICIAL_CLAMP, ["mtard_clean_target"])
    assert as_mtard[0]["baseline"] and not as_mtard[1]["baseline"]
    clean = [a for a in plan if a["ablation"] == "quirk clean_forward"]
    assert [a["setting"] for a in clean] == ["loss_forwards_only", "official_clean_forward"]
    assert clean[0]["baseline"] and clean[1]["overrides"]["method_options"] == {"official_clean_forward": True}
    # the switch exists only in the ARD/IAD-family scripts: Fair-IAD keeps it, Fair-RSLAD's arms run Fair-ARD
    for ablated, trained in (("fair-iad", "fair-iad"), ("fair-rslad", "fair-ard")):
        arms = ablations.ablation_arms(p, ablated, ["quirks"], [], [], profiles.OFFICIAL_CLAMP, ["clean_forward"])
        assert [a["method"] for a in arms] == [trained] * 2
        assert [a["baseline"] for a in arms] == [ablated == trained, False]
    smoke = ablations.ablation_arms(profiles.get_profile("smoke"), "fair-ard", ["measure", "beta"], fairness.DIFFICULTY_MEASURES,
                            [0.0, 1.0, 2.0, 3.0, 4.0], profiles.OFFICIAL_CLAMP, ablations.QUIRKS)
    assert [a["setting"] for a in smoke] == ["kappa", "robust_acc", "0", "2"]


def test_labelled_results_share_runs_and_skip_refused_arms(synthetic_root, monkeypatch, tmp_path):
    from fairard.studies import arm_runs, labelled_results
    from fairard.train import TrainConfig
    from fairard.utils import write_json

    monkeypatch.setenv("FAIRARD_DATA", str(synthetic_root))
    monkeypatch.setenv("FAIRARD_RESULTS", str(tmp_path))
    p = profiles.get_profile("smoke")
    arms = [{"label": f"measure: {d}", "ablation": "measure", "setting": d,
             "cfg": TrainConfig(method="fair-ard", difficulty=d, seed=s)}
            for d in ("kappa", "clean_acc", "kappa") for s in (0, 1)]
    planned = arm_runs(p, arms, ["clean"])
    assert len(planned) == 4                              # the repeated arm shares its runs
    with pytest.raises(ValueError, match="4 run"):        # nothing computed yet: the missing runs are named
        labelled_results(p, arms, ["clean"], "ablations")
    for run in planned:
        if run.config.difficulty == "kappa":
            write_json(run.output(), {**fake_result("fair-ard", run.config.seed, [0.5] * 10, attacks=("clean",)),
                                      "key": run.key()})
        else:
            write_json(run.folder() / "failed.json", {"error": "ValueError: ClassStats has no 'clean_correct' values",
                                                      "refused": True})
    results, skipped = labelled_results(p, arms, ["clean"], "ablations")
    assert [r["method"] for r in results] == ["measure: kappa"] * 4 and results[0]["run_method"] == "fair-ard"
    assert len(skipped) == 2 and "clean_correct" in skipped[0]["reason"] and "cfg" not in skipped[0]


def test_lr_sequence_shows_the_single_decay_quirk():
    cfg = {"method": "fair-ard", "epochs": 8, "milestones": [4, 6], "lr": None}
    step = ablations.lr_sequence({"config": {**cfg, "lr_schedule": "step"}})
    single = ablations.lr_sequence({"config": {**cfg, "lr_schedule": "official_single_decay"}})
    assert step[-1] == pytest.approx(0.001) and single[-1] == pytest.approx(0.01) and step[:6] == single[:6]
    assert ablations._run_length([0.1, 0.1, 0.01]) == "0.1×2, 0.01×1"


def test_ablation_tables_figures_and_glue():
    p = profiles.get_profile("smoke")
    results = []
    for seed in (0, 1):
        for ablation, setting, acc, base in (("beta", "0", 0.3, False), ("beta", "2", 0.5, True),
                                             ("quirk lr_schedule", "step", 0.5, True),
                                             ("quirk lr_schedule", "official_single_decay", 0.4 + 0.1 * seed, False)):
            clean = acc + 0.2 if setting == "official_single_decay" else acc  # the quirk: clean +15, pgd20 -5 points
            r = fake_result(f"{ablation}: {setting}", seed, {"clean": [clean] * 10, "pgd20": [acc] * 10},
                            attacks=("clean", "pgd20"))
            lr = setting if ablation.startswith("quirk") else "step"
            r["config"] = {"method": "fair-ard", "epochs": 4, "milestones": [2, 3], "lr": None, "lr_schedule": lr}
            results.append({**r, "ablation": ablation, "setting": setting, "baseline": base})
    study = {"profile": p, "method": "fair-ard", "results": results, "attacks": ["clean", "pgd20"],
             "attack": "pgd20", "skipped": [{"ablation": "measure", "setting": "clean_acc", "reason": "not recorded"}]}
    table = ablations.ablation_table(study)
    assert "| beta: 0 | resnet8 | 0,1 | 30.0 ± 0.0" in table and "*measure: clean_acc*: not run" in table
    quirks = ablations.quirk_table(study)
    row = next(line for line in quirks.splitlines() if line.startswith("| lr_schedule (fair-ard) | step → official_single_decay |"))
    assert row.endswith("| +15.0 ± 5.0 | +15.0 ± 5.0 | -5.0 ± 5.0 | -5.0 ± 5.0 | 0,1 |")   # clean, then pgd20
    assert "Δ clean avg | Δ clean worst | Δ pgd20 avg | Δ pgd20 worst" in quirks
    assert "0.1×2, 0.01×1, 0.001×1 vs 0.1×2, 0.01×2" in quirks
    glue = ablations.ablation_glue(study)
    assert glue["abl_beta_0_pgd20_worst"] == 30.0 and glue["abl_beta_2_pgd20_avg"] == 50.0
    fig = ablations.ablation_figure(study)
    assert len(fig.axes) == 2 and "seeds 0,1" in fig._suptitle.get_text()


# -------------------------------------------------------------------------------------- AA variants
def test_aa_rows_table_and_figure():
    aa = [0.2, 0.4] + [0.5] * 8
    aa10 = [0.3, 0.4] + [0.5] * 8
    results = [fake_result("ard", s, {"clean": [0.9] * 10, "pgd20": [0.6] * 10, "aa": aa, "aa10": aa10})
               for s in (0, 1)]
    study = {"profile": profiles.get_profile("smoke"), "results": results, "attacks": ["clean", "pgd20", "aa", "aa10"]}
    (row,) = aa_variants.aa_rows(study)
    assert row["diff"][0] == pytest.approx(0.1) and row["aa_worst"] == 0.2 and row["aa10_worst"] == 0.3
    table = aa_variants.aa_table(study)
    assert "| airplane | 20.0 | 30.0 | +10.0 |" in table and "| **worst class** | 20.0 | 30.0 | +10.0 |" in table
    assert aa_variants.aa_glue(study)["aa_ard_resnet8_max_class_gap"] == 10.0
    assert len(aa_variants.aa_figure(study).axes) == 1


def test_gap_table_and_figure():
    results = [fake_result(m, 0, [acc] * 10, attacks=("clean", "pgd20")) for m, acc in (("KD", 0.1), ("KDIGA", 0.3))]
    gaps = [{"method": m, "student": "resnet8", "seed": 0, "n": 50, "l2": g, "cosine": c, "teacher_norm": 2.0,
             "per_class_l2": [g] * 10} for m, g, c in (("KD", 1.0, 0.2), ("KDIGA", 0.5, 0.7))]
    study = {"profile": profiles.get_profile("smoke"), "results": results, "gaps": gaps, "attacks": ["clean", "pgd20"],
             "attack": "pgd20"}
    table = kdiga.gap_table(study)
    assert "| KD | resnet8 | 0 | 1.0000 ± 0.0000 | 0.50 ± 0.00 | 0.200 ± 0.000 | 10.0 ± 0.0 |" in table
    glue = kdiga.kdiga_glue(study)
    assert glue["kdiga_kd_resnet8_gap"] == glue["kdiga_kd_gap"] == 1.0 and glue["kdiga_kd_cos"] == 0.2
    assert glue["kdiga_kdiga_gap"] == 0.5 and glue["kdiga_kdiga_cos"] == 0.7
    assert glue["kdiga_kd_gap_rel"] == 0.5 and glue["kdiga_kdiga_gap_rel"] == 0.25  # over the teacher's norm (2)
    assert glue["kdiga_kd_pgd20_avg"] == 10.0 and glue["kdiga_kdiga_resnet8_pgd20_worst"] == 30.0
    assert glue["kdiga_kd_pgd20_avg_std"] == 0.0  # one seed per method here
    assert len(kdiga.kdiga_figure(study).axes) == 2


def test_gamma_sweep_arms_share_the_default_run(monkeypatch):
    p = profiles.get_profile("smoke", seeds=[0, 1])
    sweep = kdiga.sweep_arms(p, [0.00035, 0.5])
    assert [(a["label"], a["gamma"], a["cfg"].seed) for a in sweep] == [
        ("KDIGA (γ=0.00035)", 0.00035, 0), ("KDIGA (γ=0.00035)", 0.00035, 1), ("KDIGA (γ=0.5)", 0.5, 0),
        ("KDIGA (γ=0.5)", 0.5, 1)]
    main = [a for a in kdiga.kdiga_arms(p, ["kdiga"]) if a["cfg"].seed == 0]
    assert main[0]["cfg"].method_options.get("gamma", 0.5) == 0.5
    # gamma 0.5 is KDIGA's default: the sweep's arm and the main arm are two configs of one run
    c = kdiga.validate("smoke", methods=["kd", "kdiga"], seeds=[0, 1], gamma_sweep=[0.00035, 0.5])
    assert len(kdiga.plan(c)) == 3 * 2                         # KD, KDIGA (= γ 0.5) and γ 0.00035, per seed
    assert len(kdiga.plan(kdiga.validate("smoke", methods=["kd", "kdiga"], seeds=[0, 1], gamma_sweep=[]))) == 2 * 2


def test_gamma_sweep_table_figure_and_glue():
    res = lambda label, seed, acc, gamma=None: {**fake_result(label, seed, [acc] * 9 + [0.1], attacks=("clean", "pgd20"),
                                                              key=label), **({"gamma": gamma} if gamma else {})}
    gap = lambda label, seed, l2, gamma=None: {"method": label, "student": "resnet8", "seed": seed, "n": 50, "l2": l2,
                                               "cosine": 1 - l2, "teacher_norm": 2.0, "per_class_l2": [l2] * 10,
                                               **({"gamma": gamma} if gamma else {})}
    kd = [res("KD", s, 0.1) for s in (0, 1)]
    sweep = [res(f"KDIGA (γ={g:g})", s, acc + 0.02 * s, g) for g, acc in ((0.5, 0.3), (0.00035, 0.2)) for s in (0, 1)]
    study = {"profile": profiles.get_profile("smoke"), "results": kd, "kd": kd, "attacks": ["clean", "pgd20"],
             "attack": "pgd20", "gaps": [gap("KD", s, 0.8) for s in (0, 1)], "sweep": sweep,
             "sweep_gaps": [gap(r["method"], r["seed"], 0.4 if r["gamma"] == 0.5 else 0.6, r["gamma"]) for r in sweep]}
    points = kdiga.sweep_points(study)["resnet8"]
    assert [pt["gamma"] for pt in points["points"]] == [0.00035, 0.5]   # ascending, whatever the order of the runs
    assert points["kd"]["gap_rel"] == (0.4, 0.0)                        # 0.8 over the teacher's norm 2
    table = kdiga.sweep_table(study).splitlines()
    assert table[2] == "| resnet8 | 0 (KD) | 0,1 | 0.40 ± 0.00 | 0.200 ± 0.000 | 10.0 ± 0.0 | 10.0 ± 0.0 |"
    # mean class accuracy (9 classes at acc + 0.02 * seed, one at 0.1): 28 % and 29.8 %
    assert table[4] == "| resnet8 | 0.5 | 0,1 | 0.20 ± 0.00 | 0.600 ± 0.000 | 28.9 ± 0.9 | 10.0 ± 0.0 |"
    glue = kdiga.sweep_glue(study)
    assert glue["kdiga_sweep_0_00035_gap_rel"] == 0.3 and glue["kdiga_sweep_0_5_pgd20_avg"] == 28.9
    assert glue["kdiga_sweep_0_5_pgd20_worst"] == 10.0
    fig = kdiga.sweep_figure(study)
    assert [a.get_xscale() for a in fig.axes] == ["log", "log"] and len(fig.axes[0].lines) >= 2


def test_caption_names_profile_data_seeds_commit():
    text = tables.caption(profiles.get_profile("smoke"), [fake_result("ard", 1, [0.5] * 10)])
    assert "profile smoke" in text and "seeds 1" in text and "commit abcdef0-dirty" in text and "torch 2.x" in text


# ---------------------------------------------------------------------- end to end on synthetic data
@pytest.mark.slow
def test_recorded_run_replays_and_gap_on_real_checkpoints(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRARD_DATA", str(synthetic_root))
    monkeypatch.setenv("FAIRARD_RESULTS", str(tmp_path))
    c = weighting_explorer.validate("smoke", attacks=["clean"], min_epochs=2, device="cpu", progress=False,
                            overrides={"eval_per_class": 2})
    result, history = weighting_explorer.recorded_run(c)
    assert len(history) == 2 and weighting_explorer.history_consistency(result, history) < 1e-6
    assert runs.run_path(result).name.endswith(result["train_key"]) and (runs.run_path(result) / "final.pt").exists()
    student, teacher = runs.load_student(result), runs.load_teacher(c.setup, progress=False)
    x, y = runs.test_images("cifar10", 2)
    assert kdiga.input_gradient_gap(student, teacher, x, y)["l2"] > 0
    assert kdiga.input_gradient_gap(teacher, teacher, x, y)["l2"] == 0


def test_state_difference_tells_a_batchnorm_only_change_from_a_weight_change():
    import copy

    off = _net(0).train()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    off(x)
    on = copy.deepcopy(off)
    with torch.no_grad():
        on(x + 1)                                                  # an unused train-mode forward: BN statistics only
    d = ablations.state_difference(off, on)
    assert d["max_weight_diff"] == 0.0 and d["bn_forwards"] == (1, 2)
    assert d["running_mean_rel"] > 0.05 and d["running_var_rel"] >= 0.0
    assert ablations.state_difference(off, copy.deepcopy(off))["running_mean_rel"] == 0.0
    with torch.no_grad():
        on[0].weight[0, 0, 0, 0] += 0.25
    assert ablations.state_difference(off, on)["max_weight_diff"] == pytest.approx(0.25)
