"""Model output -> one BrowserGym action string, or a format error the model is shown next turn.

The FIRST call of a known action in the output is taken (models like to add prose or code fences). An
unquoted element id, `click(13)`, is repaired to `click('13')` when `repair_unquoted_bids` is on; the repair
still counts as a format error so the logged rate shows what the model really writes. The call is then
validated by the env server's own grammar (`envserver.grammar`, which needs no BrowserGym), so nothing is
sent that the server rejects for syntax.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

from envserver.grammar import DEFAULT_ACTIONS, SIGNATURES, ActionError, parse_action

_CALL_START = re.compile(r"\b(" + "|".join(sorted(DEFAULT_ACTIONS, key=len, reverse=True)) + r")\s*\(")


@dataclass(frozen=True)
class ParsedAction:
    action: str | None  # canonical action to send, None when the output holds no valid action
    error: str | None  # why the output was not (exactly) well-formed; shown to the model next turn
    repaired: bool = False

    @property
    def format_error(self) -> bool:
        return self.action is None or self.repaired


def parse_model_output(text: str, repair_unquoted_bids: bool = True) -> ParsedAction:
    call = first_call(text)
    if call is None:
        if _CALL_START.search(text):
            return ParsedAction(None, "unfinished action: close the call, e.g. click('13')")
        return ParsedAction(None, "no action found: answer with one call such as click('13')")
    try:
        return ParsedAction(parse_action(call).to_code(), None)
    except ActionError as e:
        error = str(e)
    if repair_unquoted_bids:
        fixed = quote_bids(call)
        if fixed != call:
            try:
                return ParsedAction(parse_action(fixed).to_code(), error, repaired=True)
            except ActionError:
                pass
    return ParsedAction(None, error)


def first_call(text: str) -> str | None:
    """The text of the first `action(...)` call, up to its matching parenthesis (quotes respected)."""
    m = _CALL_START.search(text)
    if m is None:
        return None
    depth, quote, i = 0, None, m.end() - 1
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return text[m.start(): i + 1]
        i += 1
    return None  # unclosed: the model ran out of tokens mid-call


def _bid_positions() -> dict[str, list[int]]:
    """Action name -> positions of its element-id parameters (from BrowserGym's real signatures)."""
    out = {}
    for name in DEFAULT_ACTIONS:
        params = list(inspect.signature(SIGNATURES[name]).parameters)
        out[name] = [i for i, p in enumerate(params) if "bid" in p]
    return out


_BID_POSITIONS = _bid_positions()
_ARG = re.compile(r"\s*(-?\d+)\s*$")


def quote_bids(call: str) -> str:
    """`click(13)` -> `click('13')`: quote bare integers in element-id positions only."""
    name = call[: call.index("(")].strip()
    positions = _BID_POSITIONS.get(name, [])
    if not positions:
        return call
    args = _split_args(call[call.index("(") + 1: -1])
    for i in positions:
        if i < len(args) and _ARG.fullmatch(args[i]):
            args[i] = repr(args[i].strip())
    return f"{name}({', '.join(a.strip() for a in args)})"


def _split_args(inner: str) -> list[str]:
    """Split at top-level commas (not inside quotes or brackets)."""
    parts, depth, quote, start = [], 0, None, 0
    for i, c in enumerate(inner):
        if quote:
            if c == quote and inner[i - 1] != "\\":
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return [p for p in parts if p.strip()] if inner.strip() else []
