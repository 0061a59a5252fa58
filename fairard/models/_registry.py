"""Name -> constructor registry, after timm's ``_registry.py``/``_factory.py``, cut down to what CIFAR nets need.

Models register themselves on import (``fairard/models/__init__.py`` imports every family file). Families whose
names carry hyper-parameters (``wrn-<depth>-<width>``) additionally register a name *pattern*, so any depth/width
builds without listing it, while the common ones are still registered explicitly so ``list_models()`` shows them.
"""
from __future__ import annotations

import re
import warnings
from typing import Callable

import torch.nn as nn

__all__ = ["register_model", "register_model_pattern", "build_model", "list_models"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_PATTERNS: list[tuple[re.Pattern[str], str, Callable[..., nn.Module]]] = []


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register ``fn(num_classes=..., **kw) -> nn.Module`` under ``name`` (default: the function's name).

    Use as ``@register_model`` or ``register_model(factory, name="wrn-34-10")``. Re-registering warns, as timm does.
    """
    def deco(f):
        key = (name or f.__name__).lower()
        if key in _MODELS:
            warnings.warn(f"model {key!r} registered twice; the later definition wins", stacklevel=3)
        _MODELS[key] = f
        return f

    return deco if fn is None else deco(fn)


def register_model_pattern(pattern: str, template: str):
    """Register ``fn(match, num_classes=..., **kw)`` for every name that fully matches the regex ``pattern``.

    ``template`` is the human-readable form shown in error messages, e.g. ``"wrn-<depth>-<width>"``.
    """
    def deco(fn):
        _PATTERNS.append((re.compile(pattern), template, fn))
        return fn

    return deco


def list_models() -> list[str]:
    """Sorted names of the explicitly registered models (pattern families accept more, see ``build_model``)."""
    return sorted(_MODELS)


def build_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Construct a registered model. ``None`` kwargs are dropped so unset CLI flags never override defaults."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    key = name.lower()
    if key in _MODELS:
        return _MODELS[key](num_classes=num_classes, **kwargs)
    for regex, _, fn in _PATTERNS:
        match = regex.fullmatch(key)
        if match:
            return fn(match, num_classes=num_classes, **kwargs)
    patterns = ", ".join(template for _, template, _ in _PATTERNS)
    raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}"
                     + (f"; also accepted: {patterns}" if patterns else ""))
