"""Untrusted action strings: parsed, never evaluated; hostile ones never reach the browser or the host."""

from __future__ import annotations

import httpx
import pytest

from bgwork.solvers import solve
from envserver.actions import action_mapping
from envserver.grammar import DEFAULT_ACTIONS, MAX_ACTION_CHARS, SIGNATURES, ActionError, parse_action


@pytest.mark.parametrize("text, canonical", [
    ("click('13')", "click('13')"),
    ('click("13")', "click('13')"),
    ("  fill('4', \"it's\")  ", "fill('4', \"it's\")"),
    ("scroll(0, -200.5)", "scroll(0, -200.5)"),
    ("click('a', button='right', modifiers=['Shift'])", "click('a', button='right', modifiers=['Shift'])"),
    ("noop()", "noop()"),
    ("send_msg_to_user('done')", "send_msg_to_user('done')"),
])
def test_valid_actions_are_reserialised(text, canonical):
    assert parse_action(text).to_code() == canonical


@pytest.mark.parametrize("text, fragment", [
    ("click(13)", "must be a quoted string, e.g. click('13')"),
    ("fill(4, 'x')", "must be a quoted string"),
    ("goto('file:///etc/passwd')", "unknown action 'goto'"),
    ("upload_file('3', '/etc/passwd')", "unknown action"),
    ("click('1'); click('2')", "not a single"),
    ("click('1')\nclick('2')", "not a single"),
    ("", "empty action"),
    ("click", "exactly one call"),
    ("click(x)", "literal"),
    ("click('1' + '3')", "literal"),
    ("click(*['13'])", "*args"),
    ("click(**{'bid': '13'})", "*args"),
    ("click('13', colour='red')", "unexpected keyword"),
    ("click()", "missing a required argument"),
    ("scroll('up', 3)", "must be a number"),
    ("fill('4', 5)", "must be a quoted string"),
    ("click('13', 'Click Me!')", "button must be one of 'left', 'middle', 'right', got 'Click Me!'"),
    ("click('13', modifiers=['Shift', 'Hyper'])", "modifiers must be one of"),
    ("x" * (MAX_ACTION_CHARS + 1), "at most"),
    ("click('\udc80')", "not valid UTF-8"),
])
def test_rejected_actions_say_why(text, fragment):
    with pytest.raises(ActionError, match=None) as info:
        parse_action(text)
    assert fragment in str(info.value)


def test_grammar_signatures_are_browsergyms_own():
    """envserver.grammar writes BrowserGym's signatures out so the trainer and the replay need no BrowserGym."""
    import inspect

    from browsergym.core.action import functions as bg_functions

    for name, fn in SIGNATURES.items():
        assert str(inspect.signature(fn)) == str(inspect.signature(getattr(bg_functions, name))), name


def test_grammar_imports_no_browser_stack():
    import subprocess
    import sys

    code = ("import sys, envserver.grammar, bgwork.actions, envserver.replay, envserver.app; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('browsergym', 'playwright', 'gymnasium')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("text, fragment", [
    ("noop(1000000000)", "wait_ms = 1000000000 is out of range: expected a number in [0, 10000]"),
    ("noop(-1)", "out of range"),
    ("noop(float('nan'))", "literal"),
    ("noop(1e999)", "out of range"),
    ("mouse_click(1e308, -1e308)", "x = 1e+308 is out of range"),
    ("noop(1" + "0" * 400 + ")", "is out of range"),  # an int too large for a float: no OverflowError
    ("scroll(-0x" + "f" * 500 + ", 0)", "delta_x = -"),
    ("mouse_click(10, 500)", "y = 500 is out of range: expected a number in [0, 214]"),
    ("mouse_drag_and_drop(0, 0, 333, 0)", "to_x = 333 is out of range"),
    ("scroll(0, 1e9)", "delta_y = 1000000000.0 is out of range"),
    ("click('1', modifiers='Shift')", "modifiers must be a list"),
    ("click('1', modifiers=[" + ", ".join(["'Shift'"] * 17) + "])", "at most 16"),
    ("click('1', modifiers=[['Shift']])", "literal"),
    ("fill('1', 'x', enable_autocomplete_menu=1)", "must be True or False"),
    ("select_option('1', 3)", "quoted string or a list"),
    ("keyboard_type('" + "x" * 257 + "')", "257 characters long; at most 256 are typed"),
    ("keyboard_press('" + "a+" * 7 + "a')", "at most 6 keys joined by '+'"),
    ("press('1', 'Shift+Shift+Shift+Shift+Shift+Shift+Shift+a')", "at most 6 keys"),
    ("keyboard_down('" + "a" * 65 + "')", "64 characters in all"),
])
def test_numbers_lists_and_typing_are_bounded(text, fragment):
    with pytest.raises(ActionError) as info:
        parse_action(text)
    assert fragment in str(info.value)


def test_typing_and_key_bounds_leave_real_use_alone():
    assert parse_action("keyboard_type('" + "x" * 256 + "')")
    assert parse_action("fill('4', '" + "x" * 1900 + "')")  # one insertion, however long: not bounded by 256
    for combo in ("Enter", "Control+a", "ControlOrMeta+Shift+ArrowLeft", "Shift++", "Control+Alt+Shift+Meta+a"):
        assert parse_action(f"keyboard_press({combo!r})").args == (combo,)


