"""``glue``: hand a value from a notebook to the book, with or without myst-nb installed.

The notebooks glue numbers and figures that the book's pages paste in (``{glue:text}``,
``{glue-figure}``).  myst-nb, which provides ``glue``, is a book extra; a user who only runs the
notebooks (``pip install -e .``, then papermill) does not have it.  So the notebooks import ``glue``
from here: myst-nb's own function when it is importable, otherwise one that writes the same display
output (the value's display formats under papermill's record prefix, with the ``scrapbook`` metadata
myst-nb reads), so a notebook executed without myst-nb still builds into the book.
"""
from __future__ import annotations

from typing import Any

GLUE_PREFIX = "application/papermill.record/"  # myst_nb.ext.glue.GLUE_PREFIX


def record(name: str, variable: Any, display: bool = True) -> None:
    """Glue ``variable`` under ``name`` the way myst-nb does, without importing myst-nb.

    The output is one display-data item: every display format of ``variable`` (``text/plain``, and
    ``image/png`` for a figure), prefixed with ``application/papermill.record/`` unless ``display``,
    and ``metadata.scrapbook = {name, mime_prefix}``, which myst-nb's glue extraction reads."""
    from IPython.core.formatters import format_display_data
    from IPython.display import display as ipy_display

    mimebundle, metadata = format_display_data(variable)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = dict(name=name, mime_prefix=prefix)
    ipy_display({prefix + k: v for k, v in mimebundle.items()}, raw=True, metadata=metadata)


try:  # the book extra: myst-nb's glue, so the output follows the installed myst-nb exactly
    from myst_nb import glue
except ImportError:  # the package's own dependencies only: the same output, written by `record`
    glue = record

__all__ = ["glue", "record", "GLUE_PREFIX"]
