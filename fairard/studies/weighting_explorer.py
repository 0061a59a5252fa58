"""weighting_explorer.ipynb: Fair-ARD's class weights recomputed from a recorded run's per-epoch
statistics under any beta, clamp and difficulty measure: a table, a figure, an ipywidgets explorer and
a kernel-free HTML/JS one for the static book."""
from __future__ import annotations

import hashlib
import html
import json

import torch

from ..fairness import DIFFICULTY_MEASURES, ClassStats, class_weights
from ..checks import check_betas, check_clamp, check_flag, check_int, check_subset
from ..profiles import OFFICIAL_CLAMP, Checked, check_fair_method, notebook_setup
from ..runs import run_all, run_history, student_config


MEASURE_STATS = {
    "kappa": ("kappa", "mean kappa (PGD steps survived)"),
    "robust_acc": ("robust_correct", "training robust accuracy"),
    "adv_loss": ("adv_loss", "mean per-sample training loss"),
    "clean_acc": ("clean_correct", "training clean accuracy"),
}


def validate(profile: str = "quick", method: str = "fair-ard", seed: int = 0, attacks=None,
                      min_epochs: int = 4, beta: float = 2.0, clamp=OFFICIAL_CLAMP, clamp_on: bool = True,
                      measure: str = "kappa", epoch: int = -1, grid_betas=(0.0, 1.0, 2.0, 3.0, 4.0),
                      grid_clamps=(OFFICIAL_CLAMP, None), grid_measures=DIFFICULTY_MEASURES, device: str = "auto",
                      results_dir=None, overrides=None, progress: bool = True) -> Checked:
    """Every parameter of weighting_explorer.ipynb in one call; ``chosen_clamp`` = clamp if clamp_on else None."""
    method = check_fair_method(method)
    if isinstance(grid_clamps, str):
        try:
            grid_clamps = json.loads(grid_clamps.replace("None", "null"))
        except json.JSONDecodeError:
            raise ValueError(f"grid_clamps: cannot read {grid_clamps!r}; write e.g. [[0.83, 2.5], null]") from None
    if not isinstance(grid_clamps, (list, tuple)) or not grid_clamps:
        raise ValueError(f"grid_clamps must be a non-empty list of [low, high] pairs or None, got {grid_clamps!r}")
    values = dict(method=method, seed=check_int(seed, "seed", 0), beta=check_betas([beta], "beta")[0],
                  clamp=check_clamp(clamp), clamp_on=check_flag(clamp_on, "clamp_on"),
                  measure=check_subset("measure", [measure], DIFFICULTY_MEASURES)[0], epoch=check_int(epoch, "epoch"),
                  grid_betas=check_betas(grid_betas, "grid_betas"),
                  grid_clamps=[check_clamp(g, "grid_clamps item") for g in grid_clamps],
                  grid_measures=check_subset("grid_measures", grid_measures, DIFFICULTY_MEASURES))
    if values["clamp"] is None:
        raise ValueError("clamp must be [low, high]; switch it off with clamp_on = False")
    values["chosen_clamp"] = values["clamp"] if values["clamp_on"] else None
    setup = notebook_setup(profile, [method], attacks, seeds=[values["seed"]], device=device, min_epochs=min_epochs,
                   progress=progress, results_dir=results_dir, overrides=overrides)
    n = setup.student_epochs
    if n is not None and not -n <= values["epoch"] < n:
        raise ValueError(f"epoch must be in [0, {n - 1}] or -1 (the last) for a {n}-epoch run, got {values['epoch']}")
    return Checked(setup, values)


def recorded_run(c: Checked) -> tuple[dict, list[dict]]:
    """Train/load the Fair-* run whose log the explorer replays; returns (result, per-epoch log)."""
    p = c.setup
    cfg = student_config(p, c.method, seed=c.seed)
    result = run_all([cfg], profile=p, attacks=p.attacks, progress=c.progress)[0]
    return result, run_history(result)


def available_measures(history: list[dict], measures=DIFFICULTY_MEASURES) -> list[str]:
    """The measures whose statistic was recorded in every epoch of the log."""
    return [m for m in measures if history and all(MEASURE_STATS[m][0] in h["class_stats"] for h in history)]


