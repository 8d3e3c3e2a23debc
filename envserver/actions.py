"""BrowserGym's side of the actions: the action-to-code mapping a live session executes.

The grammar (what is accepted, and how it is checked) lives in envserver.grammar, which needs no BrowserGym.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

from browsergym.core.action.highlevel import HighLevelActionSet

from .grammar import DEFAULT_ACTIONS

SUBSETS = ("chat", "infeas", "bid", "coord")  # BrowserGym HighLevelActionSet subsets covering DEFAULT_ACTIONS
BROWSERGYM_TIMEOUT_MS = 500  # what BrowserGym's action functions give Playwright for every click, fill, press...


@functools.lru_cache  # built from BrowserGym's source text: once per timeout, not per session
def action_mapping(timeout_ms: int = BROWSERGYM_TIMEOUT_MS) -> Callable[[str], str]:
    """BrowserGym's action-to-code translator for exactly DEFAULT_ACTIONS, its in-page timeout set to timeout_ms.

    BrowserEnv's own default knows only the bid/nav/tab actions, so mouse_* and keyboard_* calls this
    module accepts would fail as "Invalid action type". And its 500 ms per click is tight for a busy
    box: four sessions on two cores (CI) timed out 5 of 200 correct clicks, a reward of 0 the policy never earned.
    """
    actions = HighLevelActionSet(subsets=list(SUBSETS), multiaction=False)
    missing = [a for a in DEFAULT_ACTIONS if a not in actions.action_set]
    if missing:
        raise RuntimeError(f"this BrowserGym has no {', '.join(missing)} in subsets {SUBSETS}")
    actions.python_includes, n = re.subn(rf"\btimeout={BROWSERGYM_TIMEOUT_MS}\b", f"timeout={int(timeout_ms)}",
                                         actions.python_includes)
    if n < 10:  # the action functions were rewritten upstream: fail loudly rather than keep 500 ms silently
        raise RuntimeError(f"found {n} 'timeout={BROWSERGYM_TIMEOUT_MS}' in BrowserGym's action code, expected >= 10")
    return actions.to_python_code
