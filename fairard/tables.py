"""Statistics and Markdown tables over run results: summaries over seeds, Fair-* vs base comparisons with
their seed-to-seed spread, per-class tables, correlations, provenance, glue names and captions.

Everything here is a pure function of result dicts (as ``fairard.runs.run`` returns them); the
figures of ``fairard.plots`` read the same functions.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import numpy as np

from .profiles import Profile, dataset_label, dataset_note
from .utils import git_commit

if TYPE_CHECKING:
    from .runs import Study


def metric(result: dict, attack: str, what: str = "accuracy") -> float:
    """One number of a run: ``what`` in accuracy, worst_class_accuracy, nsd, mean_class_accuracy."""
    return result["evaluation"]["attacks"][attack][what]


def floor_note(results, attack: str, *, low: float = 0.05) -> str:
    """A warning sentence when ``results`` cannot show a class weighting's effect under ``attack``: every
    run's worst class is at 0 %, or most runs average below ``low``; "" otherwise."""
    results = list({r.get("key", id(r)): r for r in results}.values())  # an arm shared by two sweeps counts once
    if not results:
        return ""
    worst = [metric(r, attack, "worst_class_accuracy") for r in results]
    weak = sum(metric(r, attack, "accuracy") < low for r in results)
    if not any(worst):
        return (f"Under {attack} the worst class is at 0 % in every one of the {len(results)} runs here, and "
                f"{weak} of them average below {100 * low:.0f} %: a floor. No difference between these runs can "
                "show on the worst class at this scale; differences can show in the averages and the clean "
                "columns, and the worst class needs the `paper` profile (or a recorded GPU run).")
    if 2 * weak > len(results):
        return (f"{weak} of the {len(results)} runs average below {100 * low:.0f} % under {attack}: their worst "
                "class and NSD are close to a floor and say little.")
    return ""


def mean_std(vals) -> tuple[float, float]:
    mean = sum(vals) / len(vals)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))


def summarize_runs(results, attacks, whats=("accuracy", "worst_class_accuracy", "nsd")) -> list[dict]:
    """Mean and population std over seeds, per (method, student) and attack: one row per group."""
    groups: dict[tuple, list] = {}
    for r in results:
        groups.setdefault((r["method"], r["student"]), []).append(r)
    rows = []
    for (method, student), runs in groups.items():
        row = {"method": method, "student": student, "seeds": sorted(r["seed"] for r in runs)}
        for a in attacks:
            for w in whats:
                row[f"{a}/{w}"] = mean_std([metric(r, a, w) for r in runs])
        rows.append(row)
    return rows


