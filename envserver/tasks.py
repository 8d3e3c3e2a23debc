"""MiniWoB++ tasks from BrowserGym's registry, served offline from the `miniwob` wheel's pages."""

from __future__ import annotations

import difflib
import functools
import os
from importlib import resources


def miniwob_url() -> str:
    """MINIWOB_URL if set, else the pages bundled in the `miniwob` wheel (file://, no HTTP server needed)."""
    if os.environ.get("MINIWOB_URL"):
        return os.environ["MINIWOB_URL"]
    pages = resources.files("miniwob") / "html" / "miniwob"
    return f"file://{pages}/"


@functools.lru_cache(maxsize=None)
def registry() -> dict[str, type]:
    """Task name ('click-test') -> BrowserGym task class."""
    from browsergym.miniwob import ALL_MINIWOB_TASKS

    return {cls.subdomain: cls for cls in ALL_MINIWOB_TASKS}


class UnknownTask(KeyError):
    """A task name the server does not serve; suggests the nearest names it does."""

    def __init__(self, name: str, known=None):
        self.name = name
        known = registry().keys() if known is None else known
        self.suggestions = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(self.suggestions)}?" if self.suggestions else "; GET /tasks lists them"
        super().__init__(f"unknown task {name!r}{hint}")

    def __str__(self) -> str:
        return self.args[0]


class UnknownSeed(KeyError):
    """A seed a replay server has no recording of."""

    def __str__(self) -> str:
        return self.args[0]


def task_factory(name: str):
    """A callable seed -> task, bound to the offline page location."""
    try:
        cls = registry()[name]
    except KeyError:
        raise UnknownTask(name) from None
    return functools.partial(cls, base_url=miniwob_url())