def test_coordinates_are_bounded_by_the_given_viewport():
    assert parse_action("mouse_click(900, 500)", viewport=(1280, 720)).args == (900, 500)
    with pytest.raises(ActionError, match=r"\[0, 720\]"):
        parse_action("mouse_click(10, 800)", viewport=(1280, 720))


def test_action_key_fills_in_defaults():
    assert parse_action("click('13')").key() == parse_action("click('13', button='left', modifiers=[])").key()
    assert parse_action("click('13')").key() != parse_action("click('13', 'right')").key()
    assert parse_action("drag_and_drop('1', '2')").bids() == ["1", "2"]


def hostile(marker: str) -> list[str]:
    """Each would create `marker` if any part of it were executed as Python or shell."""
    q = repr(marker)
    return [
        f"__import__('os').system('touch {marker}')",
        f"open({q}, 'w')",
        f"click(open({q}, 'w'))",
        f"click(__import__('pathlib').Path({q}).touch())",
        f"click('1') or __import__('os').system('touch {marker}')",
        f"import os; os.system('touch {marker}')",
        f"exec(\"open({q}, 'w')\")",
        f"eval(\"open({q}, 'w')\")",
        f"click([open({q}, 'w') for _ in '1'])",
        f"click(lambda: open({q}, 'w'))",
        "click((1).__class__.__bases__[0].__subclasses__())",
        f"page.evaluate(\"require('fs').writeFileSync('{marker}', '')\")",
        f"click('13'); open({q}, 'w')",
        f"click(f'{{open({q}, \"w\")}}')",
        "keyboard_type(__builtins__)",
        f"noop(wait_ms=__import__('os').system('touch {marker}'))",
        "click(" * 500 + ")" * 500,  # nested calls deep enough to trouble a recursive parser
        "A" * 100_000,
    ]


def test_hostile_strings_are_rejected_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    for text in hostile(str(marker)):
        with pytest.raises(ActionError):
            parse_action(text)
    assert not marker.exists()


def test_hostile_strings_over_http_never_run(envserver, client, tmp_path):
    marker = tmp_path / "pwned"
    sid = client.reset("click-test", seed=0)["session_id"]
    try:
        for text in hostile(str(marker)):
            r = httpx.post(f"{envserver.url}/step", json={"session_id": sid, "action": text}, timeout=60)
            if r.status_code == 413:  # the 100k-character body is refused before parsing
                continue
            assert r.status_code == 200, (text[:80], r.text[:300])
            body = r.json()
            assert body["reward"] == 0.0 and body["done"] is False
            assert body["observation"]["last_action_error"].startswith("InvalidAction:"), text[:80]
            assert body["info"]["action_valid"] is False
        # raw bytes that are not UTF-8 at all: a malformed body, not a server error
        body = b'{"session_id": "' + sid.encode() + b'", "action": "\xff\xfe"}'
        r = httpx.post(f"{envserver.url}/step", content=body,
                       headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 422, r.text
        # the session still works afterwards, and nothing ran on the host
        assert client.step(sid, "click('13')")["reward"] == 1.0
    finally:
        client.close(sid)
    assert not marker.exists()


def test_unquoted_bid_error_tells_the_caller(client):
    sid = client.reset("click-test", seed=0)["session_id"]
    try:
        out = client.step(sid, "click(13)")
        assert out["reward"] == 0.0 and not out["done"]
        assert "bid must be a quoted string, e.g. click('13')" in out["observation"]["last_action_error"]
    finally:
        client.close(sid)


def test_playwright_stack_patch_keeps_what_playwright_reads():
    from playwright._impl import _connection

    from envserver import pwpatch

    pwpatch.apply()
    frames = _connection.inspect.stack()
    here = frames[0]
    assert here.filename == __file__ and here.function == "test_playwright_stack_patch_keeps_what_playwright_reads"
    assert here.lineno > 0 and here[0].f_code.co_name == here.function
    parsed = _connection._extract_stack_trace_information_from_stack(frames, is_internal=False)
    assert parsed["frames"][0]["file"] == __file__


def test_every_accepted_action_is_executable_with_the_chosen_timeout():
    code = action_mapping(1500)("keyboard_press('Tab')")
    assert "timeout=500" not in code and code.count("timeout=1500") >= 10
    for name in DEFAULT_ACTIONS:  # BrowserEnv's default mapping lacked mouse_* and keyboard_*
        assert f"def {name}(" in code, name
    assert code.rstrip().endswith("keyboard_press('Tab')")


def test_keyboard_and_mouse_actions_run_in_the_page(client):
    out = client.reset("enter-text", seed=5)
    sid = out["session_id"]
    try:
        fill, submit = solve("enter-text", out["observation"])
        bid, text = parse_action(fill).args
        for action in (f"click({bid!r})", "keyboard_press('End')", f"keyboard_type({text!r})",
                       "mouse_move(5, 5)", "mouse_click(1, 1)"):
            step = client.step(sid, action)
            assert step["observation"]["last_action_error"] == "", (action, step["observation"])
        assert client.step(sid, submit)["reward"] == 1.0  # the typed text is what the task checks
    finally:
        client.close(sid)
