"""Playwright 1.44 (pinned by BrowserGym 0.14.3) builds a full `inspect.stack()` — reading the source
lines of every frame — on EVERY API call, eagerly, even when it is not used. Profiled on click-test this
was ~30 % of a step's wall time. Playwright reads only each frame, its file name and line number, so a
stack built straight from the frame chain (no source files opened) serves it the same. Later Playwright
releases fixed this upstream.
"""

from __future__ import annotations

import inspect
import sys
import types

from playwright._impl import _connection


def apply() -> None:
    if getattr(_connection.inspect, "_bgwork_patched", False):
        return
    shim = types.SimpleNamespace(**{name: getattr(inspect, name) for name in dir(inspect) if not name.startswith("__")})
    shim.stack = _cheap_stack
    shim._bgwork_patched = True
    _connection.inspect = shim


def _cheap_stack(context: int = 1) -> list[inspect.FrameInfo]:
    frames, frame = [], sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, None, None))
        frame = frame.f_back
    return frames
