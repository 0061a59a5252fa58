#!/usr/bin/env python
"""Build the fairard Jupyter Book: vendor the browser scripts, execute the notebooks, run jupyter-book.

    python book/build.py [--profile quick|smoke|paper] [--strict] [--out DIR] [--force]

Three steps, each skipped when its inputs have not changed:

1. **Vendor** (``_vendor/``, git-ignored): ``npm pack`` fetches pinned versions of
   ``requirejs``, ``@jupyter-widgets/html-manager`` and ``mathjax`` from the npm registry once;
   their files are copied into ``_vendor/``, which ``_ext/fairard_book.py`` serves as static files,
   so the built book loads nothing from a CDN.
2. **Execute** (``executed/``, git-ignored): papermill runs every ``notebooks/*.ipynb`` with
   ``-p profile PROFILE`` (and ``-p progress False`` where the notebook has that parameter); its
   injected-parameters cell is folded like the notebook's own code cells (``hide-input``).  A
   notebook is re-executed only when its stamp changes: the hash of the
   notebook source, of the ``fairard`` package sources and of the profile.  Training inside a
   notebook goes through the config-hashed result cache (``$FAIRARD_RESULTS``), so even a
   re-execution retrains nothing that is already cached.
3. **Build**: ``jupyter-book build`` with execution off (the notebooks are already executed), then a
   check that no built page loads a script or stylesheet from another host.

``--out DIR`` builds a staged copy of the book in DIR (the tests use this so that a smoke build
never overwrites the book you built at another profile); the default builds in ``book/`` itself,
into ``book/_build/html``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BOOK = Path(__file__).resolve().parent
REPO = BOOK.parent
PROFILES = ("smoke", "quick", "paper", "paper-official")

# Pinned browser packages (checked with `npm view`): html-manager 1.x is the ipywidgets 8 embedder.
VENDOR_PACKAGES = {
    "requirejs": "2.3.8",
    "@jupyter-widgets/html-manager": "1.0.15",
    "mathjax": "3.2.2",
}
VENDOR_FILES = {  # what the book pages load (relative to _vendor/, served as _static/); checked after vendoring
    "require": "requirejs/require.js",
    "embed": "html-manager/embed-amd.js",
    "mathjax": "mathjax/tex-chtml.js",
}
# Sources of the book (copied when staging); generated folders are never copied.
GENERATED = {"_build", "executed", ".npm", "__pycache__", ".ipynb_checkpoints"}
REMOTE_ASSET = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)\s*=\s*["']?(?:https?:)?//""",
                          re.IGNORECASE)


