"""Profiles, parameter validation, the config-hashed result cache (atomic, resumable), the study plans and
the summaries the notebooks print (compare_pair's verdict, tables, correlations)."""
import dataclasses
import json
import math

import pytest

from fairard import profiles, runs, store, tables
from fairard.studies import capacity_gap, inheritance, main_results
from fairard import train as T
from fairard.train import TrainConfig

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---- profiles and validation -----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(profiles.PROFILES))
def test_profiles_are_printable_plain_data(name):
    p = profiles.PROFILES[name]
    text = json.dumps(p.to_dict())                      # plain data: JSON and back
    back = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()}
    assert profiles.Profile(**back) == p
    described = p.describe()
    assert all(f.name in described for f in dataclasses.fields(p))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seeds = (7,)


def test_get_profile_overrides_and_unknown_field():
    p = profiles.get_profile("quick", student_epochs=7, seeds="0,1", students='["resnet14"]', n_per_class=None)
    assert (p.student_epochs, p.seeds, p.students) == (7, (0, 1), ("resnet14",))
    assert p.n_per_class == profiles.PROFILES["quick"].n_per_class          # None keeps the profile's value
    assert profiles.PROFILES["quick"].student_epochs != 7                   # the registry is untouched
    with pytest.raises(ValueError, match=r"unknown profile field\(s\) \['epochs'\]; valid: .*student_epochs"):
        profiles.get_profile("quick", epochs=3)
    with pytest.raises(ValueError, match="unknown profile 'huge'; valid: smoke, quick, paper"):
        profiles.get_profile("huge")
    with pytest.raises(ValueError, match="positive integer"):
        profiles.get_profile("smoke", student_epochs="five")
    with pytest.raises(ValueError, match="unknown student.*valid: .*resnet8"):
        profiles.get_profile("smoke", students=["resnet9"])


def test_validate_reads_papermill_strings_and_lists_valid_values():
    s = profiles.validate("smoke", methods='["ard","fair-ard","iad"]', seeds="[0, 1, 2]", headline=["ard"])
    assert isinstance(s, profiles.Profile) and s.methods == ("ard", "fair-ard", "iad")
    assert s.seeds == (0, 1, 2) and s.other_seeds == (0,)            # other methods: first seed only
    assert s.headline_pairs == (("ard", "fair-ard"),)
    with pytest.raises(ValueError, match=r"headline method\(s\) \['rslad'\] need both.*add \['rslad', 'fair-rslad'\]"):
        profiles.validate("smoke", methods="ard,fair-ard,iad", headline=["ard", "rslad"])  # never silently dropped
    assert profiles.validate("smoke", methods="ard,fair-ard", headline=None).headline == ("ard",)  # the default pairs
    assert profiles.validate("smoke", seeds=3, other_seeds="1,2").other_seeds == (1, 2)
    assert profiles.validate("smoke", overrides='{"student_epochs": 4}').student_epochs == 4
    for bad, message in [(dict(methods='["ard","foo"]'), r"unknown method\(s\) \['foo'\]; valid: .*fair-ard"),
                         (dict(attacks="pgd,aa"), r"unknown attack\(s\) \['pgd'\]; valid: clean, fgsm, pgd20"),
                         (dict(device="tpu"), "valid: auto, cpu"),
                         (dict(seeds="a"), "not a non-negative integer"),
                         (dict(headline=["fair-ard"]), "unknown headline"),
                         (dict(attacks=["clean"], focus="pgd20"), "not among the evaluated attacks"),
                         (dict(overrides={"foo": 1}), r"unknown profile field\(s\) \['foo'\]")]:
        with pytest.raises(ValueError, match=message):
            profiles.validate("smoke", **bad)


def test_results_dir_is_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAIRARD_RESULTS", "rel/results")
    assert store.results_dir() == tmp_path / "rel" / "results"
    monkeypatch.delenv("FAIRARD_RESULTS")
    assert store.results_dir().is_absolute() and store.results_dir().parts[-2:] == ("data", "results")


