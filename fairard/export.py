"""Export a trained model as a RobustBench-style pair: a plain state-dict ``.pt`` and a JSON model card.

    python -m fairard export --arch resnet18 --checkpoint runs/<run>/final.pt --out exports/fair-ard-r18

writes ``exports/fair-ard-r18.pt`` (the bare ``state_dict``: loads with ``torch.load(weights_only=True)`` and
``model.load_state_dict``, or ``fairard.models.load_checkpoint``) and ``exports/fair-ard-r18.json`` with the fields of
RobustBench's ``model_info`` files (architecture, dataset, threat model, eps, clean and AutoAttack accuracy) as numbers
(percentages), plus this project's per-class results under every attack that was run and the provenance.
RobustBench writes its accuracies as strings ("84.92"); here they are numbers, so a reader need not parse them.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import data as D
from .utils import provenance, resolve_device, save_torch, write_json

__all__ = ["model_card", "export_model", "cmd_export"]

THREAT_MODEL = "Linf"


def _percent(result: dict, attack: str) -> float | None:
    summary = result["attacks"].get(attack)
    return None if summary is None else round(100 * float(summary["accuracy"]), 2)


def model_card(arch: str, dataset: str, result: dict, *, name: str | None = None, checkpoint: str | None = None) -> dict:
    """The JSON of an export from ``fairard.evaluate.evaluate``'s result; ``autoattack_acc`` is None if AA was not run."""
    per_class = {attack: {"accuracy": s["accuracy"], "worst_class_accuracy": s["worst_class_accuracy"],
                          "worst_class_name": s["worst_class_name"], "nsd": s.get("nsd"),
                          "per_class": s["per_class"]}
                 for attack, s in result["attacks"].items()}
    return {
        "name": name or arch, "architecture": arch, "dataset": dataset, "threat_model": THREAT_MODEL,
        "eps": float(result["eps"]), "clean_acc": _percent(result, "clean"), "autoattack_acc": _percent(result, "aa"),
        "autoattack": "fra31 standard (APGD-CE, APGD-T, FAB-T, Square)" if "aa" in result["attacks"] else None,
        "n_test_images": int(result["n"]), "class_names": result["class_names"], "per_class_results": per_class,
        "additional_data": False, "number_forward_passes": 1, "source_checkpoint": checkpoint,
        "provenance": result.get("provenance"),
    }


def export_model(model: torch.nn.Module, arch: str, dataset: str, out, result: dict, **card) -> tuple[Path, Path]:
    """Write ``<out>.pt`` (plain state dict, on CPU) and ``<out>.json`` (``model_card``); returns both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    pt, js = out.with_name(out.name + ".pt"), out.with_name(out.name + ".json")
    save_torch(pt, state)
    write_json(js, model_card(arch, dataset, result, **card))
    return pt, js


def cmd_export(args) -> int:
    """The ``export`` command: load, evaluate (clean and AutoAttack by default) and write the pair."""
    from .checks import check_finite_model, check_output_file
    from .evaluate import check_attacks, evaluate
    from .models import build_model, load_checkpoint

    attacks = check_attacks(args.attacks, "--attacks")
    num_classes = D.NUM_CLASSES[args.dataset]
    build_model(args.arch, num_classes)  # an unknown arch fails here, listing the valid ones, before any work
    for suffix in (".pt", ".json"):  # both outputs writable before the evaluation (AutoAttack: hours)
        check_output_file(Path(str(args.out) + suffix), "--out")
    device = resolve_device(args.device)
    model = load_checkpoint(args.arch, args.checkpoint, num_classes=num_classes).to(device)
    check_finite_model(model, f"checkpoint {args.checkpoint!r}")
    x, y = D.test_tensors(args.dataset, args.n_per_class, device, args.seed, args.data_root, what="--n-per-class")
    result = evaluate(model, x, y, attacks=attacks, class_names=D.CLASS_NAMES[args.dataset], eps=args.eps,
                      seed=args.seed, progress=not args.quiet, check_large_eps=0)
    result["provenance"] = provenance(device)
    pt, js = export_model(model, args.arch, args.dataset, args.out, result, name=args.name,
                          checkpoint=str(args.checkpoint))
    print(f"wrote {pt} and {js}")
    return 0
