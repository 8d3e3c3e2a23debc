"""The action grammar: which action strings are accepted, parsed BEFORE anything reaches a browser.

A model's output is parsed with `ast` (never evaluated): exactly one call of an allowed BrowserGym
high-level action, whose arguments are literal strings, numbers, booleans or lists of those, matched
against the action's signature and bounded (no wait, coordinate, scroll, typed text or key combination that
could stall a session).
The accepted call is re-serialised from the parsed values, so a browser only ever receives text this
module wrote.

This module imports nothing from BrowserGym or Playwright: the trainer (bgwork) and the browser-free
replay server use it as they are. The signatures below are BrowserGym 0.14.3's, written out; a test
checks them against BrowserGym's own functions wherever BrowserGym is installed.
"""


import ast
import inspect
import math
import typing
from dataclasses import dataclass
from typing import Literal

MAX_ACTION_CHARS = 2000
MAX_WAIT_MS = 10_000  # noop(wait_ms): a session sleeps this long at most
MAX_SCROLL_PX = 10_000  # scroll(delta_x, delta_y)
DEFAULT_VIEWPORT = (332, 214)  # MiniWoB's viewport (BrowserGym); coordinates are bounded by the session's own
MAX_LIST_ITEMS = 16  # modifiers, select_option's options
# Typing is one key event per character: measured here, 1,900 characters took 24 s in one idle session.
MAX_TYPED_CHARS = 256  # keyboard_type(text); fill and keyboard_insert_text insert text in one event
MAX_KEYS = 6  # keys in one combination such as 'Control+Shift+a' ('a+' * 600 took 7 s)
MAX_KEY_CHARS = 64  # the longest key name Playwright knows is 20 characters
_KEY_PARAMS = {("press", "key_comb"), ("keyboard_press", "key"), ("keyboard_down", "key"), ("keyboard_up", "key")}

Button = Literal["left", "middle", "right"]
Modifier = Literal["Alt", "Control", "ControlOrMeta", "Meta", "Shift"]


# --- BrowserGym's action signatures (first line of each docstring is the MCP tool description) --------------

def noop(wait_ms: float = 1000):
    """Do nothing, and optionally wait for the given time (in milliseconds)."""

def send_msg_to_user(text: str):
    """Sends a message to the user."""

def report_infeasible(reason: str):
    """Notifies the user that their instructions are infeasible."""

def click(bid: str, button: Button = "left", modifiers: list[Modifier] = []):  # noqa: B006 - a signature, never called
    """Click an element."""

def dblclick(bid: str, button: Button = "left", modifiers: list[Modifier] = []):  # noqa: B006
    """Double click an element."""

def hover(bid: str):
    """Hover over an element."""

def fill(bid: str, value: str, enable_autocomplete_menu: bool = False):
    """Fill out a form field: focus the element and enter the text (input, textarea, contenteditable)."""

def press(bid: str, key_comb: str):
    """Focus the matching element and press a combination of keys, e.g. 'Enter' or 'ControlOrMeta+a'."""

def focus(bid: str):
    """Focus the matching element."""

def clear(bid: str):
    """Clear the input field."""

def select_option(bid: str, options: str | list[str]):
    """Select one or multiple options in a <select> element, by option value or label."""

def drag_and_drop(from_bid: str, to_bid: str):
    """Drag an element and drop it on another."""

def scroll(delta_x: float, delta_y: float):
    """Scroll horizontally and vertically, in pixels (positive: right or down)."""

def mouse_move(x: float, y: float):
    """Move the mouse to a location, in client coordinates (pixels)."""

def mouse_up(x: float, y: float, button: Button = "left"):
    """Move the mouse to a location then release a mouse button."""

def mouse_down(x: float, y: float, button: Button = "left"):
    """Move the mouse to a location then press and hold a mouse button."""

def mouse_click(x: float, y: float, button: Button = "left"):
    """Move the mouse to a location and click a mouse button."""

def mouse_dblclick(x: float, y: float, button: Button = "left"):
    """Move the mouse to a location and double click a mouse button."""

def mouse_drag_and_drop(from_x: float, from_y: float, to_x: float, to_y: float):
    """Drag and drop from a location to a location, in client coordinates (pixels)."""

def keyboard_down(key: str):
    """Press and hold a keyboard key."""

def keyboard_up(key: str):
    """Release a keyboard key."""

def keyboard_press(key: str):
    """Press a combination of keys, e.g. 'Enter' or 'ControlOrMeta+a'."""

def keyboard_type(text: str):
    """Type a string of text through the keyboard, one key event per character."""

def keyboard_insert_text(text: str):
    """Insert a string of text in the currently focused element (an input event only)."""


# Actions that read local files or leave the task page are not offered: a MiniWoB agent needs none,
# and goto('file:///...') or upload_file would let model output touch the host.
SIGNATURES = {fn.__name__: fn for fn in (
    noop, send_msg_to_user, report_infeasible,
    click, dblclick, hover, fill, press, focus, clear, select_option, drag_and_drop, scroll,
    mouse_move, mouse_up, mouse_down, mouse_click, mouse_dblclick, mouse_drag_and_drop,
    keyboard_down, keyboard_up, keyboard_press, keyboard_type, keyboard_insert_text)}
DEFAULT_ACTIONS = tuple(SIGNATURES)

