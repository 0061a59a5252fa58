"""Sphinx glue for the fairard book: serve the vendored browser scripts, refuse remote ones.

- ``_vendor/`` (filled by ``book/build.py`` from the npm registry, git-ignored) is added to
  ``html_static_path`` here, at ``config-inited``, and not in ``_config.yml``: Jupyter Book 1.x
  injects every ``.js``/``.css`` file it finds under a configured static path into every page,
  which would load all of MathJax's components and every widget bundle on every page.
- ``fairard``'s docstrings are plain text by the project's style, not reST. A docstring that does
  not parse cleanly as reST (an indented formula read as a block quote, ``|x|`` read as a
  substitution) is shown verbatim instead of breaking the strict build; the build log names each
  one, so it can be fixed at the source.
- ``{glue-figure} executed/<notebook>.ipynb::<key>`` is myst-nb's ``glue:figure`` (a numbered,
  captioned figure) for a key glued in *another* notebook, which myst-nb 1.x only offers without a
  caption (``{glue}`` with ``:doc:``). The chapter pages use it to show the notebooks' figures.
- Every page's scripts and stylesheets are checked after all extensions added theirs: one that
  would be fetched from another host (``http://``, ``https://``, ``//``) is a warning, so the
  strict build (``-W``) fails instead of shipping a book that needs a CDN.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import docutils.core
from docutils import nodes
from myst_nb.ext.glue.directives import PasteFigureDirective
from myst_nb.ext.glue.utils import PendingGlueReferenceError, create_pending_glue_ref, glue_warning

from sphinx.util import logging

logger = logging.getLogger(__name__)
REMOTE = re.compile(r"^(?:https?:)?//", re.IGNORECASE)
# A CDN address in a script body. The look-behind skips base64 payloads (widget state holds PNGs as
# base64, whose random "//...cdn.../" runs are not addresses): an address starts after a quote, a
# bracket, '=' or whitespace, never right after a base64 character.
CDN = re.compile(r"(?<![A-Za-z0-9+/=])(?:https?:)?//[\w.-]*(?:cdn|unpkg|jsdelivr|cdnjs)[\w.-]*/", re.IGNORECASE)
VENDOR_DIR = "_vendor"


def _config_inited(app, config) -> None:
    vendor = Path(app.srcdir) / VENDOR_DIR
    if not vendor.is_dir():
        logger.warning("%s/ is missing: run `python book/build.py` (or `make book`) to fetch the vendored "
                       "MathJax, RequireJS and widget manager from the npm registry", vendor,
                       type="fairard", subtype="vendor")
        return
    paths = []
    for p in list(config.html_static_path) + [str(vendor)]:
        if p not in paths:  # Jupyter Book appends _static a second time
            paths.append(p)
    config.html_static_path = paths


_VERBATIM: list[str] = []


def _docstring_parses(text: str, env) -> bool:
    """True when ``text`` parses as reST without a warning (Sphinx's roles need its ``env``)."""
    stream = io.StringIO()
    try:
        docutils.core.publish_doctree(text, settings_overrides={"warning_stream": stream, "report_level": 2,
                                                                "halt_level": 5, "env": env})
    except Exception:  # noqa: BLE001  (anything that breaks the parse means: show it verbatim)
        return False
    return not stream.getvalue()


def _process_docstring(app, what, name, obj, options, lines) -> None:
    if not lines or not name.startswith("fairard") or _docstring_parses("\n".join(lines), app.env):
        return
    _VERBATIM.append(name)
    lines[:] = ["::", ""] + [f"    {line}" if line else "" for line in lines] + [""]


def _report_verbatim(app, env) -> None:
    if _VERBATIM:
        logger.info("[fairard_book] docstrings shown verbatim (not valid reST): %s", ", ".join(sorted(set(_VERBATIM))))


class CrossDocGlueFigure(PasteFigureDirective):
    """A captioned, numbered figure of a glued output from another document: ``path.ipynb::key``."""

    def run(self):
        doc, sep, key = self.arguments[0].partition("::")
        if not sep:
            return super().run()
        try:
            ref = create_pending_glue_ref(self.document, self.source, self.line, doc, key)
        except PendingGlueReferenceError as exc:
            return [glue_warning(str(exc), self.document, self.line)]
        figure = nodes.figure("", ref)
        self.set_source_info(figure)
        if self.options.get("figwidth"):
            figure["width"] = self.options["figwidth"]
        if self.options.get("figclass"):
            figure["classes"] += self.options["figclass"]
        if self.options.get("align"):
            figure["align"] = self.options["align"]
        self.add_name(figure)
        if self.content:
            holder = nodes.Element()
            self.state.nested_parse(self.content, self.content_offset, holder)
            first = holder[0]
            if not isinstance(first, nodes.paragraph):
                return [figure, glue_warning("Figure caption must be a paragraph.", self.document, self.lineno)]
            caption = nodes.caption(first.rawsource, "", *first.children)
            caption.source, caption.line = first.source, first.line
            figure += caption
            if len(holder) > 1:
                figure += nodes.legend("", *holder[1:])
        return [figure]


def _is_thebe(asset) -> bool:
    """sphinx-thebe's loader and its inline config (which names thebe's unpkg URL)."""
    name = str(getattr(asset, "filename", asset) or "")
    body = str(getattr(asset, "attributes", {}).get("body", ""))
    return name.endswith("sphinx-thebe.js") or "THEBE_JS_URL" in body


def _check_remote(app, pagename, templatename, context, doctree) -> None:
    # Thebe (live code through Binder) is off in this book (launch_buttons.thebe: false) and would need
    # the network anyway; Jupyter Book loads its extension regardless, so drop its scripts.
    context["script_files"] = [js for js in context.get("script_files", []) if not _is_thebe(js)]
    for key in ("script_files", "css_files"):
        for asset in context.get(key, []):
            name = str(getattr(asset, "filename", asset) or "")
            body = str(getattr(asset, "attributes", {}).get("body", ""))
            if REMOTE.match(name) or CDN.search(body):
                logger.warning("page %r would load %s from another host: %s (the book must read offline; "
                               "vendor it under book/_vendor instead)", pagename, key[:-6], name or body[:120],
                               type="fairard", subtype="remote")


def setup(app):
    app.add_directive("glue-figure", CrossDocGlueFigure)
    app.connect("config-inited", _config_inited)
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("env-updated", _report_verbatim)
    app.connect("html-page-context", _check_remote, priority=900)  # after mathjax and myst-nb add theirs
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