# ---- config hash ---------------------------------------------------------------------------------------
def _changed(name, value):
    alternatives = {"lr_schedule": "official_single_decay", "amp": "off", "difficulty": "robust_acc",
                    "pad_mode": "reflect", "method": "fair-ard",
                    # fields TrainConfig checks: another valid value
                    "dataset": "cifar100", "device": "cpu", "clamp": (0.5, 3.0), "engine": "graph"}
    if name in alternatives:
        return alternatives[name]
    if value is None:
        return (1, 2) if name == "milestones" else 0.5 if name in ("lr", "momentum", "weight_decay") else \
            True if name in ("nesterov", "channels_last") else 3 if name in ("epochs", "batch_size", "n_per_class",
                                                                               "attack_steps") else "x"
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return value + (7,)
    if isinstance(value, dict):
        return {**value, "extra": 1}
    raise AssertionError(name)


def test_config_hash_changes_with_every_field(synthetic_root, monkeypatch, tmp_path):
    monkeypatch.setenv("FAIRARD_DATA", str(synthetic_root))
    monkeypatch.setenv("FAIRARD_RESULTS", str(tmp_path))
    base = TrainConfig(method="ard", teacher="resnet8", teacher_checkpoint="t.pt")
    for f in dataclasses.fields(TrainConfig):
        changed = dataclasses.replace(base, **{f.name: _changed(f.name, getattr(base, f.name))})
        if f.name in ("device", "data_root", "engine"):  # where / how it runs (the same kernels): same run
            assert changed.key() == base.key(), f.name
        else:
            assert changed.key() != base.key(), f.name
    settings = runs.eval_settings(profiles.PROFILES["smoke"])
    teacherless = TrainConfig(method="pgd_at")
    assert store.run_key(teacherless, settings) != store.run_key(teacherless, {**settings, "eval_per_class": 6})
    assert store.run_key(teacherless, settings) != store.run_key(teacherless, {**settings, "version": 0})


