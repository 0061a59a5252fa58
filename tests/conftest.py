import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

# OMP_NUM_THREADS, when set, wins: several test processes sharing the 2 cores must not oversubscribe them.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A test that sets torch's thread count (e.g. to 1 for gloo workers) leaves it as it found it: results of
    later tests (test_trades_teacher_more_robust_than_natural's margin) depend on the reduction order."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _find_shared_data() -> Path | None:
    for cand in (os.environ.get("FAIRARD_DATA"), REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "cifar10" / "train.npz").exists():
            return Path(cand)
    return None


_SHARED_DATA = _find_shared_data()  # looked up once, before the notebook fixtures point $FAIRARD_DATA at synthetic data


def shared_data_root() -> Path | None:
    """The in-house CIFAR-10 copy: $FAIRARD_DATA (as the session started) if it holds cifar10/, else ../shared/data."""
    return _SHARED_DATA


def make_blobs(n_per_class=40, num_classes=10, shape=(3, 8, 8), sep=0.02, noise=0.02, seed=0):
    """Synthetic [0,1] images: a class-specific pattern plus noise, easily separable by a linear model."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn((num_classes, *shape), generator=g).sign() * sep
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = (0.5 + patterns[y] + noise * torch.randn((len(y), *shape), generator=g)).clamp(0, 1)
    return x, y


def train_briefly(model, x, y, steps=200, lr=0.01, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def tiny_problem():
    """A briefly trained linear classifier on separable synthetic 3x8x8 images (10 classes)."""
    x, y = make_blobs()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 10))
    train_briefly(model, x, y)
    return model, x, y


def write_synthetic_cifar(root: Path, n_train=24, n_test=8, seed=0) -> Path:
    """A tiny learnable CIFAR-10 stand-in in the npz layout (<root>/cifar10/{train,test}.npz)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    patterns = rng.normal(0, 40, size=(10, 32, 32, 3))
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.repeat(np.arange(10), n)
        x = np.clip(128 + patterns[y] + rng.normal(0, 30, size=(len(y), 32, 32, 3)), 0, 255).astype(np.uint8)
        (root / "cifar10").mkdir(parents=True, exist_ok=True)
        np.savez(root / "cifar10" / f"{split}.npz", x=x, y=y.astype(np.int64))
    return root


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory):
    """A randomly initialised ResNet-8 saved as a teacher checkpoint (the trainer loads teachers by path)."""
    from fairard.models import build_model

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pt"
    torch.save(build_model("resnet8", 10).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    return write_synthetic_cifar(tmp_path_factory.mktemp("synthetic-data"))


@pytest.fixture(scope="session")
def nb_env(tmp_path_factory):
    """One data folder and one results cache for every notebook of the session (the notebook tests
    and the book test share it, so a test session trains each smoke run once).

    The data is always the tiny synthetic stand-in, even where the in-house CIFAR-10 copy exists:
    smoke runs read 20 images per class, and loading the real training file decompresses all 150 MB
    of it in every kernel."""
    data = write_synthetic_cifar(tmp_path_factory.mktemp("nb-data"), n_train=24, n_test=8)
    results = tmp_path_factory.mktemp("nb-results")
    mp = pytest.MonkeyPatch()
    mp.setenv("FAIRARD_DATA", str(data))
    mp.setenv("FAIRARD_RESULTS", str(results))
    mp.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    mp.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread is as fast, and far faster on a shared CPU
    yield results
    mp.undo()


# The book test's staged build (book/build.py --out); the session's executed notebooks go into its
# executed/ folder, where the build finds them up to date.
BOOK_STAGE = REPO / "book" / "_build" / "test-smoke"
# The book extra (pyproject's `book`): the notebooks must run without it (`pip install -e .` only).
BOOK_EXTRA_MODULES = ("myst_nb", "jupyter_book", "myst_parser", "sphinx")


def book_build_module():
    """book/build.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fairard_book_build", REPO / "book" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hide_modules(folder: Path, names=BOOK_EXTRA_MODULES) -> Path:
    """A folder that, first on PYTHONPATH, makes ``import <name>`` fail for each of ``names``."""
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(
            f"raise ImportError('{name} is hidden by the tests: the notebooks must run without the book extra')\n")
    return folder


@pytest.fixture(scope="session")
def smoke_notebooks(nb_env, tmp_path_factory) -> dict:
    """Every notebook executed ONCE per session, at ``-p profile smoke``, the way ``book/build.py``
    executes it (same parameters and stamp), into the book test's staged ``executed/`` folder:
    ``{notebook stem: executed notebook path}``.  The notebook tests read these copies and the book
    test builds from them (its build finds every notebook up to date).

    The kernels cannot import the book extra (myst-nb, jupyter-book, Sphinx): a notebook that needs
    it fails here, and the book's strict build fails if a value glued without myst-nb cannot be read."""
    build = book_build_module()
    executed = BOOK_STAGE / "book" / "executed"
    hidden = hide_modules(tmp_path_factory.mktemp("no-book-extra"))
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", os.pathsep.join([str(hidden), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    mp.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")  # kernel = this python
    try:
        build.execute(REPO / "notebooks", executed, "smoke", force=True, listed=build.toc_notebooks(REPO / "book"))
    finally:
        mp.undo()
    return {p.stem: executed / p.name for p in sorted((REPO / "notebooks").glob("*.ipynb"))}
