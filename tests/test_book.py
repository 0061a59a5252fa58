"""The Jupyter Book, checked like a reader would: a strict smoke build, then the pages in a browser.

One session-scoped build (``book/build.py --profile smoke --strict``) into a staged copy under
``book/_build/test-smoke/`` so it never overwrites the book you built at another profile. Its
notebook stamps and result cache (``$FAIRARD_RESULTS``, default ``book/_build/test-smoke/results``)
persist, so a second session re-executes nothing and the build takes seconds.

The browser checks open the built index, main-results and weighting-explorer pages in headless
Chromium (Debian package ``chromium``; ``make book-browser`` installs it) with every host name
unresolvable, so whatever renders, renders offline. They skip only when Chromium is missing.
Screenshots go to ``$FAIRARD_BOOK_SHOTS`` (default: a pytest temporary folder) for a human to look at.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, shared_data_root

pytestmark = pytest.mark.slow

STAGE = REPO / "book" / "_build" / "test-smoke"
HTML = STAGE / "book" / "_build" / "html"
PAGES = {  # page -> (file, heading it must show)
    "index": ("index.html", "Fair-ARD, reproduced"),
    "main_results": ("executed/main_results.html", None),
    "explorer": ("executed/weighting_explorer.html", None),
}
REMOTE_SCRIPT = re.compile(r"""<script\b[^>]*\bsrc\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)
sys.path.insert(0, str(REPO / "book" / "_ext"))
from fairard_book import CDN  # noqa: E402  (the build's own check, so the test and the build agree)
REMOTE_ASSET = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)\s*=\s*["']?(?:https?:)?//""",
                          re.IGNORECASE)


def _data_root() -> str | None:
    shared = shared_data_root()
    if shared:
        return str(shared)
    env = os.environ.get("FAIRARD_DATA")
    if env and any((Path(env) / p).exists() for p in ("cifar-10-batches-py", "cifar10/test.npz")):
        return env
    return None


@pytest.fixture(scope="session")
def book_env(request) -> dict:
    """Environment of the book build: data, results cache, threads.

    When conftest provides the notebook tests' session fixture ``nb_env`` (one data folder and one
    smoke results cache for every notebook of the session), the book reuses it, so a test session
    trains each smoke run once; otherwise the cache is ``$FAIRARD_RESULTS`` or a persistent folder
    under ``book/_build/test-smoke/``."""
    try:
        request.getfixturevalue("nb_env")
        return dict(os.environ)
    except pytest.FixtureLookupError:
        pass
    data = _data_root()
    if data is None:
        pytest.skip("no CIFAR-10 copy found ($FAIRARD_DATA or ../shared/data): the book's notebooks need data")
    env = dict(os.environ, FAIRARD_DATA=data)
    env.setdefault("FAIRARD_RESULTS", str(STAGE / "results"))
    env.setdefault("OMP_NUM_THREADS", "1")  # smoke models are tiny: one thread is as fast on a shared CPU
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return env