# ---- the result cache ------------------------------------------------------------------------------------
@pytest.fixture
def cache(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRARD_DATA", str(synthetic_root))
    monkeypatch.setenv("FAIRARD_RESULTS", str(tmp_path / "results"))
    profile = profiles.get_profile("smoke", eval_per_class=2, aa_per_class=None, attacks=["clean", "pgd20"])
    cfg = TrainConfig(method="pgd_at", student="resnet8", n_per_class=4, epochs=2, milestones=(1,),
                      attack_steps=1, batch_size=20, monitor_n=0, device="cpu", amp="off")
    return profile, cfg


def test_run_writes_result_atomically_and_second_run_comes_from_cache(cache, monkeypatch):
    profile, cfg = cache
    first = runs.run(cfg, profile=profile, progress=False)
    target = store.result_file(cfg, runs.eval_settings(profile))
    assert not first["from_cache"] and target.exists() and target.parent == store.run_dir(cfg)
    assert not list(target.parent.glob(".*.tmp"))
    stored = json.loads(target.read_text())
    assert stored["key"] == store.run_key(cfg, runs.eval_settings(profile)) and "from_cache" not in stored
    assert set(stored["evaluation"]["attacks"]) == {"clean", "pgd20"}
    assert stored["provenance"]["git_commit"] and stored["dataset_note"]

    monkeypatch.setattr(T.Trainer, "train_epoch", lambda *a, **k: pytest.fail("a cached run must not train"))
    second = runs.run(cfg, profile=profile, progress=False)
    assert second["from_cache"] and second["evaluation"] == stored["evaluation"]


def test_failed_result_write_leaves_nothing_finished(cache, monkeypatch):
    profile, cfg = cache
    real = runs.write_json
    monkeypatch.setattr(runs, "write_json", lambda path, obj: real(path, {**obj, "unserialisable": object()}))
    with pytest.raises(TypeError):
        runs.run(cfg, profile=profile, progress=False)
    out, target = store.run_dir(cfg), store.result_file(cfg, runs.eval_settings(profile))
    assert (out / "final.pt").exists() and not target.exists() and not list(out.glob(".*.tmp"))
    assert not list(out.glob("evals/.*.tmp"))
    monkeypatch.setattr(runs, "write_json", real)
    monkeypatch.setattr(T.Trainer, "train_epoch", lambda *a, **k: pytest.fail("training had finished"))
    again = runs.run(cfg, profile=profile, progress=False)             # evaluated again, not retrained
    assert not again["from_cache"] and not again["trained"] and target.exists()


def test_adding_an_attack_evaluates_only_that_attack(cache, monkeypatch):
    profile, cfg = cache
    first = runs.run(cfg, profile=profile, progress=False)
    evaluated = []
    real_evaluate = runs.evaluate
    monkeypatch.setattr(runs, "evaluate", lambda *a, **k: evaluated.extend(k["attacks"]) or real_evaluate(*a, **k))
    monkeypatch.setattr(T.Trainer, "train_epoch", lambda *a, **k: pytest.fail("the run had finished training"))
    monkeypatch.setattr(runs, "large_eps_accuracy", lambda *a, **k: pytest.fail("the eps=1 check is cached"))
    wider = runs.run(cfg, profile=profile, attacks=["clean", "pgd20", "fgsm"], progress=False)
    assert evaluated == ["fgsm"] and not wider["from_cache"] and not wider["trained"]
    for attack in ("clean", "pgd20"):
        assert json.dumps(wider["evaluation"]["attacks"][attack]) == json.dumps(first["evaluation"]["attacks"][attack])
    assert wider["train_key"] == first["train_key"] and wider["key"] != first["key"]
    assert runs.run(cfg, profile=profile, attacks=["clean", "pgd20", "fgsm"], progress=False)["from_cache"]


def test_load_recorded_reads_the_committed_gpu_run(tmp_path):
    study = runs.load_recorded("results/h100-2026-11-22")
    assert [r["method"] for r in study.results] == ["ard", "fair-ard"] and study.teacher["student"] == "resnet18"
    assert study.setup.headline_pairs == (("ard", "fair-ard"),) and study.setup.eval_per_class is None
    assert all(r["evaluation"]["attacks"]["pgd20"]["n"] == 10000 for r in study.results)
    caption = study.caption("pgd20")
    assert "JPEG" in caption and "H100" in caption and "AA on 50 img/class" in caption
    with pytest.raises(ValueError, match="no finished run"):
        runs.load_recorded(tmp_path)


class _Interrupted(Exception):
    pass


def test_half_finished_run_is_resumed_not_read_as_finished(cache, monkeypatch):
    profile, cfg = cache
    real_epoch = T.Trainer.train_epoch

    def dies_in_epoch_1(self, epoch, bar=None):
        if epoch == 1:
            raise _Interrupted
        return real_epoch(self, epoch, bar)

    monkeypatch.setattr(T.Trainer, "train_epoch", dies_in_epoch_1)
    with pytest.raises(_Interrupted):
        runs.run(cfg, profile=profile, progress=False)
    out, target = store.run_dir(cfg), store.result_file(cfg, runs.eval_settings(profile))
    assert (out / "checkpoint.pt").exists() and not target.exists()
    assert store.load_result(target) is None

    epochs = []
    monkeypatch.setattr(T.Trainer, "train_epoch", lambda self, epoch, bar=None: epochs.append(epoch)
                        or real_epoch(self, epoch, bar))
    result = runs.run(cfg, profile=profile, progress=False)
    assert epochs == [1] and not result["from_cache"]                # resumed at epoch 1, epoch 0 kept
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [0, 1]
    assert runs.run(cfg, profile=profile, progress=False)["from_cache"]


# ---- schedules -----------------------------------------------------------------------------------------
def test_scaled_schedule_for_ard_rslad_iad():
    assert runs._scaled_schedule("ard", None) == (None, {})
    assert runs._scaled_schedule("ard", 200) == (None, {})             # the official length: official milestones
    assert runs._scaled_schedule("ard", 20) == ((10, 15), {})
    assert runs._scaled_schedule("fair-ard", 20) == ((10, 15), {})
    assert runs._scaled_schedule("ard", 1) == ((), {})                 # milestones at 0 or at the end are dropped
    assert runs._scaled_schedule("rslad", 30) == ((22, 26, 28), {})    # 215, 260, 285 of 300
    assert runs._scaled_schedule("iad", 20) == ((10, 15), {"begin": 6})  # IAD's introspection from epoch 60 of 200
    assert runs._scaled_schedule("fair-iad", 5) == ((2, 4), {"begin": 2})
    assert runs._scaled_schedule("iad", 1)[1] == {"begin": 1}          # never before the second epoch


# ---- summaries on hand-made results -----------------------------------------------------------------------
def fake(method, seed, per_class, attack="pgd20", student="resnet8", teacher="resnet20"):
    per_class = list(per_class)
    mean = sum(per_class) / len(per_class)
    std = math.sqrt(sum((v - mean) ** 2 for v in per_class) / len(per_class))
    summary = {"per_class": per_class, "accuracy": mean, "mean_class_accuracy": mean,
               "worst_class_accuracy": min(per_class), "worst_class": per_class.index(min(per_class)),
               "nsd": std / mean if mean else float("nan")}
    prov = {"git_commit": "abc123-dirty", "versions": {"torch": "2.x"}, "device": "cpu", "device_name": "cpu"}
    return {"method": method, "student": student, "seed": seed, "key": f"{method}{seed}", "config": {"teacher": teacher},
            "evaluation": {"class_names": NAMES[:len(per_class)], "attacks": {attack: summary}, "seconds": {attack: 1.0}},
            "provenance": prov, "from_cache": True, "train_seconds": 1.0, "dataset_note": "x (a lossy JPEG-derived copy)"}


def _worst(method, worsts):
    return [fake(method, s, [w, 0.5, 0.6]) for s, w in enumerate(worsts)]


def test_compare_pair_verdicts():
    clear = tables.compare_pair(_worst("ard", [0.10, 0.11, 0.09]) + _worst("fair-ard", [0.20, 0.22, 0.19]),
                           "ard", "fair-ard", "pgd20")
    assert clear["exceeds_spread"] and clear["seeds"] == [0, 1, 2]
    assert clear["mean_diff"] == pytest.approx(0.1033, abs=1e-3)
    assert "+10.3 points" in clear["verdict"] and "exceeds twice the seed-to-seed spread" in clear["verdict"]

    noisy = tables.compare_pair(_worst("ard", [0.10, 0.30, 0.20]) + _worst("fair-ard", [0.15, 0.25, 0.30]),
                           "ard", "fair-ard", "pgd20")
    assert not noisy["exceeds_spread"] and "not distinguishable from noise" in noisy["verdict"]

    two = tables.compare_pair(_worst("ard", [0.1, 0.1]) + _worst("fair-ard", [0.5, 0.5]), "ard", "fair-ard", "pgd20")
    assert not two["exceeds_spread"] and "Fewer than 3 seeds" in two["verdict"]

    with pytest.raises(ValueError, match="no seed has both"):
        tables.compare_pair(_worst("ard", [0.1]), "ard", "fair-ard", "pgd20")


def test_headline_text_and_glue():
    results = _worst("ard", [0.10, 0.30, 0.20]) + _worst("fair-ard", [0.15, 0.25, 0.30]) + _worst("rslad", [0.2])
    comps = tables.headline(results, profiles.HEADLINE_PAIRS, attacks=("pgd20", "aa"))
    assert [(c["fair"], c["attack"]) for c in comps] == [("fair-ard", "pgd20")]   # no fair-rslad, no aa
    text = tables.headline_markdown(comps, profiles.PROFILES["quick"])
    assert "not distinguishable from seed-to-seed noise" in text and "`paper` profile" in text
    glue = tables.headline_glue(comps)
    assert glue["fair_ard_worst_pgd_diff"] == pytest.approx(3.3) and glue["fair_ard_worst_pgd_exceeds"] is False
    assert glue["fair_ard_worst_pgd_n_seeds"] == 3
    assert "Fewer than 3 seeds" in tables.headline_markdown(tables.headline(_worst("ard", [0.1]) + _worst("fair-ard", [0.2]),
                                                                   profiles.HEADLINE_PAIRS), profiles.PROFILES["smoke"])
    assert "floor" not in text
    floored = tables.headline(_worst("ard", [0.0, 0.0, 0.0]) + _worst("fair-ard", [0.0, 0.0, 0.0]), profiles.HEADLINE_PAIRS)
    assert "0 % for every seed of both methods" in tables.headline_markdown(floored, profiles.PROFILES["quick"])


def test_tables_show_std_only_for_several_seeds():
    rows = tables.summarize_runs(_worst("ard", [0.1, 0.3]) + _worst("cfa", [0.2]), ["pgd20"])
    assert rows[0]["pgd20/worst_class_accuracy"] == pytest.approx((0.2, 0.1))
    table = tables.markdown_table(rows, ["pgd20"]).splitlines()
    assert table[0].startswith("| method | student | seeds | pgd20 avg | pgd20 worst |")
    assert "| 20.0 ± 10.0 |" in table[2] and "±" not in table[3]


def test_correlations_and_inheritance_rows():
    assert tables.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert tables.spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert tables.spearman([1, 2, 2, 3], [3, 2, 2, 1]) == pytest.approx(-1.0)      # ties averaged
    assert math.isnan(tables.pearson([1, 1, 1], [1, 2, 3]))
    teacher = fake("teacher (pgd_at)", 0, [0.4, 0.2, 0.6], student="resnet20")
    students = [fake("ard", 0, [0.3, 0.05, 0.5]), fake("iad", 0, [0.3, 0.1, 0.5])]
    rows = inheritance.inheritance_rows(students, teacher, "pgd20")
    assert [r["method"] for r in rows] == ["teacher (pgd_at)", "ard", "iad"]
    assert rows[1]["worst_class"] == "automobile" and rows[1]["spearman"] == pytest.approx(1.0)
    verdict = inheritance.inheritance_verdict(rows, "pgd20")
    assert "2 of 2 measurable students are less fair" in verdict and "only partially" in verdict
    assert "say little" not in verdict
    assert f"ard {rows[1]['nsd']:.3f} (+{100 * (rows[1]['nsd'] / rows[0]['nsd'] - 1):.0f} %)" in verdict
    weak = inheritance.inheritance_rows([fake("ard", 0, [0.0, 0.0, 0.06])], teacher, "pgd20")
    weak_verdict = inheritance.inheritance_verdict(weak, "pgd20")
    assert "1 of 1 students (ard) are below 5 %" in weak_verdict and "cannot test" in weak_verdict
    assert "only partially" not in weak_verdict  # a near-zero student is "unfair" by construction: no conclusion
    # NSD within the tolerance of the teacher's: "about as fair", not "less fair"
    close = inheritance.inheritance_rows([fake("ard", 0, [0.41, 0.2, 0.6])], teacher, "pgd20")
    assert "about as fair as the teacher" in inheritance.inheritance_verdict(close, "pgd20")
    mixed = inheritance.inheritance_rows([fake("ard", 0, [0.3, 0.05, 0.5]), fake("iad", 0, [0.4, 0.35, 0.45])], teacher, "pgd20")
    assert "mixed: 1 of 2 measurable students are less fair than the teacher, 1 fairer" in \
        inheritance.inheritance_verdict(mixed, "pgd20")
    assert "| ard | resnet8 | 0 |" in inheritance.inheritance_markdown(rows)


def test_main_results_plan_runs_headline_pairs_on_every_seed(synthetic_root, monkeypatch, tmp_path):
    monkeypatch.setenv("FAIRARD_DATA", str(synthetic_root))
    monkeypatch.setenv("FAIRARD_RESULTS", str(tmp_path))
    setup = profiles.validate("smoke", methods=["ard", "fair-ard", "cfa"], seeds=[0, 1, 2], headline=["ard"])
    plan = main_results.plan(setup)
    students = [r for r in plan if r.kind == "student"]
    assert sorted((r.config.method, r.config.seed) for r in students) == [
        ("ard", 0), ("ard", 1), ("ard", 2), ("cfa", 0), ("fair-ard", 0), ("fair-ard", 1), ("fair-ard", 2)]
    (teacher_eval,) = [r for r in plan if r.kind == "teacher_eval"]
    (teacher,) = teacher_eval.needs
    assert teacher.kind == "teacher"
    assert [[n.id for n in r.needs] for r in students] == [[] if r.config.method == "cfa" else [teacher.id]
                                                            for r in students]  # CFA distils from no teacher
    assert not tmp_path.joinpath("teachers").exists()                 # planning trains nothing
    with pytest.raises(ValueError, match=r"8 run\(s\) of main_results are not in the store.*python -m fairard run"):
        main_results.collect(setup)
    results = [fake(m, s, [0.1, 0.2, 0.3]) for m, s in (("ard", 0), ("ard", 1), ("ard", 2), ("cfa", 0))]
    study = runs.Study(setup, results, {"resnet8": fake("teacher", 0, [0.5, 0.5, 0.5])}, [], 1.0)
    assert "everything came from the cache" in study.summary()
    caption = study.caption("pgd20")
    assert caption.startswith("pgd20 · profile smoke · lossy JPEG-derived CIFAR-10 copy · seeds 0,1,2 · commit abc123")


def test_figures_draw_on_degenerate_results():
    """Figures must draw whatever the numbers: all-zero accuracies (NSD nan), one seed, one class robust."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fairard import plots

    teacher = fake("teacher (pgd_at)", 0, [0.4, 0.0, 0.0], student="resnet8")
    results = [fake(m, s, [0.0, 0.0, 0.0] if m == "ard" else [0.2, 0.0, 0.1], student=st, teacher="resnet8")
               for m in ("ard", "fair-ard") for s in (0, 1) for st in ("resnet8", "resnet14")]
    for r in results:
        r["class_weights_history"], r["kappa_history"] = [[1.0, 1.0, 1.0], [0.9, 2.5, 0.8]], [[1, 0, 2], [1, 0, 1]]
    study = runs.Study(profiles.validate("smoke"), results, {"resnet8": teacher}, [], 1.0)
    rows = capacity_gap.capacity_rows(study, "pgd20")
    assert {r["student"] for r in rows} == {"resnet8", "resnet14"} and math.isnan(rows[0]["kept_worst"])
    figs = [plots.per_class_bars(results, teacher, "pgd20", caption="c"),
            plots.per_class_heatmap(results, teacher, "pgd20"),
            plots.paired_seeds(results, [("ard", "fair-ard")], ["pgd20", "aa"]),
            plots.summary_figure(tables.summarize_runs(results, ["pgd20"]), ["pgd20"]),
            plots.class_weight_trajectories(results[-1]),
            plots.teacher_student_scatter(results, teacher, "pgd20"),
            plots.per_class_lines(results, teacher, "pgd20"),
            plots.capacity_curves(rows, caption=study.caption("pgd20")),
            plots.capacity_curves(capacity_gap.capacity_rows(dataclasses.replace(study, results=results[:4]), "pgd20"))]
    for fig in figs:
        fig.canvas.draw()  # rendering is where log scales and nan limits fail
    plt.close("all")
    assert "kept worst" in capacity_gap.capacity_markdown(rows) and "ard from resnet8" in capacity_gap.capacity_verdict(rows, "pgd20")


def test_run_key_follows_the_teacher_checkpoint_content_not_its_path(synthetic_root, monkeypatch, tmp_path):
    """Keys survive moving or copying the results folder (a GPU machine's results read back for the book)."""
    import shutil

    import torch

    monkeypatch.setenv("FAIRARD_DATA", str(synthetic_root))
    settings = runs.eval_settings(profiles.PROFILES["smoke"])
    teacher = tmp_path / "a" / "teachers" / "pgd_at-resnet8-x" / "final.pt"
    teacher.parent.mkdir(parents=True)
    torch.save({"w": torch.ones(3)}, teacher)
    keys = []
    for folder in ("a", "b"):
        if folder == "b":
            shutil.copytree(tmp_path / "a", tmp_path / "b")
        monkeypatch.setenv("FAIRARD_RESULTS", str(tmp_path / folder))
        cfg = TrainConfig(method="ard", teacher="resnet8",
                          teacher_checkpoint=str(tmp_path / folder / "teachers" / "pgd_at-resnet8-x" / "final.pt"))
        keys.append(store.run_key(cfg, settings))
    assert keys[0] == keys[1]
    other = tmp_path / "elsewhere.pt"
    torch.save({"w": torch.zeros(3)}, other)
    assert store.run_key(TrainConfig(method="ard", teacher="resnet8", teacher_checkpoint=str(other)), settings) != keys[1]
    with pytest.raises(FileNotFoundError):  # a teacher that is not trained yet: no key
        store.run_key(TrainConfig(method="ard", teacher="resnet8", teacher_checkpoint=str(tmp_path / "none.pt")), settings)


def test_headline_compares_within_each_student():
    results = (_worst("ard", [0.1, 0.1, 0.1]) + _worst("fair-ard", [0.2, 0.2, 0.2])
               + [dict(r, student="resnet18") for r in _worst("ard", [0.3, 0.3, 0.3]) + _worst("fair-ard", [0.3, 0.3, 0.3])])
    with pytest.raises(ValueError, match="several students"):
        tables.compare_pair(results, "ard", "fair-ard", "pgd20")
    comps = tables.headline(results, [("ard", "fair-ard")], ["pgd20"])
    assert [(c["student"], round(100 * c["mean_diff"], 1)) for c in comps] == [("resnet8", 10.0), ("resnet18", 0.0)]
    assert comps[1]["verdict"].startswith("(resnet18) ")
    glue = tables.headline_glue(comps)
    assert glue["fair_ard_worst_pgd_diff"] == 10.0 and glue["fair_ard_worst_pgd_diff_resnet18"] == 0.0


def test_provenance_names_the_cpu_model_for_captions():
    from fairard.utils import cpu_model, provenance

    prov = provenance("cpu")
    assert prov["device"] == "cpu" and prov["device_name"].startswith(cpu_model())
    assert prov["device_name"].endswith(f"({__import__('os').cpu_count()} cores)") and cpu_model()
    assert prov["versions"]["torch"] and prov["git_commit"]


def test_floor_note_only_when_the_worst_class_cannot_move():
    floored = [fake("ard", s, [0.0, 0.02, 0.01]) for s in range(3)]
    note = tables.floor_note(floored, "pgd20")
    assert "0 % in every one of the 3 runs" in note and "3 of them average below 5 %" in note
    assert tables.floor_note(_worst("ard", [0.0, 0.1, 0.0]), "pgd20") == ""  # one run off the floor, averages > 5 %
    weak = [fake("ard", s, [0.01, 0.02, 0.03 + 0.01 * s]) for s in range(3)]
    assert "3 of the 3 runs average below 5 %" in tables.floor_note(weak, "pgd20")
    assert tables.floor_note([], "pgd20") == ""


# ---- the paper profiles, FRL's hot start ----------------------------------------------------------------
@pytest.fixture
def no_training(monkeypatch):
    """student_config without training any teacher: each role's checkpoint is a name."""
    def fake_checkpoint(p, *, role="teacher", progress=True, arch=None):
        return f"{role}-{arch or ''}.pt"
    monkeypatch.setattr(runs, "teacher_checkpoint", fake_checkpoint)


def test_paper_profile_trains_its_teacher_with_the_trades_script_recipe():
    p = profiles.PROFILES["paper"]
    cfg = runs.teacher_config(p)
    assert (cfg.method, cfg.student, cfg.epochs, cfg.milestones) == ("trades", "wrn-34-10", 76, (74,))
    assert (cfg.weight_decay, cfg.batch_size, cfg.attack_steps) == (2e-4, 128, 10)
    assert cfg.method_options == {"eps": 0.031, "step_size": 0.007}
    nat = runs.teacher_config(p, role="nat_teacher")
    assert (nat.method, nat.student) == ("natural", "wrn-34-10")        # MTARD's code: a natural WRN-34-10
    shortened = runs.teacher_config(dataclasses.replace(p, teacher_epochs=10))
    assert (shortened.epochs, shortened.milestones) == (10, (8, 9))      # an explicit teacher_epochs wins
    assert runs.teacher_config(profiles.PROFILES["quick"]).method_options == {}
    for word in ("0.031", "0.007", "76", "2e-4", "WRN-34-10", "1.6/255", "paper-official"):
        assert word in p.description, word


def test_paper_official_profile_switches_every_quirk_on(no_training):
    official, paper = profiles.PROFILES["paper-official"], profiles.PROFILES["paper"]
    assert "aa10" in official.attacks and "aa" in official.attacks and "aa10" not in paper.attacks
    expect = {
        "ard": ("official_single_decay", {"official_clean_forward": True}),
        "fair-iad": ("official_single_decay", {"official_clean_forward": True}),
        "fair-kdiga": ("official_single_decay", {"grad_align": "official_batch"}),
        "kdiga_ard": ("official_single_decay", {"grad_align": "official_batch", "kdiga_ard_teacher_input": "adv"}),
        "fair-mtard": ("step", {"mtard_clean_target": "robust_teacher_adv"}),
        "absld": ("step", {"absld_temperature": "official_product"}),
        "rslad": ("step", {}), "mtard": ("step", {}),
    }
    for method, (schedule, options) in expect.items():
        cfg = runs.student_config(official, method)
        assert (cfg.lr_schedule, cfg.method_options) == (schedule, options), method
        plain = runs.student_config(paper, method)
        assert (plain.lr_schedule, plain.method_options) == ("step", {}), method
    # a notebook's own override still wins over the profile's quirk
    cfg = runs.student_config(official, "ard", lr_schedule="step", method_options={"official_clean_forward": False})
    assert (cfg.lr_schedule, cfg.method_options) == ("step", {"official_clean_forward": False})
    for name in (m for m in official.method_overrides):                   # every quirk names a real option
        profiles.check_methods([name])


def test_frl_fine_tunes_the_cached_pgd_at_run_of_its_architecture(no_training):
    p = profiles.PROFILES["quick"]
    cfg = runs.student_config(p, "frl-rmrw", student="resnet14")
    assert cfg.init_checkpoint == "init-resnet14.pt" and cfg.teacher_checkpoint is None
    assert cfg.val_per_class == 500 * 3 // 50                            # the script's 300 of 5,000 per class
    assert cfg.method_options == {"rate1_halving": 1}                     # 40 of 120 epochs, scaled to 2
    init = runs.teacher_config(p, role="init", arch="resnet14")
    assert (init.method, init.student, init.epochs) == ("pgd_at", "resnet14", p.teacher_epochs)
    assert {"frl-rw", "frl-rmrw", "bat", "cfa"} <= set(profiles.MAIN_METHODS)
    with pytest.raises(ValueError, match="teacher_method"):
        profiles.get_profile("quick", teacher_method="frl-rw")


def test_init_checkpoint_is_keyed_by_its_content(synthetic_root, monkeypatch, tmp_path):
    """FRL's starting point enters the run key by its sha256, like a teacher: the key survives moving the
    results folder and changes when the checkpoint's bytes do."""
    import shutil

    import torch

    monkeypatch.setenv("FAIRARD_DATA", str(synthetic_root))
    monkeypatch.setenv("FAIRARD_RESULTS", str(tmp_path / "a"))
    start = tmp_path / "a" / "teachers" / "x" / "final.pt"
    start.parent.mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, start)
    cfg = TrainConfig(method="frl-rw", init_checkpoint=str(start))
    key = store.train_key(cfg)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    monkeypatch.setenv("FAIRARD_RESULTS", str(tmp_path / "b"))
    moved = dataclasses.replace(cfg, init_checkpoint=str(tmp_path / "b" / "teachers" / "x" / "final.pt"))
    assert store.train_key(moved) == key
    torch.save({"w": torch.zeros(2)}, tmp_path / "b" / "teachers" / "x" / "final.pt")
    assert store.train_key(moved) != key
