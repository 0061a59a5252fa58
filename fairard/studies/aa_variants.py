"""aa_variants.ipynb: AutoAttack standard (fra31, 100 iterations) vs its 10-step variant, per class."""
from __future__ import annotations

from .. import data as D
from ..evaluate import EVAL_ATTACKS
from ..profiles import Checked, notebook_setup
from ..executors import compute
from ..runs import Run, student_config
from ..tables import caption, group_by, label_key, metric
from . import arm_runs, labelled_results


AA_PAIR = ("aa", "aa10")


def validate(profile: str = "quick", methods=("ard", "fair-ard"), students=None,
                         attacks=("clean", "aa", "aa10"), seeds=None, device: str = "auto",
                         results_dir=None, overrides=None, progress: bool = True) -> Checked:
    """Every parameter of aa_variants.ipynb in one call; both AutoAttack variants must be among the attacks."""
    setup = notebook_setup(profile, methods, attacks, seeds=seeds, students=students, device=device,
                   progress=progress, results_dir=results_dir, overrides=overrides)
    missing = [a for a in AA_PAIR if a not in setup.attacks]
    if missing:
        raise ValueError(f"attacks must include both {list(AA_PAIR)} to compare them, missing {missing}; "
                         f"valid attacks: {', '.join(EVAL_ATTACKS)}")
    return Checked(setup, dict(methods=list(setup.methods)))


def arms(c: Checked) -> list[dict]:
    p = c.setup
    return [{"label": m, "cfg": student_config(p, m, student=s, seed=seed)}
            for s in p.students for m in c.methods for seed in p.seeds]


def plan(c: Checked) -> list[Run]:
    """Each method per student and seed, evaluated with both AutoAttack variants (and its teacher)."""
    return arm_runs(c.setup, arms(c), c.setup.attacks)


def collect(c: Checked) -> dict:
    p = c.setup
    results, skipped = labelled_results(p, arms(c), p.attacks, "aa_variants")
    return {"profile": p, "results": results, "skipped": skipped, "attacks": list(p.attacks)}


def study(c: Checked, **executor) -> dict:
    """``plan``, compute what the store lacks, then ``collect``; the keywords choose who computes the
    pending runs (``fairard.executors.execute_runs``: executor, jobs, gpus, jobs_per_gpu, slurm)."""
    compute(plan(c), progress=c.progress, **executor)
    return collect(c)


def aa_rows(study: dict) -> list[dict]:
    """Per (method, student): per-class AA, AA-10 and AA-10 − AA (means over seeds), worst class, time."""
    names = D.CLASS_NAMES[study["profile"].dataset]
    rows = []
    for (method, student), runs in group_by(study["results"]).items():
        per = {a: [sum(r["evaluation"]["attacks"][a]["per_class"][k] or 0.0 for r in runs) / len(runs)
                   for k in range(len(names))] for a in AA_PAIR}
        row = {"method": method, "student": student, "seeds": sorted(r["seed"] for r in runs),
               "n": runs[0]["evaluation"]["attacks"]["aa"]["n"], "per_class": per,
               "diff": [b - a for a, b in zip(per["aa"], per["aa10"])]}
        for a in AA_PAIR:
            row[f"{a}_avg"] = sum(metric(r, a) for r in runs) / len(runs)
            row[f"{a}_worst"] = sum(metric(r, a, "worst_class_accuracy") for r in runs) / len(runs)
            row[f"{a}_seconds"] = sum(r["evaluation"]["seconds"].get(a, float("nan")) for r in runs) / len(runs)
        rows.append(row)
    return rows


def aa_table(study: dict) -> str:
    """Classes as rows; per run group: AA, AA-10 and their difference in points; then average, worst, time."""
    names = D.CLASS_NAMES[study["profile"].dataset]
    rows = aa_rows(study)
    head = ["class"] + [f"{r['method']}/{r['student']} {c}" for r in rows for c in ("AA", "AA-10", "Δ")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, name in enumerate(names):
        cells = [name]
        for r in rows:
            a, b = r["per_class"]["aa"][k], r["per_class"]["aa10"][k]
            cells += [f"{100 * a:.1f}", f"{100 * b:.1f}", f"{100 * (b - a):+.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for label, key, fmt in (("**average**", "avg", "{:.1f}"), ("**worst class**", "worst", "{:.1f}")):
        cells = [label]
        for r in rows:
            a, b = 100 * r[f"aa_{key}"], 100 * r[f"aa10_{key}"]
            cells += [fmt.format(a), fmt.format(b), f"{b - a:+.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**seconds**"]
    for r in rows:
        cells += [f"{r['aa_seconds']:.1f}", f"{r['aa10_seconds']:.1f}", ""]
    lines.append("| " + " | ".join(cells) + " |")
    n = rows[0]["n"] if rows else 0
    return "\n".join(lines) + (f"\n\nAccuracy in % on {n} class-balanced test images per run (both variants on "
                               f"the same images); Δ = AA-10 − AA in points (> 0: the 10-step variant overstates).")


def aa_figure(study: dict):
    """Per run group: per-class AA vs AA-10 bars and their difference."""
    import matplotlib.pyplot as plt

    names = D.CLASS_NAMES[study["profile"].dataset]
    rows = aa_rows(study)
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 2.8 * len(rows)), squeeze=False)
    xs = range(len(names))
    for ax, r in zip(axes[:, 0], rows):
        ax.bar([x - 0.2 for x in xs], [100 * v for v in r["per_class"]["aa"]], 0.4, label="AA standard (100 it.)")
        ax.bar([x + 0.2 for x in xs], [100 * v for v in r["per_class"]["aa10"]], 0.4, label="AA, 10-step")
        ax.plot(xs, [100 * d for d in r["diff"]], "k.-", label="AA-10 − AA (points)")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
        ax.set(ylabel="accuracy (%)", title=f"{r['method']} / {r['student']}, seeds {','.join(map(str, r['seeds']))}: "
                                            f"worst class {100 * r['aa_worst']:.1f} vs {100 * r['aa10_worst']:.1f}")
        ax.legend(fontsize=7)
    fig.suptitle(f"AutoAttack standard vs 10-step, per class\n{caption(study['profile'], study['results'])}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def aa_glue(study: dict) -> dict[str, float]:
    out = {}
    for r in aa_rows(study):
        stem = f"aa_{label_key(r['method'])}_{label_key(r['student'])}"
        for a in AA_PAIR:
            out[f"{stem}_{a}_worst"] = round(100 * r[f"{a}_worst"], 2)
            out[f"{stem}_{a}_avg"] = round(100 * r[f"{a}_avg"], 2)
        out[f"{stem}_max_class_gap"] = round(100 * max(abs(d) for d in r["diff"]), 2)
    return out
