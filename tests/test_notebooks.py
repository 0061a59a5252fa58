"""Every notebook under notebooks/ runs top to bottom under papermill at ``-p profile smoke``.

- Each notebook is executed once per session (conftest's ``smoke_notebooks``: the way the book
  builds it, in a kernel that cannot import the book extra, myst-nb included); the book test builds
  from the same executed copies.
- Its output holds a table (Markdown ``|`` rows or an HTML ``<table>``) and a figure (``image/png``).
- Running main_results' study again reads everything from the cache: no cache file is written or
  rewritten and the glued ``main_runs_computed`` is 0 (its cells re-run in this process, no kernel).
- A bad parameter fails in the first code cell after the parameters, with a message listing the
  valid values: checked for every notebook by running its parameters and that cell in this process,
  and once through the papermill CLI, as a user would meet it.
- ``fairard.glue`` without myst-nb writes exactly what myst-nb's ``glue`` writes, and myst-nb reads it.

All notebooks share one results folder for the session, so the smoke teacher is trained once and runs
that several notebooks use (e.g. ARD seed 0) are trained once. The data is a tiny synthetic stand-in
for CIFAR-10 in the same npz layout.
"""
import ast
import base64
import importlib
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
    """glued values (display=False stores them under papermill's record prefix)."""
    out = {}
    for o in _outputs(nb):
        name = o.get("metadata", {}).get("scrapbook", {}).get("name")
        text = o.get("data", {}).get(GLUE_PREFIX + "text/plain", o.get("data", {}).get("text/plain"))
        if name is not None:
            out[name] = text
    return out