@pytest.fixture(scope="session")
def book_html(book_env) -> Path:
    """Build the book at the smoke profile, strictly, once per session; returns the HTML folder."""
    cmd = [sys.executable, str(REPO / "book" / "build.py"), "--profile", "smoke", "--strict", "--out", str(STAGE)]
    proc = subprocess.run(cmd, cwd=REPO, env=book_env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"strict smoke build failed ({' '.join(cmd)}):\n{log[-8000:]}"
    assert (HTML / "index.html").exists(), log[-4000:]
    return HTML


def test_rebuild_with_nothing_changed_executes_nothing(book_html, book_env):
    """A second build (same sources, profile and package) runs no notebook: every one is up to date."""
    cmd = [sys.executable, str(REPO / "book" / "build.py"), "--profile", "smoke", "--strict", "--out", str(STAGE)]
    proc = subprocess.run(cmd, cwd=REPO, env=book_env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "executing with profile" not in log, log[-4000:]
    notebooks = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    assert sorted(re.findall(r"\[book\] ([\w-]+\.ipynb): up to date", log)) == notebooks, log[-4000:]


def test_toc_lists_every_notebook():
    toc = (REPO / "book" / "_toc.yml").read_text()
    listed = set(re.findall(r"file:\s*executed/([\w-]+)", toc))
    sources = {p.stem for p in (REPO / "notebooks").glob("*.ipynb")}
    assert sources <= listed, f"notebooks missing from book/_toc.yml: {sorted(sources - listed)}"
    assert listed <= sources, f"book/_toc.yml lists notebooks that do not exist: {sorted(listed - sources)}"


def test_cdn_check_finds_addresses_not_base64_noise():
    assert CDN.search('<script src="https://cdn.jsdelivr.net/npm/x.js">') and CDN.search("require(['//unpkg.com/a/'])")
    assert CDN.search('"url": "https://cdnjs.cloudflare.com/ajax/"')
    assert not CDN.search('"data": "d9CpUye4ublh0KBBskCelpaGPXv2IDs7W2yR/+vhw4fo3r07pk6dirS0NAQHB2Pg//a0cdnQx/Ab"')


def test_every_page_built_and_none_loads_remote_assets(book_html):
    pages = sorted(book_html.rglob("*.html"))
    built = {p.relative_to(book_html).as_posix() for p in pages}
    for name in ("index.html", "background.html", "fair_ard.html", "reproduce.html", "api.html",
                 "bibliography.html", *(f"executed/{p.stem}.html" for p in (REPO / "notebooks").glob("*.ipynb"))):
        assert name in built, f"{name} was not built"
    offenders = [f"{p.relative_to(book_html)}: {m.group(0)}" for p in pages
                 for m in REMOTE_ASSET.finditer(p.read_text(errors="replace"))]
    assert not offenders, "pages load assets from another host:\n" + "\n".join(offenders[:20])
    cdn = [f"{p.relative_to(book_html)}: {m.group(0)}" for p in pages for m in CDN.finditer(p.read_text(errors="replace"))]
    assert not cdn, "pages name a CDN (unpkg, jsdelivr, cdnjs, cdn.*):\n" + "\n".join(cdn[:20])
    vendored = ["_static/mathjax/tex-chtml.js", "_static/requirejs/require.js", "_static/html-manager/embed-amd.js"]
    assert all((book_html / v).exists() for v in vendored), "vendored scripts missing from the build"


def test_result_chapters_state_provenance(book_html, book_env):
    """Every executed notebook page names its profile, its data (the lossy JPEG-derived copy when it is
    the in-house one) and its commit; the first page says how the book was built."""
    jpeg = (Path(book_env["FAIRARD_DATA"]) / "cifar10" / "train.npz").exists()
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        text = re.sub(r"<[^>]+>", " ", (book_html / "executed" / f"{nb.stem}.html").read_text())
        assert "smoke" in text, f"{nb.stem}: the executed page does not state its profile"
        assert "commit" in text, f"{nb.stem}: the executed page does not state the commit"
        if jpeg:
            assert "JPEG" in text, f"{nb.stem}: the executed page does not say the data is the JPEG-derived copy"
    index = re.sub(r"<[^>]+>", " ", (book_html / "index.html").read_text())
    assert "Profile:" in index and "smoke" in index and "commit" in index, "index lacks the build information"


def test_api_reference_documents_the_package(book_html):
    text = (book_html / "api.html").read_text()
    for obj in ("fairard.fairness.class_weights", "fairard.attacks.pgd", "fairard.runs.run",
                "fairard.methods.ARD"):
        assert f'id="{obj}"' in text, f"API reference lacks {obj}"


# ------------------------------------------------------------------------------------------- browser
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    pytest.skip("headless Chromium not found (Debian: apt-get install -y chromium, or `make book-browser`)")


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("FAIRARD_BOOK_SHOTS")
    path = Path(out) if out else tmp_path_factory.mktemp("book-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _browse(page: Path, shot: Path) -> str:
    """Render ``page`` offline; save a screenshot; return the DOM after scripts ran."""
    exe = _chromium()
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--virtual-time-budget=10000", "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars"]
    url = page.resolve().as_uri()
    dom = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,2400", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "<html" in dom.stdout, f"chromium failed on {page}: {dom.stderr[-2000:]}"
    assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot of {page}"
    return dom.stdout


@pytest.fixture(scope="session")
def rendered(book_html, shots) -> dict[str, str]:
    return {name: _browse(book_html / file, shots / f"{name}.png") for name, (file, _) in PAGES.items()}


def _headings(dom: str) -> list[str]:
    return [re.sub(r"<[^>]+>|\s+", " ", h).replace("#", "").strip()
            for h in re.findall(r"<h[12][^>]*>(.*?)</h[12]>", dom, re.S)]


def test_pages_render_headings(rendered):
    assert any("Fair-ARD, reproduced" in h for h in _headings(rendered["index"]))
    assert any("Robust fairness and the buckets effect" in h for h in _headings(rendered["index"]))
    assert any("main result" in h.lower() or "fair-ard vs" in h.lower() for h in _headings(rendered["main_results"])), \
        _headings(rendered["main_results"])
    assert any("explorer" in h.lower() for h in _headings(rendered["explorer"])), _headings(rendered["explorer"])


def test_main_results_show_a_figure(rendered):
    images = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]+)\"", rendered["main_results"])
    assert any("_images/" in src for src in images), f"no notebook figure on the main-results page: {images}"


def test_maths_is_rendered_by_mathjax(rendered):
    for name in ("index", "explorer"):
        assert "<mjx-container" in rendered[name], f"{name}: no MathJax output (is the local MathJax loaded?)"


def test_explorer_is_interactive_without_a_kernel(book_html, rendered):
    dom = rendered["explorer"]
    # The kernel-free explorer: its controls, and an SVG chart that its inline script has drawn.
    start = dom.find('class="fairard-explorer"')
    assert start >= 0, "the explorer page has no kernel-free explorer (class fairard-explorer)"
    explorer = dom[start:dom.find("</svg>", start)]
    assert 'type="range"' in explorer and "<select" in explorer, "the kernel-free explorer lacks its controls"
    assert "<rect" in explorer, "the kernel-free explorer's chart was not drawn (its script did not run)"
    # Saved ipywidgets views must be rendered by the vendored widget manager, not left as JSON.
    source = (book_html / PAGES["explorer"][0]).read_text()
    if "application/vnd.jupyter.widget-view+json" in source:
        assert re.search(r'class="[^"]*\bjupyter-widgets\b', dom), "saved widgets were not rendered"


def test_no_remote_script_after_rendering(rendered):
    for name, dom in rendered.items():
        hits = REMOTE_SCRIPT.findall(dom)
        assert not hits, f"{name}: scripts from another host in the rendered page: {hits[:5]}"
