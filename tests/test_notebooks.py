"""Every notebook under notebooks/ runs top to bottom under papermill at ``-p profile smoke``.

- its output holds a table (Markdown ``|`` rows or an HTML ``<table>``) and a figure (``image/png``);
- a second execution of main_results reads everything from the cache: no cache file is written or
  rewritten, and the notebook's glued ``main_runs_computed`` is 0;
- a bad parameter (``-p profile huge``; ``-p methods '["ard","foo"]'`` where a notebook has ``methods``)
  fails in the first code cell after the parameters, with a message that lists the valid values.

All notebooks share one results folder for the session, so the smoke teacher is trained once and runs
that several notebooks use (e.g. ARD seed 0) are trained once.  Without the in-house CIFAR-10 copy the
notebooks run on a tiny synthetic stand-in in the same npz layout.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
MAIN = REPO / "notebooks" / "main_results.ipynb"
GLUE_PREFIX = "application/papermill.record/"


@pytest.fixture(scope="session")
def execute(nb_env, tmp_path_factory):
    """``execute(path, **parameters)``: the executed notebook (memoised per path and parameters)."""
    import papermill

    out_dir, done = tmp_path_factory.mktemp("nb-out"), {}

    def run(path: Path, fresh: bool = False, **parameters):
        key = (path.name, json.dumps(parameters, sort_keys=True))
        if fresh or key not in done:
            out = out_dir / f"{path.stem}-{len(list(out_dir.iterdir()))}.ipynb"
            papermill.execute_notebook(str(path), str(out), parameters=parameters, kernel_name="python3",
                                       cwd=str(REPO), progress_bar=False)
            done[key] = nbformat.read(out, as_version=4)
        return done[key]

    return run


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _has_table(nb) -> bool:
    for o in _outputs(nb):
        data = o.get("data", {})
        md = data.get("text/markdown", "")
        if any(line.lstrip().startswith("|---") for line in md.splitlines()) and md.count("|") >= 4:
            return True
        if "<table" in data.get("text/html", ""):
            return True
    return False


def _glued(nb) -> dict:
    """myst-nb ``glue`` values (display=False stores them under papermill's record prefix)."""
    out = {}
    for o in _outputs(nb):
        name = o.get("metadata", {}).get("scrapbook", {}).get("name")
        text = o.get("data", {}).get(GLUE_PREFIX + "text/plain", o.get("data", {}).get("text/plain"))
        if name is not None:
            out[name] = text
    return out


def _parameter_names(path: Path) -> set:
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: exactly one cell must be tagged 'parameters'"
    tree = ast.parse(cells[0].source)
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}


def _cache_files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_python3_kernel_is_this_interpreter():
    """Kernel name python3 must start the interpreter running the tests (the venv), not a global one."""
    from jupyter_client.manager import KernelManager

    assert Path(KernelManager(kernel_name="python3").format_kernel_cmd()[0]).resolve() == Path(sys.executable).resolve()


def test_there_are_notebooks():
    assert MAIN in NOTEBOOKS and len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_valid_with_unique_cell_ids(path):
    """nbformat 4.5 cells need ids (a missing one is a warning today, an error in future nbformat)."""
    raw = json.loads(path.read_text())
    ids = [c.get("id") for c in raw["cells"]]
    assert None not in ids, f"{path.name}: cells {[i for i, c in enumerate(ids) if c is None]} have no id"
    assert len(set(ids)) == len(ids), f"{path.name}: duplicate cell ids"
    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_smoke_and_shows_a_table_and_a_figure(path, execute):
    _parameter_names(path)  # exactly one parameters cell
    nb = execute(path, profile="smoke")
    assert _has_table(nb), f"{path.name}: no Markdown/HTML table in the outputs"
    assert any("image/png" in o.get("data", {}) for o in _outputs(nb)), f"{path.name}: no figure (image/png)"
    assert not [o for o in _outputs(nb) if o.get("output_type") == "error"]


def test_second_main_results_run_reads_the_cache(execute, nb_env):
    first = execute(MAIN, profile="smoke")
    assert int(_glued(first)["main_runs_computed"]) >= 0
    before = _cache_files(nb_env)
    second = execute(MAIN, fresh=True, profile="smoke")
    assert _glued(second)["main_runs_computed"] == "0"
    assert _cache_files(nb_env) == before, "the cached re-run wrote or rewrote files in the results cache"
    assert "everything came from the cache" in "".join(o.get("text", "") for o in _outputs(second))


def _bad_run(path: Path, tmp_path: Path, *params: str):
    """Run the papermill CLI as a user would; returns the executed (failed) notebook."""
    out = tmp_path / f"{path.stem}-bad.ipynb"
    cmd = [sys.executable, "-m", "papermill", str(path), str(out), "--cwd", str(REPO), "-k", "python3"]
    for name, value in zip(params[::2], params[1::2]):
        cmd += ["-p", name, value]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode != 0, f"{path.name} accepted {params}"
    return nbformat.read(out, as_version=4)


def _first_cell_error(nb):
    code = [c for c in nb.cells if c.cell_type == "code"]
    injected = next(i for i, c in enumerate(code) if "injected-parameters" in c.metadata.get("tags", []))
    first = code[injected + 1]
    errors = [o for o in first.get("outputs", []) if o.get("output_type") == "error"]
    assert errors, f"the first cell after the parameters did not fail:\n{first.source}"
    assert all(c.get("execution_count") is None for c in code[injected + 2:]), "cells after the failure ran"
    return errors[0]["ename"], errors[0]["evalue"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_unknown_profile_fails_in_the_first_cell(path, nb_env, tmp_path):
    ename, evalue = _first_cell_error(_bad_run(path, tmp_path, "profile", "huge"))
    assert ename == "ValueError" and "huge" in evalue and "smoke, quick, paper" in evalue


def _takes_methods(path: Path) -> bool:
    try:
        return "methods" in _parameter_names(path)
    except (AssertionError, SyntaxError):  # reported by the smoke test of that notebook
        return False


WITH_METHODS = [p for p in NOTEBOOKS if _takes_methods(p)]


@pytest.mark.parametrize("path", WITH_METHODS, ids=[p.stem for p in WITH_METHODS])
def test_unknown_method_fails_in_the_first_cell(path, nb_env, tmp_path):
    ename, evalue = _first_cell_error(_bad_run(path, tmp_path, "profile", "smoke", "methods", '["ard","foo"]'))
    assert ename in ("ValueError", "InputError") and "'foo'" in evalue and "valid" in evalue  # InputError: a ValueError
    if path == MAIN:
        assert "fair-ard" in evalue and "absld" in evalue
