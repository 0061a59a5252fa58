"""Per-class robustness evaluation: clean, FGSM, PGD-20, CW-inf, AutoAttack (standard and 10-step).

The model is put in eval mode and run in fp32 (autocast off) for every attack; its previous mode is
restored afterwards.  Each attack yields per-sample predictions, from which ``fairard.metrics``
derives per-class accuracy, worst class, NSD and the confusion matrix under attack.

Settings follow Fair-ARD's ``eval.py`` (papers.md 1.7): eps 8/255; FGSM one step of 8/255 from
x + 0.001*N(0, I); PGD-20 with step 2/255 and a uniform start; CW-inf = the same PGD-20 on the
margin loss with confidence 50.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import attacks as A
from .checks import InputError, check_finite_model, check_subset
from .autoattack import autoattack
from .metrics import summarize

# Part of every cached evaluation's key (fairard.store). Raise it whenever a change to the attacks, AutoAttack's
# adapter or this module changes an evaluation's numbers, so that cached evaluations are recomputed, not reused.
EVALUATION_VERSION = 1


@dataclass(frozen=True)
class EvalAttack:
    """One evaluation attack: a description for tables and a function returning predicted labels."""
    description: str
    run: Callable  # (model, x, y, eps, generator) -> adversarial x, or None for AutoAttack-style
    batched: bool = True  # False: the function takes the whole set and returns predictions itself


def _pgd20(loss):
    return lambda m, x, y, eps, g: A.pgd(m, x, y, eps=eps, step_size=2 / 255, steps=20, loss=loss,
                                         random_start="uniform", generator=g)


EVAL_ATTACKS: dict[str, EvalAttack] = {
    "clean": EvalAttack("no attack", lambda m, x, y, eps, g: x),
    "fgsm": EvalAttack("FGSM, one step of eps from x + 0.001 N(0,I)",
                       lambda m, x, y, eps, g: A.fgsm(m, x, y, eps=eps, generator=g)),
    "pgd20": EvalAttack("PGD-20 (CE), step 2/255, uniform start", _pgd20("ce")),
    "cw20": EvalAttack("CW-inf: PGD-20 on the margin loss (confidence 50), step 2/255", _pgd20("cw")),
    "aa": EvalAttack("AutoAttack standard (fra31: APGD-CE, APGD-T, FAB-T, Square; 100 iterations)",
                     lambda m, x, y, eps, g, verbose=True: autoattack(m, x, y, eps=eps, verbose=verbose),
                     batched=False),
    "aa10": EvalAttack("AutoAttack with 10-step APGD/APGD-T/FAB (the torchattacks>=3.3 budget)",
                       lambda m, x, y, eps, g, verbose=True: autoattack(m, x, y, eps=eps, n_iter=10,
                                                                        verbose=verbose),
                       batched=False),
}
DEFAULT_ATTACKS = ("clean", "fgsm", "pgd20", "cw20", "aa")


def check_attacks(names, what: str = "attacks") -> list[str]:
    """Attack names (a list or 'clean,pgd20'): at least one, each known and listed once."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    return check_subset(what, list(names), list(EVAL_ATTACKS), "attack", unique=True)


