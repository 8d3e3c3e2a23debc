"""Progress bars that read well everywhere.

In JupyterLab: a tqdm widget. Headless (papermill via `bgwork run`, which sets BGWORK_HEADLESS=1; or a terminal):
a plain-text bar refreshed at most every HEADLESS_MININTERVAL seconds. Why: widget bars render as nothing in
the HTML report, and unthrottled text bars write a line per update into the log.
"""

from __future__ import annotations

import os
import sys

from tqdm import std

HEADLESS_ENV = "BGWORK_HEADLESS"
HEADLESS_MININTERVAL = 10.0  # seconds between text refreshes; the final state is always printed


def headless() -> bool:
    return os.environ.get(HEADLESS_ENV, "") not in ("", "0")


def progress(iterable=None, **kwargs):
    """`tqdm(iterable, **kwargs)` of the right kind for where the code runs."""
    if not headless() and _in_notebook_ui():
        try:
            from tqdm.notebook import tqdm as widget_tqdm
            return widget_tqdm(iterable, **kwargs)
        except ImportError:  # ipywidgets missing: fall back to text
            pass
    kwargs.setdefault("mininterval", HEADLESS_MININTERVAL if headless() else 0.5)
    kwargs.setdefault("ascii", True)
    kwargs.setdefault("file", sys.stdout)  # stdout: one stream, so the report shows bar and prints in order
    return std.tqdm(iterable, **kwargs)


def _in_notebook_ui() -> bool:
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return type(shell).__name__ == "ZMQInteractiveShell"


def in_notebook_kernel() -> bool:
    """Running in a Jupyter kernel: JupyterLab, or papermill headless."""
    return _in_notebook_ui()
