"""Every user-facing input checked in one place, before any data is loaded or any model is built.

Each check takes the value and ``what`` (the option's name as the user wrote it: ``--epochs`` on the command
line, ``epochs`` in Python or a notebook) and returns the value converted, or raises ``InputError`` (a
``ValueError``) whose one line names the option, the value and the valid domain. ``what=None`` leaves the name
out, for argparse, which prefixes ``argument --epochs:`` itself (``arg(check, ...)`` adapts a check to an
argparse ``type``).

The domains (see also ``TrainConfig``):
- counts, epochs, batch sizes, attack steps: integers >= 1; ``all`` (or ``None``) where the option means a
  subset of the data and leaving it out means all of it; 0 never means "all";
- switches that are counts of something optional (``--val-per-class``, ``--monitor-n``): integers >= 0, 0 = off;
- seeds: integers >= 0;
- learning rate, epsilon: finite > 0; weight decay, momentum, Fair-* beta: finite >= 0;
- the Fair-* clamp: ``none`` or two finite numbers 0 < low <= high;
- devices: auto, cpu, cuda, cuda:N, mps, and only a GPU that is there;
- outputs: a file path that is not a folder and whose folder can be created and written, checked before the
  work that produces it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

import torch

DEVICES = ("auto", "cpu", "cuda", "cuda:<n>", "mps")
ALL = "all"  # the word that means "every image" where a count selects a subset


class InputError(ValueError):
    """A bad user input: the message names the option, the value and what is valid."""


def _fail(what: str | None, domain: str, value) -> InputError:
    return InputError(f"{what + ' ' if what else ''}must be {domain}, got {value!r}")


# ---- numbers ------------------------------------------------------------------------------------
def check_int(value, what: str | None, low: int | None = None, *, allow_none: bool = False,
              all_word: bool = False) -> int | None:
    """An integer >= ``low`` (strings of digits are read, as ``papermill -p`` and argparse pass them).
    ``allow_none``: None passes; ``all_word``: the word ``all`` (or None) gives None, meaning every item."""
    if value is None and (allow_none or all_word):
        return None
    if all_word and isinstance(value, str) and value.strip().lower() == ALL:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        domain = {None: "an integer", 0: "an integer >= 0", 1: "a positive integer (1, 2, ...)"}.get(
            low, f"an integer >= {low}")
        domain += f" or '{ALL}' (the default: every image)" if all_word else " or None" if allow_none else ""
        raise _fail(what, domain, value)
    return value


def check_float(value, what: str | None, low: float | None = None, *, strict: bool = False,
                high: float | None = None, allow_none: bool = False) -> float | None:
    """A finite number >= ``low`` (> ``low`` with ``strict``), <= ``high``; None only with ``allow_none``."""
    if value is None and allow_none:
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    bad = not math.isfinite(number) or (low is not None and (number <= low if strict else number < low)) \
        or (high is not None and number > high)
    if bad:
        bounds = ([f"{'>' if strict else '>='} {low:g}"] if low is not None else []) + \
            ([f"<= {high:g}"] if high is not None else [])
        raise _fail(what, " ".join(["a finite number", " and ".join(bounds)]).strip(), value)
    return number


def check_flag(value, what: str) -> bool:
    if isinstance(value, str) and value in ("True", "False"):
        return value == "True"
    if not isinstance(value, bool):
        raise _fail(what, "True or False", value)
    return value


# ---- lists --------------------------------------------------------------------------------------
def as_list(value, what: str, kind=str) -> list:
    """A list parameter: a list/tuple, a JSON-list string ('["ard","foo"]', what ``papermill -p`` passes;
    ``None`` allowed for null), a comma-separated string ('ard,fair-ard') or one scalar; items converted to
    ``kind`` (str, float, int; ints must be >= 0, e.g. seeds)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "(")):
            try:
                value = json.loads("[" + text[1:-1].replace("'", '"').replace("None", "null") + "]")
            except json.JSONDecodeError:
                raise InputError(f"{what}: cannot read {text!r} as a list; write e.g. '[\"a\", \"b\"]' or a,b") from None
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    out = []
    for v in value:
        try:
            if kind is str:
                ok = isinstance(v, str) and v
            else:
                ok = not isinstance(v, bool) and kind(v) == float(v) and (kind is not int or int(v) >= 0)
                v = kind(v)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            hint = "a non-negative integer (seeds are 0, 1, 2, ...)" if kind is int else f"a valid {kind.__name__}"
            raise InputError(f"{what}: {v!r} is not {hint}")
        out.append(v)
    return out