def _code(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def _parameters_cell(path: Path):
    code = _code(path)
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [0], f"{path.name}: the first code cell, and only it, must be tagged 'parameters' (got {tagged})"
    return code[0]


def _parameter_names(path: Path) -> set:
    tree = ast.parse(_parameters_cell(path).source)
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
    """nbformat 4.5 cells need ids (a missing one is a warning today, an error in future nbformat);
    the papermill parameters cell is the first code cell (papermill injects after it)."""
    raw = json.loads(path.read_text())
    ids = [c.get("id") for c in raw["cells"]]
    assert None not in ids, f"{path.name}: cells {[i for i, c in enumerate(ids) if c is None]} have no id"
    assert len(set(ids)) == len(ids), f"{path.name}: duplicate cell ids"
    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))
    _parameters_cell(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_smoke_and_shows_a_table_and_a_figure(path, smoke_notebooks):
    nb = nbformat.read(smoke_notebooks[path.stem], as_version=4)
    errors = [f"{o['ename']}: {o['evalue']}" for o in _outputs(nb) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} failed at smoke: {errors}"
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code" and c.source.strip()), \
        f"{path.name}: not every code cell ran"
    assert _has_table(nb), f"{path.name}: no Markdown/HTML table in the outputs"
    assert any("image/png" in o.get("data", {}) for o in _outputs(nb)), f"{path.name}: no figure (image/png)"


def _run_cells(cells, namespace: dict) -> dict:
    """Execute notebook cells' sources in this process (IPython display calls print instead)."""
    for cell in cells:
        exec(compile(cell.source, "<notebook cell>", "exec"), namespace)
    return namespace


def test_main_results_glues_what_it_computed_and_a_rerun_reads_the_cache(smoke_notebooks, nb_env, monkeypatch, capsys):
    """The session's main_results execution trained runs (the cache was fresh for the session) and glued
    their count; its study re-run with the same parameters computes nothing and touches no cache file."""
    executed = nbformat.read(smoke_notebooks["main_results"], as_version=4)
    computed = int(_glued(executed)["main_runs_computed"])
    assert computed > 0, "main_results computed nothing in a session whose results cache started empty"

    code = [c for c in executed.cells if c.cell_type == "code"]
    last = next(i for i, c in enumerate(code) if "main_runs_computed" in c.source)
    glued = {}
    import fairard.glue
    monkeypatch.setattr(fairard.glue, "glue", lambda name, value, display=True: glued.__setitem__(name, value))
    before = _cache_files(nb_env)
    monkeypatch.chdir(REPO / "notebooks")
    _run_cells(code[:last + 1], {})  # parameters, papermill's injected ones, setup, the study call
    assert glued["main_runs_computed"] == 0
    assert _cache_files(nb_env) == before, "the cached re-run wrote or rewrote files in the results cache"
    assert "everything came from the cache" in capsys.readouterr().out


def _first_cell_error(path: Path, **bad) -> Exception:
    """Run the notebook's parameters cell, then ``bad`` (as papermill would inject it), then the first
    code cell after the parameters, in this process; return what that cell raised."""
    code = _code(path)
    namespace = _run_cells(code[:1], {})
    namespace.update(bad)
    with pytest.raises(Exception) as err:
        _run_cells(code[1:2], namespace)
    return err.value


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_unknown_profile_fails_in_the_first_cell(path):
    err = _first_cell_error(path, profile="huge")
    assert isinstance(err, ValueError) and "huge" in str(err) and "smoke, quick, paper" in str(err), repr(err)


def _takes_methods(path: Path) -> bool:
    try:
        return "methods" in _parameter_names(path)
    except (AssertionError, SyntaxError):  # reported by test_notebook_is_valid_with_unique_cell_ids
        return False


WITH_METHODS = [p for p in NOTEBOOKS if _takes_methods(p)]


@pytest.mark.parametrize("path", WITH_METHODS, ids=[p.stem for p in WITH_METHODS])
def test_unknown_method_fails_in_the_first_cell(path):
    # the string papermill -p passes for a list
    err = _first_cell_error(path, profile="smoke", methods='["ard","foo"]')
    # fairard.checks.InputError is a ValueError
    assert isinstance(err, ValueError) and "'foo'" in str(err) and "valid" in str(err), repr(err)
    if path == MAIN:
        assert "fair-ard" in str(err) and "absld" in str(err)


WITH_EXECUTOR = [p for p in NOTEBOOKS if "executor" in _parameter_names(p)]


def test_every_study_notebook_takes_the_executor_parameters():
    assert {p.stem for p in WITH_EXECUTOR} == {"main_results", "inheritance", "capacity_gap", "ablations", "kdiga",
                                               "aa_variants"}
    for path in WITH_EXECUTOR:
        assert {"executor", "jobs", "gpus", "jobs_per_gpu"} <= set(_parameter_names(path)), path.stem
        assert "**run_with)" in "".join(c.source for c in _code(path)), f"{path.stem} does not pass its executor to the study"


@pytest.mark.parametrize("path", WITH_EXECUTOR, ids=[p.stem for p in WITH_EXECUTOR])
@pytest.mark.parametrize("bad,named", [({"executor": "banana"}, "local, slurm"), ({"jobs": 0}, "jobs"),
                                       ({"gpus": [7]}, "not visible")])
def test_a_bad_executor_parameter_fails_in_the_first_cell(path, bad, named):
    err = _first_cell_error(path, profile="smoke", **bad)
    assert isinstance(err, ValueError) and named in str(err), repr(err)


def test_papermill_cli_stops_at_a_bad_parameter_in_the_first_cell(nb_env, tmp_path):
    """One launch as a user would meet it: ``papermill ... -p profile huge`` exits non-zero, the cell
    after the injected parameters shows the ValueError listing the valid profiles, and nothing after
    it ran."""
    out = tmp_path / "bad.ipynb"
    cmd = [sys.executable, "-m", "papermill", str(MAIN), str(out), "--cwd", str(REPO), "-k", "python3",
           "-p", "profile", "huge"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode != 0, "papermill accepted -p profile huge"
    code = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    injected = next(i for i, c in enumerate(code) if "injected-parameters" in c.metadata.get("tags", []))
    first = code[injected + 1]
    errors = [o for o in first.get("outputs", []) if o.get("output_type") == "error"]
    assert errors, f"the first cell after the parameters did not fail:\n{first.source}"
    assert errors[0]["ename"] in ("ValueError", "InputError") and "huge" in errors[0]["evalue"] and "smoke, quick, paper" in errors[0]["evalue"]
    assert all(c.get("execution_count") is None for c in code[injected + 2:]), "cells after the failure ran"


# ----------------------------------------------------------------------------------- glue without myst-nb
def _captured_glue(glue_function, monkeypatch, name, value) -> tuple:
    """What ``glue_function(name, value, display=False)`` hands to IPython's display: (data, metadata)."""
    import IPython.display

    calls = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False, metadata=None: calls.append((obj, metadata)))
    mystnb_glue = sys.modules.get("myst_nb.ext.glue")
    if mystnb_glue is not None:  # myst-nb bound IPython's display at its import
        monkeypatch.setattr(mystnb_glue, "ipy_display", IPython.display.display)
    glue_function(name, value, display=False)
    assert len(calls) == 1
    return calls[0]


class _Image:
    """Displays as a PNG, as a matplotlib figure does in a kernel (the inline backend's formatter)."""

    def _repr_png_(self):
        return b"\x89PNG\r\n\x1a\n" + bytes(16)


def test_glue_without_myst_nb_writes_what_myst_nb_reads(monkeypatch):
    """With myst_nb unimportable, ``fairard.glue.glue`` is the package's own and writes, for a number, a text
    and an image, exactly the display output of myst-nb's glue; myst-nb's glue extraction (what the book's
    ``{glue:text}`` and ``{glue-figure}`` use) reads the values back. Fails if the notebooks' glue needs
    myst-nb, or if the recorded output drifts from myst-nb's format."""
    from myst_nb import glue as mystnb_glue
    from myst_nb.ext.glue import extract_glue_data

    import fairard.glue

    try:
        with monkeypatch.context() as blocked:
            blocked.setitem(sys.modules, "myst_nb", None)  # `import myst_nb` raises ImportError
            own = importlib.reload(fairard.glue)
            assert own.glue is own.record, "fairard.glue.glue should not come from myst_nb when it is unimportable"
            values = {"a_number": 12.5, "a_text": "yes", "a_figure": _Image()}
            ours = {n: _captured_glue(own.glue, monkeypatch, n, v) for n, v in values.items()}
        theirs = {n: _captured_glue(mystnb_glue, monkeypatch, n, v) for n, v in values.items()}
    finally:
        importlib.reload(fairard.glue)
    for name in values:
        assert ours[name] == theirs[name], name
    assert ours["a_number"][0] == {GLUE_PREFIX + "text/plain": "12.5"}
    assert GLUE_PREFIX + "image/png" in ours["a_figure"][0]

    cell = nbformat.v4.new_code_cell("glue(...)")
    def as_saved(data):  # what the kernel sends and the notebook stores: binary formats base64-encoded
        return {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in data.items()}

    cell.outputs = [nbformat.v4.new_output("display_data", data=as_saved(data), metadata=meta)
                    for data, meta in ours.values()]
    nb = nbformat.v4.new_notebook(cells=[cell])

    class Logger:
        def warning(self, *args, **kwargs):
            raise AssertionError(f"myst-nb warned: {args}")

    read = extract_glue_data(nb, [0], Logger())
    assert set(read) == set(values)
    assert read["a_number"]["data"]["text/plain"] == "12.5" and read["a_text"]["data"]["text/plain"] == "'yes'"
    assert "image/png" in read["a_figure"]["data"]