def easiness(class_stats: dict, measure: str) -> torch.Tensor:
    """Per-class easiness of one epoch's logged statistics, exactly as the trainer computes it
    (fairness.ClassStats.easiness: mean kappa / accuracy, 1 / mean loss)."""
    stat = MEASURE_STATS[check_subset("measure", [measure], DIFFICULTY_MEASURES)[0]][0]
    if stat not in class_stats:
        raise ValueError(f"the log has no {stat!r} statistic (measure {measure!r}); recorded: "
                         f"{sorted(k for k in class_stats if k != 'count')}")
    means = torch.tensor(class_stats[stat], dtype=torch.float32)
    stats = ClassStats(len(means))
    stats.update(torch.arange(len(means)), **{stat: means})  # one "sample" per class: the class mean
    return stats.easiness(measure)


def _epoch_index(history, epoch: int) -> int:
    if not history:
        raise ValueError("the training log is empty")
    if not -len(history) <= epoch < len(history):
        raise ValueError(f"epoch must be in [0, {len(history) - 1}] or -1 (the last), got {epoch}")
    return epoch % len(history)


def weights_at(history, epoch: int, beta: float, clamp, measure: str) -> torch.Tensor:
    """The class weights that epoch ``epoch``'s statistics give (they weight epoch ``epoch`` + 1)."""
    h = history[_epoch_index(history, epoch)]
    return class_weights(easiness(h["class_stats"], measure), beta=float(beta), clamp=check_clamp(clamp))


def history_consistency(result: dict, history) -> float:
    """Max ``|recomputed − trainer's|`` over the run's epochs with its own beta, clamp and measure (≈ 0)."""
    cfg = result["config"]
    diffs = [float((weights_at(history, e, cfg["beta"], cfg["clamp"], cfg["difficulty"]).double()
                    - torch.tensor(h["next_class_weights"], dtype=torch.float64)).abs().max())
             for e, h in enumerate(history) if h.get("next_class_weights") is not None]
    return max(diffs) if diffs else float("nan")


def _clamp_label(c) -> str:
    return "off" if c is None else f"[{c[0]:.3g}, {c[1]:.3g}]"


def weights_grid(history, betas, clamps, measures=DIFFICULTY_MEASURES, class_names=None, digits: int = 6) -> dict:
    """Precomputed class weights for a kernel-free explorer (JSON-able).

    ``weights[m][c][b][e]`` = the weights (one per class) that epoch ``e``'s statistics give under
    measure ``measures[m]``, clamp ``clamps[c]`` (None = off) and beta ``betas[b]``, rounded to
    ``digits`` decimals; ``stats[m][e]`` = that epoch's per-class statistic behind measure ``m``.
    Measures the log does not record are listed in ``unavailable`` and left out.
    """
    measures = check_subset("measures", measures, DIFFICULTY_MEASURES)
    betas, clamps = check_betas(betas), [check_clamp(c) for c in clamps]
    have = available_measures(history, measures)
    names = list(class_names) if class_names else [str(k) for k in range(len(history[0]["class_stats"]["count"]))]

    def rnd(t):
        return [round(float(v), digits) for v in t]

    return {
        "classes": names, "epochs": [h.get("epoch", e) for e, h in enumerate(history)],
        "betas": betas, "clamps": [None if c is None else list(c) for c in clamps],
        "clamp_labels": [_clamp_label(c) for c in clamps], "measures": have,
        "unavailable": [m for m in measures if m not in have],
        "stat_labels": [MEASURE_STATS[m][1] for m in have],
        "stats": [[rnd(h["class_stats"][MEASURE_STATS[m][0]]) for h in history] for m in have],
        "weights": [[[[rnd(weights_at(history, e, b, c, m)) for e in range(len(history))] for b in betas]
                     for c in clamps] for m in have],
        "trainer_weights": [None if h.get("next_class_weights") is None else rnd(h["next_class_weights"])
                            for h in history],
    }