def check_subset(what: str, values, valid, noun: str = "value", *, unique: bool = False) -> list:
    """``values`` as a non-empty list, every item in ``valid`` (the error lists them); repeated items are
    dropped, or refused with ``unique`` (an attack listed twice would run twice)."""
    values = as_list(values, what) if values is not None else []
    unknown = [v for v in values if v not in valid]
    if unknown or not values:
        raise InputError(f"{what}: {f'unknown {noun}(s) {unknown}' if unknown else 'empty: give at least one'}; "
                         f"valid: {', '.join(map(str, valid))}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated and unique:
        raise InputError(f"{what}: {repeated} listed more than once; give each once")
    return list(dict.fromkeys(values))


def check_clamp(clamp, what: str | None = "clamp") -> tuple[float, float] | None:
    """None (clamp off: also the words none/off/null) or two finite numbers with 0 < low <= high."""
    domain = "none (off) or two finite numbers low,high with 0 < low <= high (official: 5/6,5/2)"
    if isinstance(clamp, str):
        text = clamp.strip()
        if text.lower() in ("none", "off", "null", ""):
            return None
        try:
            clamp = as_list(text, what or "clamp", float)
        except InputError:
            raise _fail(what, domain, text) from None
    if clamp is None:
        return None
    try:
        pair = tuple(float(c) for c in clamp)
    except (TypeError, ValueError):
        raise _fail(what, domain, clamp) from None
    if len(pair) != 2 or not all(map(math.isfinite, pair)) or not 0 < pair[0] <= pair[1]:
        raise _fail(what, domain, clamp if not isinstance(clamp, (list, tuple)) else list(clamp))
    return pair


def check_betas(betas, what: str = "betas") -> list[float]:
    """Fair-* weighting exponents: finite numbers >= 0 (a negative beta would favour the easy classes)."""
    betas = as_list(betas, what, float)
    if not betas or not all(math.isfinite(b) and b >= 0 for b in betas):
        raise _fail(what, "finite numbers >= 0 (the paper uses 2)", betas)
    return betas


def check_milestones(value, what: str | None = "milestones") -> tuple | None:
    """Epochs (>= 1) at which the learning rate drops x0.1, increasing; 'none' or '' for no drop."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        value = [] if text.lower() in ("none", "") else [v for v in text.split(",") if v.strip()]
    out = tuple(check_int(v, what, 1) if what is None else check_int(v, f"{what} item", 1) for v in value)
    if list(out) != sorted(set(out)):
        raise _fail(what, "increasing epochs, each once (e.g. 100,150)", list(out))
    return out


def check_options(pairs, what: str) -> dict:
    """KEY=VALUE pairs (``--option tau=30``); values parsed as int, float, bool or left as strings."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair or not pair.split("=", 1)[0].strip():
            raise InputError(f"{what} {pair!r} must look like KEY=VALUE (e.g. {what} width=32)")
        key, value = pair.split("=", 1)
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        else:
            value = {"true": True, "false": False}.get(value.lower(), value)
        out[key.strip()] = value
    return out


# ---- devices ------------------------------------------------------------------------------------
def check_device(device, what: str | None = "device") -> str:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', and only a GPU that is there."""
    device = str(device)
    ok = device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())
    if not ok:
        raise InputError(f"{what + ': ' if what else ''}unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"{what + ': ' if what else ''}device {device!r} asked for, but no CUDA GPU is "
                             "visible; valid here: auto, cpu")
        index = int(device[5:]) if device[5:] else 0
        if index >= torch.cuda.device_count():
            raise InputError(f"{what + ': ' if what else ''}device {device!r} asked for, but only "
                             f"{torch.cuda.device_count()} GPU(s) are visible (cuda:0 .. "
                             f"cuda:{torch.cuda.device_count() - 1})")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"{what + ': ' if what else ''}device 'mps' asked for, but MPS is not available; "
                         "valid here: auto, cpu" + (", cuda" if torch.cuda.is_available() else ""))
    return device