def log(msg: str) -> None:
    print(f"[book] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- vendor
def vendor(dest: Path, cache: Path) -> None:
    """Fill ``dest`` (book/_vendor) from the npm registry (once per pinned version set).

    Not under ``_static``: Jupyter Book 1.x would inject every .js file there into every page."""
    stamp = dest / "VERSIONS.json"
    if stamp.exists() and json.loads(stamp.read_text()) == VENDOR_PACKAGES and \
            all((dest / f).exists() for f in VENDOR_FILES.values()):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("error: book/_vendor is missing and `npm` is not installed; install Node.js/npm "
                         "(Debian: apt-get install -y npm) so the build can fetch " +
                         ", ".join(f"{k}@{v}" for k, v in VENDOR_PACKAGES.items()) + " from the npm registry")
    cache.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}@{version}" for name, version in VENDOR_PACKAGES.items()]
    log(f"npm pack {' '.join(specs)}")
    out = subprocess.run([npm, "pack", "--json", "--pack-destination", str(cache), *specs],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"error: `npm pack {' '.join(specs)}` failed:\n{out.stderr.strip()}")
    tarballs = {entry["name"]: cache / entry["filename"] for entry in json.loads(out.stdout)}
    tmp = Path(tempfile.mkdtemp(dir=cache))
    try:
        unpacked = {}
        for name, tgz in tarballs.items():
            target = tmp / name.replace("/", "__")
            with tarfile.open(tgz) as tar:
                tar.extractall(target, filter="data")
            unpacked[name] = target / "package"
        if dest.exists():
            shutil.rmtree(dest)
        (dest / "requirejs").mkdir(parents=True)
        shutil.copy2(unpacked["requirejs"] / "require.js", dest / "requirejs" / "require.js")
        # embed-amd.js plus the font/icon assets it references by relative URL (source maps left out).
        shutil.copytree(unpacked["@jupyter-widgets/html-manager"] / "dist", dest / "html-manager",
                        ignore=shutil.ignore_patterns("*.map"))
        # MathJax loads its fonts and TeX extensions relative to tex-chtml.js: keep the whole es5 tree.
        shutil.copytree(unpacked["mathjax"] / "es5", dest / "mathjax")
        for name, root in unpacked.items():
            lic = next((p for p in root.iterdir() if p.name.upper().startswith("LICENSE")), None)
            if lic:
                shutil.copy2(lic, dest / f"LICENSE.{name.replace('/', '__').lstrip('@')}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    missing = [f for f in VENDOR_FILES.values() if not (dest / f).exists()]
    if missing:
        raise SystemExit(f"error: vendored packages lack {missing}")
    stamp.write_text(json.dumps(VENDOR_PACKAGES, indent=1) + "\n")
    log(f"vendored into {dest}")


# --------------------------------------------------------------------------------------------- execute
def _hash_files(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(REPO)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def toc_notebooks(book: Path) -> list[str]:
    """Names of the executed notebooks the TOC lists (``executed/<name>``)."""
    return re.findall(r"file:\s*executed/([\w-]+)", (book / "_toc.yml").read_text())


def book_parameters(src: Path, profile: str, overrides: dict | None = None) -> dict:
    """papermill parameters for the book: the profile; ``progress=False`` where the notebook has that
    parameter (tqdm's widget progress bars are noise in a static page); ``overrides`` (profile fields,
    e.g. a teacher checkpoint) where the notebook has an ``overrides`` parameter."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise SystemExit(f"error: {src} needs exactly one cell tagged `parameters` (has {len(cells)})")
    names = set(re.findall(r"^([A-Za-z_]\w*)\s*=", cells[0].source, re.MULTILINE))
    if "profile" not in names:
        raise SystemExit(f"error: the parameters cell of {src} does not define `profile`")
    params = {"profile": profile, **({"progress": False} if "progress" in names else {})}
    if overrides:
        if "overrides" not in names:
            raise SystemExit(f"error: {src} has no `overrides` parameter for --overrides {json.dumps(overrides)}")
        params["overrides"] = overrides
    return params


def fold_injected_parameters(path: Path) -> None:
    """Tag papermill's injected-parameters cell ``hide-input`` like every other code cell of the
    notebooks, so the book shows it behind a toggle (papermill adds it untagged but for its own tag)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            cell.metadata["tags"] = [*tags, "hide-input"]
    nbformat.write(nb, path)


def execute(notebooks: Path, executed: Path, profile: str, *, force: bool, listed: list[str],
            overrides: dict | None = None) -> list[str]:
    """papermill every notebook whose stamp changed; returns the names that failed."""
    import papermill as pm

    sources = sorted(notebooks.glob("*.ipynb"))
    names = [p.stem for p in sources]
    unlisted = sorted(set(names) - set(listed))
    missing = sorted(set(listed) - set(names))
    if missing:
        raise SystemExit(f"error: the TOC lists executed/{{{','.join(missing)}}} but {notebooks} has no "
                         f"{', '.join(m + '.ipynb' for m in missing)}")
    if unlisted:
        raise SystemExit(f"error: {', '.join(unlisted)} in {notebooks} not in book/_toc.yml: add them as "
                         "`- file: executed/<name>` under the chapter they belong to")
    package = _hash_files(p for p in (REPO / "fairard").rglob("*.py"))
    from fairard.utils import git_commit
    commit = git_commit(REPO)
    executed.mkdir(parents=True, exist_ok=True)
    failed = []
    for src in sources:
        dst, stamp_path = executed / src.name, executed / f"{src.stem}.stamp.json"
        parameters = book_parameters(src, profile, overrides)
        stamp = {"profile": profile, "parameters": parameters,
                 "notebook": hashlib.sha256(src.read_bytes()).hexdigest(), "fairard": package}
        old = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
        if not force and dst.exists() and old and {k: old.get(k) for k in stamp} == stamp:
            log(f"{src.name}: up to date (profile {profile})")
            continue
        stamp_path.unlink(missing_ok=True)
        log(f"{src.name}: executing with profile={profile} ...")
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(src), str(dst), parameters=parameters, cwd=str(src.parent),
                                kernel_name="python3", progress_bar=False, log_output=False)
        except Exception as err:  # PapermillExecutionError and kernel failures: keep going, report at the end
            log(f"{src.name}: FAILED after {time.perf_counter() - t0:.0f} s: {str(err).strip().splitlines()[-1]}")
            failed.append(src.name)
            continue
        fold_injected_parameters(dst)
        stamp_path.write_text(json.dumps({**stamp, "seconds": round(time.perf_counter() - t0, 1),
                                          "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                          "commit": commit}, indent=1) + "\n")
        log(f"{src.name}: done in {time.perf_counter() - t0:.0f} s")
    for stale in executed.glob("*.ipynb"):
        if stale.stem not in names:
            stale.unlink()
            (executed / f"{stale.stem}.stamp.json").unlink(missing_ok=True)
    return failed


def _short(commit: str) -> str:
    """'<40-hex>-dirty' -> '<10-hex>-dirty'."""
    sha, _, rest = commit.partition("-")
    return sha[:10] + (f"-{rest}" if rest else "")


def write_build_info(book: Path, notebooks: Path, profile: str) -> None:
    """``executed/build-info.md``: what this build executed, included by the book's first page.

    Rewritten only when its content changes, so an unchanged rebuild stays incremental."""
    from fairard.profiles import dataset_note, get_profile
    from fairard.utils import git_commit

    executed = book / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    p = get_profile(profile)
    lines = [
        f"- **Profile:** `{profile}`: {p.description}.",
        f"- **Seeds of the profile:** {', '.join(map(str, p.seeds))} (a notebook may run fewer for some "
        "methods; its tables list the seeds of every row).",
        f"- **Data:** {dataset_note(p.dataset)}.",
        f"- **Code:** commit `{_short(git_commit(REPO))}` of `fairard` when the book was built "
        "(`-dirty`: with uncommitted changes).",
        "",
        "| notebook | executed (local time) | seconds | commit at execution (each run's own commit is in the notebook) |",
        "|---|---|---|---|",
    ]
    for src in sorted(notebooks.glob("*.ipynb")):
        stamp_path = executed / f"{src.stem}.stamp.json"
        stamp = json.loads(stamp_path.read_text()) if stamp_path.exists() else {}
        when = stamp.get("finished", "not executed")
        lines.append(f"| {{doc}}`{src.name} <executed/{src.stem}>` | {when} | {stamp.get('seconds', '')} | "
                     f"`{_short(stamp.get('commit', 'unknown'))}` |")
    text = "\n".join(lines) + "\n"
    info = executed / "build-info.md"
    if not info.exists() or info.read_text() != text:
        info.write_text(text)


# ----------------------------------------------------------------------------------------------- build
def stage(root: Path) -> Path:
    """Copy the book sources into ``root/book`` (unchanged files keep their mtime, so Sphinx stays
    incremental); ``root/fairard`` links to the package, which chapters include from ``../fairard``."""
    out = root / "book"
    out.mkdir(parents=True, exist_ok=True)
    link = root / "fairard"
    if not link.is_symlink():
        link.symlink_to(REPO / "fairard", target_is_directory=True)
    for src in BOOK.rglob("*"):
        rel = src.relative_to(BOOK)
        if rel.parts[0] in GENERATED or any(part in GENERATED for part in rel.parts) or src.is_dir():
            continue
        dst = out / rel
        if dst.exists() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.unlink(missing_ok=True)
        try:
            if rel.parts[0] != "_vendor":
                raise OSError  # sources are copied: a staged copy must never write through to book/
            os.link(src, dst)  # the vendored bundles are large and read-only here: hard links where possible
        except OSError:
            shutil.copy2(src, dst)
    return out


def remote_references(html_dir: Path) -> list[str]:
    """'page: tag' for every script/stylesheet/image/iframe that a built page loads from another host."""
    hits = []
    for page in sorted(html_dir.rglob("*.html")):
        for m in REMOTE_ASSET.finditer(page.read_text(errors="replace")):
            hits.append(f"{page.relative_to(html_dir)}: {m.group(0)}")
    return hits


def jupyter_book(book: Path, strict: bool) -> int:
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(book), "--builder", "html"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    log(" ".join(cmd))
    return subprocess.run(cmd, check=False).returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=os.environ.get("PROFILE", "quick"), choices=PROFILES)
    ap.add_argument("--strict", action="store_true", help="warnings are errors (-W -n --keep-going)")
    ap.add_argument("--out", type=Path, help="build a staged copy here instead of in book/")
    ap.add_argument("--notebooks", type=Path, default=REPO / "notebooks", help="source notebooks")
    ap.add_argument("--overrides", type=json.loads, default=os.environ.get("OVERRIDES") or None,
                    help='JSON profile fields passed to every notebook, e.g. \'{"teacher_checkpoint": "/abs/model_cifar_wrn.pt"}\'')
    ap.add_argument("--force", action="store_true", help="re-execute every notebook")
    ap.add_argument("--no-execute", action="store_true", help="build from the executed copies as they are")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    # Absolute paths: the kernels run in notebooks/, and the Makefile's default FAIRARD_DATA is relative.
    os.environ["FAIRARD_DATA"] = str(Path(os.environ.get("FAIRARD_DATA", "data")).resolve())
    os.environ["FAIRARD_RESULTS"] = str(Path(os.environ.get("FAIRARD_RESULTS", "data/results")).resolve())
    # The python3 kernelspec runs `python`: make that the interpreter running this script.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

    vendor(BOOK / "_vendor", BOOK / ".npm")
    book = stage(args.out.resolve()) if args.out else BOOK
    log(f"profile={args.profile}  FAIRARD_DATA={os.environ['FAIRARD_DATA']}  "
        f"FAIRARD_RESULTS={os.environ['FAIRARD_RESULTS']}  book={book}")
    failed = [] if args.no_execute else execute(args.notebooks.resolve(), book / "executed", args.profile,
                                                force=args.force, listed=toc_notebooks(book),
                                                overrides=args.overrides)
    write_build_info(book, args.notebooks.resolve(), args.profile)
    rc = jupyter_book(book, args.strict)
    html = book / "_build" / "html"
    remote = remote_references(html) if html.exists() else []
    for hit in remote:
        log(f"remote asset: {hit}")
    if failed:
        log(f"notebooks that failed (their executed copies show the error): {', '.join(failed)}")
    log(f"{'OK' if rc == 0 and not failed and not remote else 'FAILED'} in {time.perf_counter() - t0:.1f} s: "
        f"open {html / 'index.html'}")
    return 1 if (rc or failed or remote) else 0


if __name__ == "__main__":
    sys.exit(main())
