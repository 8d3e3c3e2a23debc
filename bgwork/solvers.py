"""Scripted solvers for easy MiniWoB tasks, reading only what the model sees (goal + axtree).

Used by the smoke test (a known-good episode per task), by the server's tests, and to make
demonstrations for a warm start. Each returns the whole action list from the first observation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"^\s*\[(?P<bid>[^\]]+)\] (?P<role>\w+) '(?P<name>(?:[^'\\]|\\.)*)'")
_QUOTED = re.compile(r'"([^"]*)"')
_ORDINALS = {"1st": 0, "2nd": 1, "3rd": 2, "4th": 3, "5th": 4}


@dataclass(frozen=True)
class Element:
    bid: str
    role: str
    name: str


def elements(axtree_txt: str) -> list[Element]:
    """Every line of the flattened tree that carries a [bid]."""
    found = (_LINE.match(line) for line in axtree_txt.splitlines())
    return [Element(m["bid"], m["role"], m["name"]) for m in found if m]


def _find(els: list[Element], role: str, name: str | None = None, nth: int = 0) -> Element:
    matches = [e for e in els if e.role == role and (name is None or e.name == name)]
    if len(matches) <= nth:
        raise LookupError(f"no {role} {name!r} (#{nth}) on the page")
    return matches[nth]


def _click(e: Element) -> str:
    return f"click({e.bid!r})"


def _fill(e: Element, text: str) -> str:
    return f"fill({e.bid!r}, {text!r})"


def _click_test(goal, els):
    return [_click(_find(els, "button"))]


def _click_test_2(goal, els):
    return [_click(_find(els, "button", goal.split("button ")[1].rstrip(".")))]


def _click_button(goal, els):
    return [_click(_find(els, "button", _QUOTED.findall(goal)[0]))]


def _click_button_sequence(goal, els):
    return [_click(_find(els, "button", "ONE")), _click(_find(els, "button", "TWO"))]


def _enter_text(goal, els):
    return [_fill(_find(els, "textbox"), _QUOTED.findall(goal)[0]), _click(_find(els, "button"))]


def _enter_text_2(goal, els):
    text = _QUOTED.findall(goal)[0]
    text = text.lower() if "lower case" in goal else text.upper()
    return [_fill(_find(els, "textbox"), text), _click(_find(els, "button"))]


def _focus_text(goal, els):
    return [_click(_find(els, "textbox"))]


def _focus_text_2(goal, els):
    nth = _ORDINALS[re.search(r"the (\w+) input", goal)[1]]
    return [_click(_find(els, "textbox", nth=nth))]


def _click_checkboxes(goal, els):
    wanted = re.match(r"Select (.*) and click Submit", goal)[1]
    names = [] if wanted == "nothing" else [n.strip() for n in re.split(r",| and ", wanted) if n.strip()]
    return [_click(_find(els, "checkbox", n)) for n in names] + [_click(_find(els, "button", "Submit"))]


def _click_option(goal, els):
    name = re.match(r"Select (.*) and click Submit", goal)[1]
    return [_click(_find(els, "radio", name)), _click(_find(els, "button", "Submit"))]


def _login_user(goal, els):
    user, password = _QUOTED.findall(goal)[:2]
    boxes = [e for e in els if e.role == "textbox"]
    return [_fill(boxes[0], user), _fill(boxes[1], password), _click(_find(els, "button"))]


def _enter_password(goal, els):
    password = _QUOTED.findall(goal)[0]
    boxes = [e for e in els if e.role == "textbox"]
    return [_fill(boxes[0], password), _fill(boxes[1], password), _click(_find(els, "button"))]


def _click_dialog(goal, els):
    return [_click(_find(els, "button", "Close"))]


def _click_tab(goal, els):
    return [_click(_find(els, "link", re.search(r"Tab #\d+", goal)[0]))]


SOLVERS = {
    "click-test": _click_test, "click-test-2": _click_test_2, "click-button": _click_button,
    "click-button-sequence": _click_button_sequence, "enter-text": _enter_text, "enter-text-2": _enter_text_2,
    "focus-text": _focus_text, "focus-text-2": _focus_text_2, "click-checkboxes": _click_checkboxes,
    "click-option": _click_option, "login-user": _login_user, "enter-password": _enter_password,
    "click-dialog": _click_dialog, "click-tab": _click_tab,
}


def solve(task: str, observation: dict) -> list[str] | None:
    """The action list that solves this episode, or None when no solver exists for the task."""
    solver = SOLVERS.get(task)
    return solver(observation["goal"], elements(observation["axtree_txt"])) if solver else None
