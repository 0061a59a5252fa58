"""Class-wise robustness metrics from per-sample predictions.

Everything is computed from ``(y_true, y_pred)``: per-class accuracy, overall accuracy, the worst
class, NSD (population std / mean of the class accuracies; lower = fairer, as ABSLD reports it) and
the confusion matrix (rows = true class, columns = predicted class).
"""
from __future__ import annotations

import torch


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (C, C); entry [i, j] = samples of class i predicted as j."""
    idx = y_true.long() * num_classes + y_pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class accuracy from a confusion matrix; classes with no sample give nan."""
    totals = confusion.sum(1).double()
    return confusion.diagonal().double() / totals.where(totals > 0, torch.nan)


def nsd(per_class: torch.Tensor) -> float:
    """Normalised standard deviation: population std / mean over the classes present."""
    acc = per_class[~per_class.isnan()].double()
    mean = acc.mean()
    return float(acc.std(unbiased=False) / mean) if mean > 0 else float("nan")


def summarize(y_true: torch.Tensor, y_pred: torch.Tensor, class_names: list[str]) -> dict:
    """JSON-ready summary of one attack: per-class accuracy, overall, mean, worst class, NSD, confusion."""
    num_classes = len(class_names)
    conf = confusion_matrix(y_true.cpu(), y_pred.cpu(), num_classes)
    per_class = class_accuracy(conf)
    present = ~per_class.isnan()
    worst = int(torch.where(present, per_class, torch.inf).argmin())
    return {
        "accuracy": float(conf.diagonal().sum() / conf.sum()),
        "mean_class_accuracy": float(per_class[present].mean()),
        "worst_class_accuracy": float(per_class[worst]),
        "worst_class": worst,
        "worst_class_name": class_names[worst],
        "nsd": nsd(per_class),
        "per_class": [None if v != v else float(v) for v in per_class.tolist()],
        "confusion": conf.tolist(),
        "n": int(conf.sum()),
    }