_COORDINATES = {"x": 0, "from_x": 0, "to_x": 0, "y": 1, "from_y": 1, "to_y": 1}  # -> viewport axis


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

    def bound(self) -> dict[str, object]:
        """Every parameter's value, defaults filled in: click('13') and click('13', button='left') agree."""
        bound = inspect.signature(SIGNATURES[self.name]).bind(*self.args, **dict(self.kwargs))
        bound.apply_defaults()
        return dict(bound.arguments)

    def key(self) -> str:
        """One text per distinct effect: all parameters, positional, defaults included (recordings use it)."""
        return f"{self.name}({', '.join(repr(v) for v in self.bound().values())})"

    def bids(self) -> list[str]:
        """The element ids the action targets."""
        return [v for k, v in self.bound().items() if "bid" in k]


def parse_action(text: object, allowed: tuple[str, ...] = DEFAULT_ACTIONS,
                 viewport: tuple[int, int] | None = None) -> Action:
    """Parse one action call; raise ActionError with a caller-facing message otherwise.

    `viewport` (width, height) bounds mouse coordinates; None uses MiniWoB's."""
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
    except (SyntaxError, ValueError) as e:  # ValueError: a NUL byte
        why = getattr(e, "msg", e)
        raise ActionError(f"not a single Python-style call ({why}): expected e.g. click('13')") from None
    except (RecursionError, MemoryError):
        raise ActionError("action is nested too deeply to parse") from None
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
    _check_signature(name, args, kwargs, viewport or DEFAULT_VIEWPORT)
    return Action(name, args, kwargs)


def _literal(node: ast.AST, action: str, depth: int = 0) -> object:
    """Only plain literals: no names, attributes, calls, operators or comprehensions; lists one level deep."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and type(node.operand.value) in (int, float):
        return -node.operand.value
    if isinstance(node, ast.List) and depth == 0:
        if len(node.elts) > MAX_LIST_ITEMS:
            raise ActionError(f"{action}(): a list of {len(node.elts)} items; at most {MAX_LIST_ITEMS} are accepted")
        return [_literal(e, action, depth + 1) for e in node.elts]
    raise ActionError(f"{action}(): arguments must be literal strings or numbers (lists of them), "
                      f"got {type(node).__name__} {ast.unparse(node)[:60]!r}")


def _check_signature(name: str, args: tuple, kwargs: tuple, viewport: tuple[int, int]) -> None:
    sig = inspect.signature(SIGNATURES[name])
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
        if annotation is bool and not isinstance(value, bool):
            raise ActionError(f"{name}(): {param} must be True or False, got {value!r}")
        if annotation == str | list[str] and not (isinstance(value, str) or
                                                  (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise ActionError(f"{name}(): {param} must be a quoted string or a list of them, got {value!r}")
        if annotation is float:
            _check_number(name, param, value, viewport)
        _check_choices(name, param, annotation, value)
        _check_length(name, param, value)


def _check_number(name: str, param: str, value, viewport: tuple[int, int]) -> None:
    """Finite and in range: an unbounded wait or coordinate would hold a browser session hostage."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ActionError(f"{name}(): {param} must be a number, got {value!r}")
    lo, hi, unit = _bounds(name, param, viewport)
    # ints compare exactly (math.isfinite(10**400) would raise OverflowError); floats must also be finite
    if not ((isinstance(value, int) or math.isfinite(value)) and lo <= value <= hi):
        raise ActionError(f"{name}(): {param} = {value!r} is out of range: expected a number in [{lo}, {hi}] {unit}")


def _bounds(name: str, param: str, viewport: tuple[int, int]) -> tuple[float, float, str]:
    if name == "noop":
        return 0, MAX_WAIT_MS, "(milliseconds)"
    if name == "scroll":
        return -MAX_SCROLL_PX, MAX_SCROLL_PX, "(pixels)"
    axis = _COORDINATES[param]
    return 0, viewport[axis], f"(pixels inside the {viewport[0]}x{viewport[1]} viewport)"


def _check_length(name: str, param: str, value) -> None:
    """Text whose cost grows per character (typing, key combinations) is bounded: it could stall a session."""
    if (name, param) == ("keyboard_type", "text") and len(value) > MAX_TYPED_CHARS:
        raise ActionError(f"{name}(): {param} is {len(value)} characters long; at most {MAX_TYPED_CHARS} are typed "
                          "(fill() or keyboard_insert_text() enter longer text at once)")
    if (name, param) in _KEY_PARAMS:
        keys = value.split("+")
        if len(value) > MAX_KEY_CHARS or len(keys) > MAX_KEYS + 1:  # '+' itself is a key: 'Shift++'
            raise ActionError(f"{name}(): {param} = {value[:40]!r} is out of range: expected at most {MAX_KEYS} "
                              f"keys joined by '+' (e.g. 'Control+a'), {MAX_KEY_CHARS} characters in all")


def _check_choices(name: str, param: str, annotation, value) -> None:
    """Literal[...] parameters (click's button, its modifiers) take only their listed values: a model that
    writes click('13', 'Click Me!') learns why, instead of BrowserGym failing inside the page."""
    if typing.get_origin(annotation) is list:
        if not isinstance(value, list):
            raise ActionError(f"{name}(): {param} must be a list, e.g. ['Shift'], got {value!r}")
        (annotation,) = typing.get_args(annotation) or (None,)
        values = value
    else:
        values = [value]
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        bad = [v for v in values if v not in choices]
        if bad:
            raise ActionError(f"{name}(): {param} must be one of {', '.join(map(repr, choices))}, got {bad[0]!r}")