def weights_table(history, epoch: int, beta: float, clamp, measure: str, class_names) -> str:
    """Per class: every logged statistic of the epoch, the chosen measure's easiness, and the weights."""
    e = _epoch_index(history, epoch)
    stats = history[e]["class_stats"]
    have = available_measures(history)
    w = weights_at(history, e, beta, clamp, measure)
    ease = easiness(stats, measure)
    trainer = history[e].get("next_class_weights")
    head = (["class"] + [MEASURE_STATS[m][0] for m in have] + [f"easiness ({measure})", "weight"]
            + (["trainer's weight (run config)"] if trainer else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, name in enumerate(class_names):
        cells = [name] + [f"{stats[MEASURE_STATS[m][0]][k]:.3f}" for m in have] + [f"{ease[k]:.3f}", f"{w[k]:.3f}"]
        cells += [f"{trainer[k]:.3f}"] if trainer else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\nStatistics of epoch {e} → weights for epoch {e + 1}; beta {beta:g}, "
                               f"clamp {_clamp_label(check_clamp(clamp))}; sum of weights {float(w.sum()):.3f}.")


def weights_figure(history, epoch: int, beta: float, clamp, measure: str, class_names, title: str = ""):
    """Bars of the measure's per-class statistic and of the class weights it gives (clamp bounds dashed)."""
    import matplotlib.pyplot as plt

    e = _epoch_index(history, epoch)
    clamp = check_clamp(clamp)
    stat, label = MEASURE_STATS[measure]
    w = weights_at(history, e, beta, clamp, measure)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    xs = range(len(class_names))
    ax1.bar(xs, history[e]["class_stats"][stat], color="tab:gray")
    ax1.set(title=f"{label}, epoch {e}", ylabel=stat)
    colors = ["tab:red" if v > 1 else "tab:blue" for v in w.tolist()]
    ax2.bar(xs, w.tolist(), color=colors)
    ax2.axhline(1.0, color="k", lw=0.8)
    for bound in clamp or ():
        ax2.axhline(bound, color="k", lw=0.8, ls="--")
    ax2.set(title=f"class weights for epoch {e + 1} (β={beta:g}, clamp {_clamp_label(clamp)})", ylabel="weight")
    for ax in (ax1, ax2):
        ax.set_xticks(list(xs), class_names, rotation=45, ha="right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def explorer_widget(history, class_names, beta: float = 2.0, clamp=OFFICIAL_CLAMP, clamp_on: bool = True,
                    measure: str = "kappa", epoch: int = -1, title: str = ""):
    """ipywidgets explorer: β, clamp low/high, clamp on/off, difficulty measure, epoch -> live bars.

    Returns a VBox; ``box.state`` holds the current settings and weights (for tests and reuse).
    Needs a live kernel; the static book uses ``static_explorer_html`` instead.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    lo, hi = check_clamp(clamp) or OFFICIAL_CLAMP
    have = available_measures(history)
    controls = {
        "beta": W.FloatSlider(value=beta, min=0.0, max=6.0, step=0.1, description="β"),
        "low": W.FloatSlider(value=lo, min=0.05, max=1.0, step=0.01, description="clamp low"),
        "high": W.FloatSlider(value=hi, min=1.0, max=6.0, step=0.05, description="clamp high"),
        "clamp_on": W.Checkbox(value=clamp_on, description="clamp on"),
        "measure": W.Dropdown(options=have, value=measure if measure in have else have[0], description="measure"),
        "epoch": W.IntSlider(value=_epoch_index(history, epoch), min=0, max=len(history) - 1, description="epoch"),
    }
    out = W.Output()
    box = W.VBox([W.HBox([controls["beta"], controls["measure"], controls["epoch"]]),
                  W.HBox([controls["clamp_on"], controls["low"], controls["high"]]), out])

    def update(_=None):
        v = {k: c.value for k, c in controls.items()}
        cl = (min(v["low"], v["high"]), max(v["low"], v["high"])) if v["clamp_on"] else None
        box.state = {**v, "clamp": cl,
                     "weights": weights_at(history, v["epoch"], v["beta"], cl, v["measure"]).tolist()}
        with out:
            out.clear_output(wait=True)
            fig = weights_figure(history, v["epoch"], v["beta"], cl, v["measure"], class_names, title)
            display(fig)
            plt.close(fig)

    for c in controls.values():
        c.observe(update, names="value")
    box.controls = controls
    update()
    return box


_EXPLORER_JS = r"""
(function () {
  var root = document.getElementById("__ID__");
  var grid = JSON.parse(root.querySelector('script[data-role="grid"]').textContent);
  function el(role) { return root.querySelector('[data-role="' + role + '"]'); }
  var svg = el("chart"), NS = svg.namespaceURI, W = 640, H = 300, pad = 34, C = grid.classes.length;
  function add(tag, attrs, text) {
    var n = document.createElementNS(NS, tag);
    for (var k in attrs) { n.setAttribute(k, attrs[k]); }
    if (text !== undefined) { n.textContent = text; }
    svg.appendChild(n); return n;
  }
  function panel(values, y0, h, vmax, color, label, lines) {
    var bw = (W - 2 * pad) / C;
    add("text", {x: pad, y: y0 - 6, "font-size": 11}, label);
    add("line", {x1: pad, x2: W - pad, y1: y0 + h, y2: y0 + h, stroke: "#000"});
    var labelled = [];
    (lines || []).forEach(function (v) {
      var y = y0 + h - h * v.value / vmax;
      add("line", {x1: pad, x2: W - pad, y1: y, y2: y, stroke: "#444", "stroke-dasharray": v.dash || ""});
      if (labelled.every(function (u) { return Math.abs(u - y) > 9; })) {
        add("text", {x: W - pad + 2, y: y + 3, "font-size": 9}, v.value.toFixed(2));
        labelled.push(y);
      }
    });
    values.forEach(function (v, k) {
      var bh = h * Math.max(0, v) / vmax, fill = typeof color === "function" ? color(v) : color;
      add("rect", {x: pad + k * bw + 2, y: y0 + h - bh, width: bw - 4, height: bh, fill: fill});
      add("text", {x: pad + k * bw + bw / 2, y: y0 + h - bh - 2, "font-size": 9, "text-anchor": "middle"},
          v.toFixed(2));
    });
  }
  function draw() {
    var m = +el("measure").value, c = +el("clamp").value, b = +el("beta").value, e = +el("epoch").value;
    el("beta-value").textContent = String(grid.betas[b]);
    el("epoch-value").textContent = grid.epochs[e] + " → weights for epoch " + (grid.epochs[e] + 1);
    var w = grid.weights[m][c][b][e], s = grid.stats[m][e], cl = grid.clamps[c];
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var wmax = Math.max.apply(null, w.concat([1.0], cl ? [cl[1]] : [])) * 1.15;
    var smax = Math.max.apply(null, s.concat([1e-9])) * 1.15;
    panel(s, 22, 90, smax, "#888", grid.stat_labels[m] + " (epoch " + grid.epochs[e] + ")");
    var lines = [{value: 1.0}].concat(cl ? [{value: cl[0], dash: "4 3"}, {value: cl[1], dash: "4 3"}] : []);
    panel(w, 150, 110, wmax, function (v) { return v > 1 ? "#d62728" : "#1f77b4"; },
          "class weights (sum " + w.reduce(function (a, v) { return a + v; }, 0).toFixed(2) + ")", lines);
    grid.classes.forEach(function (name, k) {
      add("text", {x: pad + (k + 0.5) * (W - 2 * pad) / C, y: 292, "font-size": 9, "text-anchor": "middle"},
          name.slice(0, 8));
    });
  }
  ["measure", "clamp", "beta", "epoch"].forEach(function (r) { el(r).addEventListener("input", draw); });
  draw();
})();
"""


def static_explorer_html(grid: dict, title: str = "") -> str:
    """A self-contained HTML view of ``weights_grid``: selects (measure, clamp) and sliders (β, epoch)
    redraw an inline SVG bar chart with plain inline JavaScript; no external script, no URL."""
    if not grid["measures"]:
        raise ValueError(f"the grid holds no measure (unavailable: {grid['unavailable']})")
    payload = json.dumps(grid, separators=(",", ":")).replace("</", "<\\/")
    uid = "fairard-explorer-" + hashlib.sha1(payload.encode()).hexdigest()[:10]
    default_beta = min(range(len(grid["betas"])), key=lambda i: abs(grid["betas"][i] - 2.0))
    default_clamp = next((i for i, c in enumerate(grid["clamps"]) if c and abs(c[0] - 5 / 6) < 1e-6), 0)

    def options(labels, selected=0):
        return "".join(f'<option value="{i}"{" selected" if i == selected else ""}>{html.escape(str(v))}</option>'
                       for i, v in enumerate(labels))

    note = (f"<div style='color:#666'>not recorded by this run: {html.escape(', '.join(grid['unavailable']))}</div>"
            if grid["unavailable"] else "")
    return f"""<div id="{uid}" class="fairard-explorer" style="font-family:sans-serif;font-size:13px;max-width:680px">
<div style="font-weight:bold">{html.escape(title)}</div>
<div style="display:flex;flex-wrap:wrap;gap:12px;margin:6px 0">
<label>measure <select data-role="measure">{options(grid["measures"])}</select></label>
<label>clamp <select data-role="clamp">{options(grid["clamp_labels"], default_clamp)}</select></label>
<label>β <input type="range" data-role="beta" min="0" max="{len(grid['betas']) - 1}" step="1" value="{default_beta}">
<span data-role="beta-value"></span></label>
<label>statistics of epoch <input type="range" data-role="epoch" min="0" max="{len(grid['epochs']) - 1}" step="1"
 value="{len(grid['epochs']) - 1}"> <span data-role="epoch-value"></span></label>
</div>{note}
<svg data-role="chart" width="680" height="300" viewBox="0 0 680 300" role="img"></svg>
<script type="application/json" data-role="grid">{payload}</script>
<script>{_EXPLORER_JS.replace("__ID__", uid)}</script>
</div>"""
