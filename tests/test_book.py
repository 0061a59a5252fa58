"""The Jupyter Book, checked like a reader would: a strict smoke build, then the pages in a browser.

One session-scoped build (``book/build.py --profile smoke --strict``) into a staged copy under
``book/_build/test-smoke/`` so it never overwrites the book you built at another profile. It executes
no notebook itself: conftest's ``smoke_notebooks`` has executed each one once for the whole session
(the notebook tests read the same copies), in kernels without the book extra, into the staged
``executed/`` folder, where the build finds them up to date.

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
import tempfile
from pathlib import Path

import pytest

from conftest import BOOK_STAGE, REPO

pytestmark = pytest.mark.slow

STAGE = BOOK_STAGE
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


@pytest.fixture(scope="session")
def book_env(smoke_notebooks) -> dict:
    """Environment of the book build: conftest's ``nb_env`` (data, results cache, threads), in which
    ``smoke_notebooks`` has executed every notebook once for the session into the staged book's
    ``executed/`` folder; the build finds them all up to date and executes none itself."""
    return dict(os.environ)


BUILD_LOG: dict[str, str] = {}


@pytest.fixture(scope="session")
def book_html(book_env) -> Path:
    """Build the book at the smoke profile, strictly, once per session; returns the HTML folder."""
    cmd = [sys.executable, str(REPO / "book" / "build.py"), "--profile", "smoke", "--strict", "--out", str(STAGE)]
    proc = subprocess.run(cmd, cwd=REPO, env=book_env, capture_output=True, text=True)
    log = BUILD_LOG["smoke"] = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"strict smoke build failed ({' '.join(cmd)}):\n{log[-8000:]}"
    assert (HTML / "index.html").exists(), log[-4000:]
    return HTML


def test_build_executes_no_notebook_that_is_up_to_date(book_html):
    """The build runs no notebook whose source, package and profile are those of its executed copy: here
    every one, since the session's ``smoke_notebooks`` executed them with the build's own ``execute``.
    (Also what makes a second ``make book`` with nothing changed execute nothing.)"""
    log = BUILD_LOG["smoke"]
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


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def _heading(html: str, words: str):
    """The first <h2> whose text (section number included) contains ``words`` (any case)."""
    return re.search(r"<h2[^>]*>(?:(?!</h2>).)*?" + re.escape(words), html, re.S | re.IGNORECASE)


def _article(path: Path) -> str:
    """The page's content (not the navigation and "on this page" sidebars)."""
    html = path.read_text()
    start = html.find("<article")
    assert start >= 0, f"{path}: no <article>"
    return html[start:html.rfind("</article>")]


# myst-nb's toggle around a cell's source: <details class="... hide above-input"><summary>...</summary><div class="cell_input
FOLDED_INPUT = re.compile(r'<details class="[^"]*\bhide above-input"[^>]*>\s*<summary[^>]*>(?:(?!</summary>).)*</summary>\s*'
                          r'<div class="cell_input', re.S)


@pytest.mark.parametrize("name", [p.stem for p in sorted((REPO / "notebooks").glob("*.ipynb"))])
def test_result_pages_fold_code_and_the_profile_dump(book_html, name):
    """A result page reads like the paper: every code cell's source (papermill's injected parameters
    included) sits behind a closed toggle (myst-nb ``hide-input``), and so does the profile dump of the
    setup cell (``hide-output``), so narrative, tables and figures are what a reader sees."""
    html = (book_html / "executed" / f"{name}.html").read_text()
    inputs = html.count('<div class="cell_input')
    assert inputs and len(FOLDED_INPUT.findall(html)) == inputs, \
        f"{name}: {inputs - len(FOLDED_INPUT.findall(html))} of {inputs} code cells show their source"
    dump = html.find("n_per_class:")  # a line of the profile dump (Setup.describe)
    assert dump > 0, f"{name}: the profile dump is missing"
    opened = html.rfind("<details", 0, dump)
    assert opened > 0 and html.find("</details>", opened, dump) < 0 and \
        "hide below-input" in html[opened:html.find(">", opened)], f"{name}: the profile dump is not folded"


@pytest.mark.parametrize("page", ["main_results", "inheritance"])
def test_banked_gpu_results_come_first_with_their_caveats(book_html, page):
    """Main results and Inheritance (the chapter page and the executed notebook) show the banked GPU
    results before this build's run, named as the pipeline check, and the GPU section states its seed,
    the lossy-copy note and the shortened schedule; the executed page's first figure is the GPU one."""
    for file in (f"{page}.html", f"executed/{page}.html"):
        html = _article(book_html / file)
        gpu = _heading(html, "banked GPU results")
        check = _heading(html, "This build")
        assert gpu and check and gpu.start() < check.start(), \
            f"{file}: the banked GPU results do not come before this build's run (the pipeline check)"
        section = _text(html[gpu.start():check.start()])
        for needed in ("seed", "lossy JPEG-derived", "200"):
            assert needed in section, f"{file}: the GPU section does not state {needed!r}"
        assert "pipeline check" in _text(html[check.start():check.start() + 2000]), \
            f"{file}: this build's run is not presented as the pipeline check"
        if file.startswith("executed/"):
            first_image = html.find('src="../_images/')
            assert gpu.start() < first_image < check.start(), f"{file}: the first figure is not the banked GPU one"


def test_no_page_prints_the_build_machines_data_or_results_path(book_html, book_env):
    """The data note and captions name ``$FAIRARD_DATA``, never the absolute folder of the machine that
    built the book (nor its results cache)."""
    paths = [str(Path(book_env[v]).resolve()) for v in ("FAIRARD_DATA", "FAIRARD_RESULTS")]
    offenders = [f"{p.relative_to(book_html)}: {path}" for p in sorted(book_html.rglob("*.html"))
                 for path in paths if path in p.read_text(errors="replace")]
    assert not offenders, "pages print the build machine's folders:\n" + "\n".join(offenders[:20])


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


def _browse(page: Path, shot: Path, attempts: int = 3) -> str:
    """Render ``page`` offline; save a screenshot; return the DOM after scripts ran.

    Each start gets a new empty profile and the flags of the machine's own browser probe. A browser killed
    by a signal (CI once saw one segfault on a fresh machine, rc -11) is started again, at most
    ``attempts`` times; any other failure, or a page without the expected DOM, fails at once.
    """
    exe = _chromium()
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--virtual-time-budget=10000", "--host-resolver-rules=MAP * ~NOTFOUND",
             "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,2400", "--dump-dom",
             page.resolve().as_uri()]
    for attempt in range(1, attempts + 1):
        with tempfile.TemporaryDirectory(prefix="fairard-chromium-") as profile:
            dom = subprocess.run(flags[:1] + [f"--user-data-dir={profile}"] + flags[1:],
                                 capture_output=True, text=True, timeout=120)
        if dom.returncode >= 0 or attempt == attempts:
            break
    assert dom.returncode == 0 and "<html" in dom.stdout, \
        f"chromium failed on {page} (rc {dom.returncode}, try {attempt}): {dom.stderr[-2000:]}"
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


def test_code_toggles_render_closed_offline(rendered):
    """In the browser, offline, the main-results page's code sits in closed toggles with their labels."""
    dom = rendered["main_results"]
    toggles = re.findall(r"<details\b[^>]*\bhide\b[^>]*>", dom)
    assert len(toggles) >= 5 and "Show code cell source" in dom, "no code toggles on the main-results page"
    assert not [t for t in toggles if re.search(r"\bopen\b", t)], "a code toggle renders open"


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
