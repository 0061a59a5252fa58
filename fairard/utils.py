"""Small shared helpers: device choice, atomic writes, provenance."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu; anything else is passed to torch.device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def new_file_mode() -> int:
    """0666 minus the process umask (0644 under the usual 022): what ``open`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


TEMP_SUFFIX = ".tmp"  # temporary files are ``.<name>.<random>.tmp`` next to their target


def _atomic_write(path: Path, write) -> Path:
    """Write through a temporary file in the same folder, then rename: a reader never sees half a file.
    The file gets the mode a plain ``open`` would give (``mkstemp`` alone makes it 0600, unreadable to a
    lab that shares the results folder)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as err:  # name the file asked for, not a temporary one (commands check outputs up front)
        raise OSError(err.errno, f"cannot write {path}: {err.strerror}", str(path)) from None
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path, obj) -> Path:
    return _atomic_write(path, lambda fh: fh.write((json.dumps(obj, indent=1) + "\n").encode()))


def write_text(path, text: str) -> Path:
    return _atomic_write(path, lambda fh: fh.write(text.encode()))


def save_torch(path, obj) -> Path:
    return _atomic_write(path, lambda fh: torch.save(obj, fh))


def quarantine(path, reason: str) -> Path:
    """Move an unreadable file aside (``<name>.corrupt-<time>``) and say so on stderr with its path and
    what happens next: the caller recomputes it; nothing is deleted."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # another worker moved it first
        return aside
    print(f"fairard: {path} is unreadable ({reason}); moved aside to {aside.name} and recomputed "
          f"(delete the .corrupt file once you no longer need it)", file=sys.stderr, flush=True)
    return aside


def git_commit(cwd: str | Path | None = None) -> str:
    """Commit hash of the fairard checkout, with '-dirty' if it has uncommitted changes. ``$FAIRARD_COMMIT``, when
    set, is taken as is: a copy of the tree sent to a lent GPU carries no (or another checkout's) ``.git``, so
    ``benchmarks/gpu_session.py`` records the commit where the copy was made."""
    if os.environ.get("FAIRARD_COMMIT"):
        return os.environ["FAIRARD_COMMIT"]
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """What a figure's caption names: the GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} cores)"


def provenance(device: torch.device | str = "cpu") -> dict:
    """Where a number came from: commit, package versions, device, host."""
    device = torch.device(device)
    versions = {}
    for pkg in ("fairard", "torch", "torchvision", "pyautoattack", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "git_commit": git_commit(),
        "versions": versions,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
    }