def md_table(head, rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def markdown_table(rows, attacks, whats=("accuracy", "worst_class_accuracy")) -> str:
    """A Markdown table of ``summarize_runs`` rows: mean ± std in %, NSD as a ratio.  A row from a
    single seed shows the value alone (no ``± 0.0`` that would look like a measured spread)."""
    label = {"accuracy": "avg", "worst_class_accuracy": "worst", "nsd": "NSD", "mean_class_accuracy": "mean"}
    head = ["method", "student", "seeds"] + [f"{a} {label[w]}" for a in attacks for w in whats]
    body = []
    for row in rows:
        cells = [row["method"], row["student"], ",".join(map(str, row["seeds"]))]
        for a in attacks:
            for w in whats:
                m, s = row[f"{a}/{w}"]
                scale, digits = (1, 3) if w == "nsd" else (100, 1)
                cells.append(f"{scale * m:.{digits}f}" + (f" ± {scale * s:.{digits}f}" if len(row["seeds"]) > 1 else ""))
        body.append(cells)
    return md_table(head, body)


def compare_pair(results, base: str, fair: str, attack: str, what: str = "worst_class_accuracy") -> dict:
    """Fair-* minus base over matched seeds, with the seed-to-seed spread, and a plain-words verdict.

    The difference "exceeds twice the seed-to-seed spread" when, over at least 3 matched seeds, the mean
    difference is larger than twice the larger population std over seeds of the two methods and twice the
    standard error (population std / sqrt(n)) of the paired differences.
    ``results`` must hold one student architecture (``headline`` splits by student)."""
    results = [r for r in results if r["method"] in (base, fair)]
    students = sorted({r["student"] for r in results})
    if len(students) > 1:
        raise ValueError(f"compare_pair got several students {students}; pass the results of one")
    by = {(r["method"], r["seed"]): metric(r, attack, what) for r in results}
    seeds = sorted({s for (m, s) in by if m == base} & {s for (m, s) in by if m == fair})
    if not seeds:
        raise ValueError(f"no seed has both {base} and {fair}")
    diffs = [by[(fair, s)] - by[(base, s)] for s in seeds]
    mean = sum(diffs) / len(diffs)
    spread = max(mean_std([by[(base, s)] for s in seeds])[1], mean_std([by[(fair, s)] for s in seeds])[1])
    std_diff = mean_std(diffs)[1]
    exceeds = len(seeds) >= 3 and abs(mean) > 2 * max(spread, std_diff / math.sqrt(len(seeds)))
    verdict = (f"{fair} vs {base}, {what.replace('_', ' ')} under {attack}: {100 * mean:+.1f} points "
               f"(mean over {len(seeds)} seeds; seed-to-seed std {100 * spread:.1f}, the population std). ")
    verdict += ("The difference exceeds twice the seed-to-seed spread." if exceeds else
                "The difference does not exceed twice the seed-to-seed spread: at this scale it is not "
                "distinguishable from noise." if len(seeds) >= 3 else
                "Fewer than 3 seeds: no claim about significance.")
    return {"base": base, "fair": fair, "attack": attack, "what": what, "seeds": seeds, "diffs": diffs,
            "base_values": [by[(base, s)] for s in seeds], "fair_values": [by[(fair, s)] for s in seeds],
            "mean_diff": mean, "seed_std": spread, "exceeds_spread": exceeds, "verdict": verdict}


def headline(results, pairs, attacks=("pgd20", "aa"), what: str = "worst_class_accuracy") -> list[dict]:
    """``compare_pair`` for every student, pair and attack that the results hold (each dict also names
    its ``student``; with several students the verdict starts with it)."""
    students = list(dict.fromkeys(r["student"] for r in results))
    out = []
    for student in students:
        mine = [r for r in results if r["student"] == student]
        have = {r["method"] for r in mine}
        for base, fair in pairs:
            for a in attacks:
                if base in have and fair in have and all(a in r["evaluation"]["attacks"] for r in mine):
                    c = {**compare_pair(mine, base, fair, a, what), "student": student,
                         "first_student": student == students[0]}
                    if len(students) > 1:
                        c["verdict"] = f"({student}) " + c["verdict"]
                    out.append(c)
    return out


def headline_markdown(comparisons, setup: Profile) -> str:
    """The headline in words: one verdict per comparison, then what the profile can and cannot say."""
    if not comparisons:
        return "No headline pair (a base method with its Fair-* version) was run."
    lines = [f"- {c['verdict']}" for c in comparisons]
    if any(c["exceeds_spread"] for c in comparisons):
        tail = ("Where the difference exceeds the spread, it holds for this profile "
                f"(`{setup.name}`: {setup.n_per_class or 'all'} training images per class, "
                f"{setup.student_epochs or 'official'} student epochs); whether it holds at the paper's scale is "
                "what the `paper` profile tests.")
    elif min(len(c["seeds"]) for c in comparisons) < 3:
        tail = "With fewer than 3 seeds this is a smoke check of the pipeline, not a measurement."
    else:
        tail = ("At this scale the Fair-* effect is not distinguishable from seed-to-seed noise. That is not "
                "evidence against the paper: its claim (up to +12.3 points of worst-class AA robustness with "
                "ResNet-18 students) is made for the full training set, a WRN-34-10 teacher and the official "
                "schedules, which is what the `paper` profile runs.")
    floored = [c for c in comparisons if not any(c.get("base_values", [1])) and not any(c.get("fair_values", [1]))]
    if floored:
        tail += (" " + "; ".join(f"{c['fair']} vs {c['base']} under {c['attack']}" for c in floored)
                 + (": the value is 0 % for every seed of both methods, a floor that no class weighting can "
                    "show an effect on (the students are too weak)."))
    return "\n".join(lines) + "\n\n" + tail


_GLUE_ATTACK = {"pgd20": "pgd", "cw20": "cw"}


def glue_name(*parts: str) -> str:
    """A glue key: 'fair-ard', 'worst', 'pgd20', 'diff' -> 'fair_ard_worst_pgd_diff'."""
    return "_".join(_GLUE_ATTACK.get(p, p) for p in parts).replace("-", "_").replace(" ", "_")


def headline_glue(comparisons) -> dict:
    """Numbers the book cites: per comparison the mean Fair-minus-base difference (points), the seed
    std (points), the number of seeds and whether it exceeds the spread.  Names such as
    ``fair_ard_worst_pgd_diff`` refer to the first student; every student also gets names with its
    architecture appended (``fair_ard_worst_pgd_diff_resnet18``)."""
    out = {}
    for c in comparisons:
        values = {"diff": round(100 * c["mean_diff"], 1), "seed_std": round(100 * c["seed_std"], 1),
                  "n_seeds": len(c["seeds"]), "exceeds": bool(c["exceeds_spread"])}
        for what, value in values.items():
            if c.get("first_student", True):
                out[glue_name(c["fair"], "worst", c["attack"], what)] = value
            if "student" in c:
                out[glue_name(c["fair"], "worst", c["attack"], what, c["student"])] = value
    return out


def class_accuracy(results, attack: str) -> dict:
    """Per (method, student): per-class accuracy mean and std over seeds, plus the seeds."""
    groups: dict[tuple, list] = {}
    for r in results:
        groups.setdefault((r["method"], r["student"]), []).append(r)
    out = {}
    for key, runs in groups.items():
        acc = np.array([[np.nan if v is None else v for v in r["evaluation"]["attacks"][attack]["per_class"]]
                        for r in runs], dtype=float)
        out[key] = {"mean": acc.mean(0), "std": acc.std(0), "seeds": sorted(r["seed"] for r in runs)}
    return out


def per_class_markdown(results, teacher: dict | None, attack: str) -> str:
    """Rows: the teacher, then each (method, student) with per-class accuracy (%, mean over seeds), their mean,
    then worst class and NSD as the main table defines them (``summarize_runs``): the mean over seeds of each
    run's worst-class accuracy and NSD, with each seed's worst class named."""
    names = (teacher or results[0])["evaluation"]["class_names"]
    everyone = ([teacher] if teacher else []) + list(results)
    runs_of = group_by(everyone)
    rows = []
    for key, g in class_accuracy(everyone, attack).items():
        runs = runs_of[key]
        worst = np.mean([metric(r, attack, "worst_class_accuracy") for r in runs])
        worst_names = ", ".join(dict.fromkeys(names[metric(r, attack, "worst_class")] for r in runs))
        nsd = np.mean([metric(r, attack, "nsd") for r in runs])
        rows.append([*key, ",".join(map(str, g["seeds"]))] + [f"{100 * v:.1f}" for v in g["mean"]]
                    + [f"{100 * g['mean'].mean():.1f}", f"{100 * worst:.1f} ({worst_names})", f"{nsd:.3f}"])
    return md_table(["method", "student", "seeds"] + list(names) + ["mean", "worst", "NSD"], rows)


def _rank(a) -> np.ndarray:
    """Ranks 1..n with ties averaged (what Spearman's rho needs)."""
    a = np.asarray(a, dtype=float)
    order = a.argsort(kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(1, len(a) + 1)
    for v in np.unique(a):
        tie = a == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def pearson(a, b) -> float:
    """Pearson correlation; nan when either side is constant."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b) -> float:
    """Spearman's rank correlation (Pearson on tie-averaged ranks); nan when either side is constant."""
    return pearson(_rank(a), _rank(b))


def na_format(v, fmt="{:.2f}") -> str:
    return "n/a" if v is None or v != v else fmt.format(v)


def provenance_markdown(study: Study) -> str:
    """One row per run and teacher: key (config hash), commit, device, seconds, and whether it came from the cache."""
    body = []
    for r in list(study.teachers.values()) + list(study.results):
        pv = r["provenance"]
        body.append([r["method"], r["student"], r["seed"], f"`{r.get('key', '')}`", pv["git_commit"][:12]
                     + ("-dirty" if pv["git_commit"].endswith("-dirty") else ""), pv["versions"]["torch"],
                     pv["device_name"] or pv["device"], f"{r.get('train_seconds', 0):.0f}",
                     f"{sum(r['evaluation']['seconds'].values()):.0f}", "yes" if r["from_cache"] else "no"])
    return md_table(["method", "arch", "seed", "key", "commit", "torch", "device", "train s", "eval s", "from cache"], body)


def pick(results, method: str, seed: int | None = None, student: str | None = None) -> dict:
    """The first result of ``method`` (and ``seed``/``student`` if given); the error lists what there is."""
    for r in results:
        if r["method"] == method and (seed is None or r["seed"] == seed) and (student is None or r["student"] == student):
            return r
    have = sorted({(r["method"], r["student"], r["seed"]) for r in results})
    raise ValueError(f"no result for method={method!r} seed={seed!r} student={student!r}; have: {have}")


def short_dataset(dataset: str) -> str:
    """The dataset for a title; the in-house copy is named as what it is."""
    label = dataset_label(dataset_note(dataset))
    return dataset if label == dataset else f"{dataset}, {label}"


def commits(results=()) -> str:
    """Distinct git commits (short, with -dirty) of the runs; the checkout's when there are none."""
    full = sorted({r["provenance"]["git_commit"] for r in results if "provenance" in r}) or [git_commit()]
    return ", ".join(c[:7] + ("-dirty" if c.endswith("-dirty") else "") for c in full)


def caption(p: Profile, results=(), seeds=None) -> str:
    """One line for titles: profile, dataset, seeds, commit, torch version and device of the runs."""
    seeds = sorted({r["seed"] for r in results}) if seeds is None and results else (seeds or p.seeds)
    prov = next((r["provenance"] for r in results if "provenance" in r), None)
    extra = f" · torch {prov['versions']['torch']} · {prov['device']}" if prov else ""
    return (f"profile {p.name} · {short_dataset(p.dataset)} · seeds {','.join(map(str, seeds))} · "
            f"commit {commits(results)}{extra}")


def label_key(text: str) -> str:
    """A glue-safe name: lower case, non-alphanumerics to '_'."""
    return re.sub(r"[^0-9a-z]+", "_", str(text).lower()).strip("_")


def headline_attack(attacks) -> str:
    """The strongest attack of a list, for figures: aa > aa10 > cw20 > pgd20 > fgsm > clean."""
    for a in ("aa", "aa10", "cw20", "pgd20", "fgsm", "clean"):
        if a in attacks:
            return a
    return list(attacks)[-1]


def group_by(rows, keys=("method", "student")) -> dict[tuple, list]:
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups
