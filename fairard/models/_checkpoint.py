"""Strict, weights-only checkpoint loading (after timm's ``_helpers.load_checkpoint``).

Never falls back to unsafe unpickling and never relaxes strictness: a file that does not fit the architecture
raises ``CheckpointError`` naming the file, the architecture and the missing / unexpected / mis-shaped keys.
Foreign layouts are converted by an explicit ``filter_fn`` (state dict -> state dict), never by guessing.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ._registry import build_model

__all__ = ["CheckpointError", "clean_state_dict", "load_checkpoint", "read_checkpoint"]

# Wrappers written by common training scripts: {"state_dict": sd, "epoch": ...}, {"model": sd, "optimizer": ...}.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
# DataParallel / DistributedDataParallel add "module.", torch.compile adds "_orig_mod." (possibly both, any order);
# RobustBench's saved state dicts of wrapped models carry "model." (no family here has a top-level "model" module).
_PREFIXES = ("module.", "_orig_mod.", "model.")
_MAX_LISTED = 12


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, holds no state dict, or does not fit the requested architecture."""


def clean_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip leading ``module.`` / ``_orig_mod.`` / ``model.`` prefixes from every key."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f", ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"\n  {label} ({len(items)}): {shown}{more}"


def _describe(obj) -> str:
    if isinstance(obj, dict):
        keys = [str(k) for k in obj]
        return f"a dict with keys [{', '.join(keys[:_MAX_LISTED])}{', ...' if len(keys) > _MAX_LISTED else ''}]"
    return f"an object of type {type(obj).__name__}"


def _why_unreadable(path: Path, err: Exception) -> str:
    """One sentence on why torch.load failed, instead of torch's generic weights_only text or a pickle traceback."""
    msg = str(err)
    # torch <= 2.5: "Unsupported global: GLOBAL x.y"; torch 2.6+ (2.14 too) for a blocked module such as os/posix:
    # "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
    bad_global = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", msg)
    if bad_global:
        name = bad_global.group(1)
        kind = "a callable or class" if "blocked" in msg or not name.startswith("torch.") else "an object"
        return (f"it pickles {kind} ({name}), which weights_only loading refuses because unpickling it could run "
                "code; if you trust the file, load it once with torch.load(..., weights_only=False) and re-save "
                "only the model's state_dict()")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return "the file is empty"
    lines = [ln.strip() for ln in msg.split("WeightsUnpickler error:", 1)[-1].splitlines() if ln.strip()]
    detail = f"{type(err).__name__}: {lines[0][:160] if lines else ''}"
    if head.startswith(b"PK\x03\x04"):
        return f"it is a damaged or truncated torch.save zip archive ({detail})"
    return f"it is not a PyTorch checkpoint: torch.save writes zip archives, this file starts with {head!r} ({detail})"


def read_checkpoint(path, map_location="cpu"):
    """``torch.load(path, weights_only=True)``, every failure turned into one readable error naming the file
    (``FileNotFoundError`` if it is missing, ``CheckpointError`` if it cannot be read). No unwrapping: the
    trainer reads its own checkpoints (``checkpoint.pt``) with it too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: '{path}' (resolved: '{path.resolve()}'); "
                                "check the path or the run directory it should come from")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises UnpicklingError, RuntimeError, EOFError, KeyError, ...)
        raise CheckpointError(f"cannot load checkpoint '{path}': {_why_unreadable(path, err)}") from err


def _read(path: Path, map_location) -> dict[str, torch.Tensor]:
    """``read_checkpoint``, then unwrap to the state dict."""
    obj = read_checkpoint(path, map_location)

    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise CheckpointError(f"checkpoint '{path}' holds no state dict: expected a mapping of parameter names to "
                              f"tensors (bare, or under one of {list(_WRAPPER_KEYS)}), found {_describe(obj)}")
    return obj


def _mismatch(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} in file vs {tuple(v.shape)} in model"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    report = ""
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            report += _listing(label, items)
    if shapes and not (missing or unexpected):
        report += "\n  (only shapes differ: is num_classes or the width/depth right?)"
    return report


def load_checkpoint(arch_or_model: str | nn.Module, path: str | Path, num_classes: int = 10,
                    map_location="cpu", filter_fn: Callable[[dict], dict] | None = None) -> nn.Module:
    """Load ``path`` strictly into ``arch_or_model`` (a registry name, built here, or a module); return it in eval mode.

    Accepts a bare state dict or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``; strips ``module.``,
    ``_orig_mod.`` and ``model.`` (RobustBench) prefixes; ``filter_fn`` converts a foreign key layout (applied after the prefix stripping).
    """
    path = Path(path)
    state_dict = clean_state_dict(_read(path, map_location))
    if filter_fn is not None:
        state_dict = filter_fn(state_dict)
    if isinstance(arch_or_model, str):
        arch = f"'{arch_or_model}' (num_classes={num_classes})"
        model = build_model(arch_or_model, num_classes=num_classes)
    else:
        arch, model = f"{type(arch_or_model).__name__} (model instance)", arch_or_model
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        report = _mismatch(model, state_dict) or f"\n  {err}"
        raise CheckpointError(f"checkpoint '{path}' does not fit architecture {arch}:{report}") from err
    return model.eval()