# ---- outputs ------------------------------------------------------------------------------------
def _probe_folder(folder: Path, what: str, path: Path) -> None:
    """Create ``folder`` (and parents) and write a probe file in it; InputError naming ``what`` if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise InputError(f"{what} {str(path)!r} cannot be written ({err.strerror or err}: {err.filename or folder}); "
                         f"choose a folder you can write to") from None


def check_output_file(path, what: str) -> Path:
    """A file the work will write: not an existing folder, in a folder that can be created and written.
    Checked before the work, so hours of evaluation are never lost to a bad ``--out``."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{what} {str(path)!r} is a folder; give a file name, e.g. {path / 'result.json'}")
    _probe_folder(path.parent, what, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{what} {str(path)!r} exists and is read-only; choose another file or make it writable")
    return path


def check_output_dir(path, what: str) -> Path:
    """A folder the work will write into: created if missing, and writable."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {str(path)!r} is a file, not a folder; choose a folder")
    _probe_folder(path, what, path)
    return path


# ---- state --------------------------------------------------------------------------------------
def non_finite(tensors) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` (a name -> tensor mapping) holding nan or inf."""
    return [name for name, t in tensors.items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite_model(model: torch.nn.Module, what: str = "model") -> None:
    """Refuse a model whose parameters or buffers hold nan/inf: it can only give meaningless numbers."""
    bad = non_finite(dict(model.state_dict()))
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise InputError(f"{what} has non-finite (nan/inf) weights in {shown}; it comes from a diverged run: "
                         "retrain it (e.g. with a lower --lr) or use another checkpoint")


# ---- argparse -----------------------------------------------------------------------------------
def arg(check, *args, **kwargs):
    """``check`` as an argparse ``type``: its message becomes argparse's one-line error."""
    def parse(text):
        try:
            return check(text, None, *args, **kwargs)
        except InputError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = check.__name__.removeprefix("check_")
    return parse


# ---- a training run -----------------------------------------------------------------------------
def check_train_config(cfg) -> None:
    """Every field of a ``fairard.train.TrainConfig`` in its domain, before any data is loaded or model built;
    normalises in place (``n_per_class='all'`` -> None, clamp and milestones as tuples)."""
    from .data import NUM_CLASSES
    from .fairness import DIFFICULTY_MEASURES
    from .methods import parse_method_name

    parse_method_name(cfg.method)  # unknown method: the error lists the valid ones
    if cfg.dataset not in NUM_CLASSES:
        raise InputError(f"unknown dataset {cfg.dataset!r}; valid: {', '.join(NUM_CLASSES)}")
    cfg.n_per_class = check_int(cfg.n_per_class, "n_per_class", 1, all_word=True)
    for name in ("epochs", "batch_size", "attack_steps"):
        check_int(getattr(cfg, name), name, 1, allow_none=True)
    for name in ("val_per_class", "monitor_n", "seed"):
        check_int(getattr(cfg, name), name, 0)
    check_float(cfg.lr, "lr", 0, strict=True, allow_none=True)
    check_float(cfg.momentum, "momentum", 0, allow_none=True)
    check_float(cfg.weight_decay, "weight_decay", 0, allow_none=True)
    check_float(cfg.beta, "beta", 0)
    cfg.clamp = check_clamp(cfg.clamp, "clamp")
    cfg.milestones = check_milestones(cfg.milestones, "milestones")
    if cfg.difficulty not in DIFFICULTY_MEASURES:
        raise InputError(f"unknown difficulty {cfg.difficulty!r}; valid: {', '.join(DIFFICULTY_MEASURES)}")
    if cfg.pad_mode not in ("zeros", "reflect"):
        raise InputError(f"pad_mode must be 'zeros' or 'reflect', got {cfg.pad_mode!r}")
    check_device(cfg.device, "device")
    for name in ("method_options", "student_kwargs", "teacher_kwargs"):
        if not isinstance(getattr(cfg, name), dict):
            raise InputError(f"{name} must be a dict, got {getattr(cfg, name)!r}")


def check_model_kwargs(arch: str, num_classes: int, kwargs: dict, what: str) -> None:
    """Build ``arch`` with ``kwargs`` on the meta device (no memory, no random numbers drawn) so that a bad
    keyword or value (``--student-kw width=abc``) is one line naming ``what`` before any work."""
    from .models import build_model

    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            build_model(arch, num_classes, **kwargs)
    except (TypeError, ValueError, RuntimeError) as err:
        if not kwargs:
            raise
        raise InputError(f"{what} {kwargs} does not build {arch!r}: {type(err).__name__}: {err}") from None
