"""Validate untrusted action strings BEFORE anything reaches the browser.

A model's output is parsed with `ast` (never evaluated): exactly one call of an allowed BrowserGym
high-level action, whose arguments are literal strings, numbers, booleans or lists of those, matched
against the action's real signature. The accepted call is re-serialised from the parsed values, so
the browser only ever receives text this module wrote.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Callable

from browsergym.core.action import functions as bg_functions
from browsergym.core.action.highlevel import HighLevelActionSet

MAX_ACTION_CHARS = 2000

# Actions that read local files or leave the task page are not offered: a MiniWoB agent needs none,
# and goto('file:///...') or upload_file would let model output touch the host.
DEFAULT_ACTIONS = (
    "noop", "send_msg_to_user", "report_infeasible",
    "click", "dblclick", "hover", "fill", "press", "focus", "clear", "select_option",
    "drag_and_drop", "scroll",
    "mouse_move", "mouse_up", "mouse_down", "mouse_click", "mouse_dblclick", "mouse_drag_and_drop",
    "keyboard_down", "keyboard_up", "keyboard_press", "keyboard_type", "keyboard_insert_text",
)
SUBSETS = ("chat", "infeas", "bid", "coord")  # BrowserGym HighLevelActionSet subsets covering DEFAULT_ACTIONS
BROWSERGYM_TIMEOUT_MS = 500  # what BrowserGym's action functions give Playwright for every click, fill, press...


class ActionError(ValueError):
    """The action was rejected; the message says why and is shown to the caller as last_action_error."""


@dataclass(frozen=True)
class Action:
    name: str
    args: tuple
    kwargs: tuple[tuple[str, object], ...]

    def to_code(self) -> str:
        """Canonical text of the call, rebuilt from validated literals."""
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(parts)})"


def parse_action(text: object, allowed: tuple[str, ...] = DEFAULT_ACTIONS) -> Action:
    """Parse one action call; raise ActionError with a caller-facing message otherwise."""
    if not isinstance(text, str):
        raise ActionError(f"action must be a string, got {type(text).__name__}")
    if len(text) > MAX_ACTION_CHARS:
        raise ActionError(f"action is {len(text)} characters long; at most {MAX_ACTION_CHARS} are accepted")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ActionError("action is not valid UTF-8 text") from None
    text = text.strip()
    if not text:
        raise ActionError("empty action: expected one call such as click('13')")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ActionError(f"not a single Python-style call ({e.msg}): expected e.g. click('13')") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ActionError("expected exactly one call of an action by name, e.g. click('13')")
    name = call.func.id
    if name not in allowed:
        raise ActionError(f"unknown action {name!r}; allowed: {', '.join(allowed)}")
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise ActionError("*args/**kwargs are not accepted: write the arguments out")
    args = tuple(_literal(a, name) for a in call.args)
    kwargs = tuple((k.arg, _literal(k.value, name)) for k in call.keywords)
    _check_signature(name, args, kwargs)
    return Action(name, args, kwargs)


def _literal(node: ast.AST, action: str) -> object:
    """Only plain literals: no names, attributes, calls, operators or comprehensions."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and type(node.operand.value) in (int, float):
        return -node.operand.value
    if isinstance(node, ast.List):
        return [_literal(e, action) for e in node.elts]
    raise ActionError(f"{action}(): arguments must be literal strings or numbers, "
                      f"got {type(node).__name__} {ast.unparse(node)[:60]!r}")


def _check_signature(name: str, args: tuple, kwargs: tuple) -> None:
    sig = inspect.signature(getattr(bg_functions, name))
    try:
        bound = sig.bind(*args, **dict(kwargs))
    except TypeError as e:
        raise ActionError(f"{name}{sig}: {e}") from None
    for param, value in bound.arguments.items():
        if "bid" in param and not isinstance(value, str):
            raise ActionError(f"{name}(): the element id {param} must be a quoted string, "
                              f"e.g. {name}('{value}') not {name}({value})")
        annotation = sig.parameters[param].annotation
        if annotation is str and not isinstance(value, str):
            raise ActionError(f"{name}(): {param} must be a quoted string, got {value!r}")
        if annotation in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ActionError(f"{name}(): {param} must be a number, got {value!r}")
        _check_choices(name, param, annotation, value)


def _check_choices(name: str, param: str, annotation, value) -> None:
    """Literal[...] parameters (click's button, its modifiers) take only their listed values: a model that
    writes click('13', 'Click Me!') learns why, instead of BrowserGym failing inside the page."""
    if typing.get_origin(annotation) is list and isinstance(value, list):
        (annotation,) = typing.get_args(annotation) or (None,)
        values = value
    else:
        values = [value]
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        bad = [v for v in values if v not in choices]
        if bad:
            raise ActionError(f"{name}(): {param} must be one of {', '.join(map(repr, choices))}, got {bad[0]!r}")


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