@contextlib.contextmanager
def eval_mode(model):
    """Eval mode and fp32 for the duration; the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as stack:
            for device_type in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
            yield model
    finally:
        model.train(was_training)


def predict_under_attack(model, x, y, attack: str, *, eps=8 / 255, batch_size=256, seed=0, progress=None):
    """Predicted labels (N,) of ``model`` on ``attack(x)``, computed batch by batch."""
    spec = EVAL_ATTACKS[check_attacks([attack])[0]]
    with eval_mode(model):
        if not spec.batched:  # AutoAttack: its own log is the progress display (quiet with a disabled bar)
            verbose = progress is None or not getattr(progress, "disable", False)
            return spec.run(model, x, y, eps, None, verbose=verbose).to(y.device)
        generator = torch.Generator(device=x.device).manual_seed(seed)
        preds, finite = [], torch.ones((), dtype=torch.bool, device=x.device)
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            x_adv = spec.run(model, xb, yb, eps, generator)
            with torch.no_grad():
                logits = model(x_adv)
            finite &= torch.isfinite(logits).all()  # checked once per attack: no host sync per batch
            preds.append(logits.argmax(1))
            if progress is not None:
                progress.update(len(xb))
        if not bool(finite):
            raise InputError(f"the model's outputs under {attack} are nan/inf, so its accuracy would be meaningless "
                             "(argmax of nan is class 0); check the checkpoint and the model's normalisation")
        return torch.cat(preds)


def sanity_report(results: dict) -> list[str]:
    """Warnings against gradient masking: per class, AA <= PGD-20 <= clean must hold.

    Reported, never silently fixed (PGD's random start can rescue a misclassified point, so a
    one-sample excess is possible but a systematic one is a red flag).
    """
    chain = [a for a in ("clean", "pgd20", "aa") if a in results]
    warnings = []
    for weaker, stronger in zip(chain, chain[1:]):
        for k, (w, s) in enumerate(zip(results[weaker]["per_class"], results[stronger]["per_class"])):
            if w is not None and s is not None and s > w + 1e-12:
                warnings.append(f"class {k}: {stronger} accuracy {s:.4f} > {weaker} accuracy {w:.4f}")
    return warnings


def large_eps_accuracy(model, x, y, *, eps=1.0, steps=20, seed=0) -> float:
    """PGD accuracy at eps = 1 (the whole image box): ~0 unless gradients are masked."""
    with eval_mode(model):
        g = torch.Generator(device=x.device).manual_seed(seed)
        x_adv = A.pgd(model, x, y, eps=eps, step_size=eps / 10, steps=steps, generator=g)
        with torch.no_grad():
            return float((model(x_adv).argmax(1) == y).float().mean())


def evaluate(model, x: torch.Tensor, y: torch.Tensor, *, attacks=DEFAULT_ATTACKS, class_names: list[str],
             eps: float = 8 / 255, batch_size: int = 256, seed: int = 0, progress: bool = True,
             check_large_eps: int = 200) -> dict:
    """Evaluate ``model`` on ``x`` (float [0,1], NCHW) against every attack in ``attacks``.

    Returns a JSON-serialisable dict: ``{"attacks": {name: summary}, "sanity": {...}, ...}`` where each
    summary holds per-class accuracy, overall accuracy, worst class (index and name), NSD and the
    confusion matrix under that attack.  ``check_large_eps`` samples are also attacked at eps = 1.
    """
    from tqdm.auto import tqdm

    names = check_attacks(attacks)
    if len(x) == 0:
        raise InputError("no images to evaluate: x is empty")
    check_finite_model(model)
    with eval_mode(model), torch.no_grad():  # one batch first: nan outputs are refused before any attack runs
        if not bool(torch.isfinite(model(x[:batch_size])).all()):
            raise InputError("the model's outputs are nan/inf on clean images, so its accuracy would be meaningless "
                             "(argmax of nan is class 0); check the checkpoint and the model's normalisation")
    results, seconds = {}, {}
    for name in names:
        bar = tqdm(total=len(x), desc=f"{name:>6}", unit="img", disable=not progress, leave=False)
        t0 = time.perf_counter()
        pred = predict_under_attack(model, x, y, name, eps=eps, batch_size=batch_size, seed=seed, progress=bar)
        seconds[name] = time.perf_counter() - t0
        bar.close()
        results[name] = summarize(y, pred, class_names)
        results[name]["description"] = EVAL_ATTACKS[name].description
    sanity = {"warnings": sanity_report(results)}
    if check_large_eps:
        n = min(check_large_eps, len(x))
        sanity["eps1_pgd_accuracy"] = large_eps_accuracy(model, x[:n], y[:n], seed=seed)
        if sanity["eps1_pgd_accuracy"] > 0.05:
            sanity["warnings"].append(f"PGD at eps=1 leaves {sanity['eps1_pgd_accuracy']:.1%} accuracy: "
                                      "gradients may be masked")
    return {"eps": eps, "n": len(x), "class_names": list(class_names), "seed": seed,
            "attacks": results, "seconds": seconds, "sanity": sanity}


def format_table(result: dict, attacks=None) -> str:
    """Per-class accuracy table (rows: classes, then mean / worst / NSD; columns: attacks), in %."""
    attacks = list(attacks or result["attacks"])
    names = result["class_names"]
    width = max(12, max(len(n) for n in names) + 1)
    head = f"{'class':<{width}}" + "".join(f"{a:>8}" for a in attacks)
    rows = [head, "-" * len(head)]
    for k, cname in enumerate(names):
        cells = [result["attacks"][a]["per_class"][k] for a in attacks]
        rows.append(f"{cname:<{width}}" + "".join("     n/a" if c is None else f"{100 * c:8.2f}" for c in cells))
    rows.append("-" * len(head))
    for label, key, scale in (("average", "accuracy", 100), ("worst", "worst_class_accuracy", 100),
                              ("NSD", "nsd", 1)):
        rows.append(f"{label:<{width}}" + "".join(f"{scale * result['attacks'][a][key]:8.{2 if scale == 100 else 3}f}"
                                                  for a in attacks))
    rows.append(f"{'worst class':<{width}}" + "".join(f"{result['attacks'][a]['worst_class_name'][:7]:>8}"
                                                      for a in attacks))
    return "\n".join(rows)
