"""Hostile clients (issue #15): no action string, body, header or WebSocket message hangs a session, takes the
pool, or reaches ASGI as an uncaught exception; a step past its deadline costs its own session a relaunch
(503 session_lost), never the server. Real server, real Chromium."""

from __future__ import annotations

import json
import stat
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from bgwork.solvers import solve
from tests.conftest import browser_processes, running_server

pytestmark = pytest.mark.browser

DEADLINE = 30.0  # the server's default --step-deadline-s: no hostile string may come near it

# Action strings a model (or an attacker) may send. Each is answered 200: rejected unexecuted (InvalidAction),
# or executed within its bound. Resource attacks first: waits, coordinates, scrolls, typing, key combinations.
HOSTILE_ACTIONS = [
    "noop(1000000000)", "noop(1e308)", "noop(9e999)", "noop(-1e308)", "noop(10001)", "noop(wait_ms=10000.001)",
    "noop(1" + "0" * 400 + ")", "noop(0x" + "f" * 1000 + ")", "noop(True)", "noop(None)", "noop('1000')",
    "noop(1e-400)", "noop(-0.0)", "noop(nan)", "noop(float('inf'))",
    "mouse_click(1e308, -1e308)", "mouse_click(-0.0001, 5)", "mouse_move(333, 0)", "mouse_click(1j, 2)",
    "mouse_drag_and_drop(0, 0, 1e6, 1e6)", "mouse_down(1e400, 1)", "mouse_down(10, 10, 'right')",
    "mouse_up(10, 10, 'right')", "scroll(1e9, 0)", "scroll(-10001, 0)", "scroll(0, 10000)",
    "keyboard_type('" + "x" * 1980 + "')", "keyboard_type('" + "\\n" * 256 + "')", "keyboard_type('\\x1b[31m')",
    "keyboard_press('" + "a+" * 600 + "a')", "keyboard_press('Shift+Shift+Shift+Shift+Shift+a')",
    "press('13', 'Control+Shift+Alt+Meta+ArrowLeft')", "keyboard_down('" + "a" * 1000 + "')",
    "keyboard_down('Shift')", "keyboard_press('F5')", "keyboard_press('Control+w')", "keyboard_press('Alt+ArrowLeft')",
    "keyboard_press('Control+t')", "keyboard_press('')", "keyboard_insert_text('" + "\\u202e" * 300 + "')",
    "fill('13', '" + "x" * 1980 + "')", "fill('13', '\\x00\\x00')",
    # element ids and lists
    "click('13', button='middle')", "dblclick('13', modifiers=['Alt', 'Control', 'ControlOrMeta', 'Meta', 'Shift'])",
    "click('\" or 1=1 --')", "click('[bid]')", "click('" + "a" * 1990 + "')", "click('a1')", "click('13\\x00')",
    "hover('')", "select_option('13', " + repr(["x"] * 16) + ")", "select_option('13', [])",
    "drag_and_drop('13', '99999')", "click('13', modifiers=" + repr(["Shift"] * 17) + ")", "click(b'13')",
    "send_msg_to_user('" + "x" * 1980 + "')", "report_infeasible('because')", "clear('13')", "focus('13')",
    # shapes of text
    "click(" + "'1'," * 490 + ")", "click('13', button='left', button='right')", "\ufeffclick('13')",
    "click('13'" + ")" * 1000, "click('" + "\U0001F600" * 990 + "')", "click('\udc80')", "\x00", " " * 1999,
    "click('13')\x00", "{\"action_str\": \"click('13')\"}", "goto('file:///etc/passwd')",
    "(lambda: 0)()", "[click('13')] * 10**9", "'x' * 10**10",
]


def _json(body) -> dict:
    """httpx kwargs for a JSON body written with ASCII escapes, so lone surrogates (valid JSON) go out as sent."""
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def _log_is_clean(server) -> None:
    log = open(server.log_path, errors="replace").read()
    assert "Exception in ASGI application" not in log, log[-3000:]
    assert "internal error on" not in log, log[-3000:]  # our own 500 handler's line


def test_hostile_suite_is_large_enough():
    assert len(HOSTILE_ACTIONS) >= 50 and len(set(HOSTILE_ACTIONS)) == len(HOSTILE_ACTIONS)


def test_cli_deadline_default_is_the_sessions_own():
    from envserver import __main__ as cli
    from envserver.session import SessionSettings

    assert cli.STEP_DEADLINE == SessionSettings().step_deadline == DEADLINE
    assert cli.parse_args([]).step_deadline_s == DEADLINE and cli.parse_args([]).evict_idle_s == 60.0


def test_hostile_actions_never_5xx_nor_stall_and_the_session_stays_usable(envserver):
    with httpx.Client(base_url=envserver.url, timeout=DEADLINE + 30) as c:
        sid = c.post("/reset", json={"task": "enter-text", "seed": 3}).json()["session_id"]
        try:
            for text in HOSTILE_ACTIONS:
                started = time.monotonic()
                r = c.post("/step", **_json({"session_id": sid, "action": text}))
                took = time.monotonic() - started
                assert r.status_code == 200, (text[:80], r.status_code, r.text[:300])
                assert took < DEADLINE / 2, (text[:80], took)
                if r.json()["done"]:  # report_infeasible ends the episode
                    c.post("/reset", json={"session_id": sid, "task": "enter-text", "seed": 3}).raise_for_status()
            # a key held down by the last episode does not leak into the next: enter-text types exactly
            out = c.post("/reset", json={"session_id": sid, "task": "enter-text", "seed": 4}).json()
            fill, submit = solve("enter-text", out["observation"])
            bid, text = fill.split("'")[1], fill.split("'")[3]
            for action in (f"click('{bid}')", f"keyboard_type({text!r})", submit):
                step = c.post("/step", json={"session_id": sid, "action": action}).json()
            assert step["reward"] == 1.0, step["observation"]
        finally:
            c.post("/close", json={"session_id": sid})
    _log_is_clean(envserver)


def test_hostile_actions_on_a_replay_server(small_replay):
    """The browser-free backend answers the same strings through the same grammar: 200, never 5xx."""
    with httpx.Client(base_url=small_replay.url, timeout=60) as c:
        sid = c.post("/reset", json={"seed": 0}).json()["session_id"]
        try:
            for text in HOSTILE_ACTIONS:
                r = c.post("/step", **_json({"session_id": sid, "action": text}))
                assert r.status_code == 200, (text[:80], r.status_code, r.text[:300])
                if r.json()["done"]:
                    c.post("/reset", json={"session_id": sid, "seed": 0}).raise_for_status()
            assert c.post("/step", json={"session_id": sid, "action": "click('13')"}).json()["reward"] == 1.0
        finally:
            c.post("/close", json={"session_id": sid})
    _log_is_clean(small_replay)


def _requests(sid: str) -> list[tuple[str, str, dict]]:
    """(method, path, httpx kwargs): malformed bodies, parameters, cookies and methods."""
    big = b"x" * (10 * 1024 * 1024)
    return [
        ("POST", "/reset", {"content": b"[" * 30000 + b"]" * 30000}),  # nested past the JSON parser's recursion limit
        ("POST", "/reset", {"content": b'{"seed": ' + b"1" * 5000 + b"}"}),  # over Python's int-digit limit
        ("POST", "/reset", {"content": b'{"seed": NaN}'}), ("POST", "/reset", {"content": b'{"seed": 1e999}'}),
        ("POST", "/reset", _json({"task": "\ud800"})), ("POST", "/reset", _json({"episode_id": "\udfff"})),
        ("POST", "/reset", {"json": {"task": "x" * 60000}}), ("POST", "/reset", {"json": {"session_id": "\x00"}}),
        ("POST", "/reset", _json({"\ud800": 1})), ("POST", "/reset", {"content": b"\xff\xfe\x00"}),
        ("POST", "/reset", {"content": b'{"task": "click-test"}', "headers": {"content-type": "text/plain"}}),
        ("POST", "/reset", {"content": iter([big])}),  # chunked, no Content-Length: refused at the limit
        ("POST", "/step", {"json": {"session_id": sid, "action": ["click('13')"]}}),
        ("POST", "/step", {"json": {"session_id": sid, "action": {"no_action_str": 1}}}),
        ("POST", "/step", {"json": {"session_id": sid, "action": None}}),
        ("POST", "/step", {"json": {"session_id": sid, "action": "noop()", "timeout_s": "soon"}}),
        ("POST", "/step", {"json": {"session_id": "y" * 10000, "action": "noop()"}}),
        ("POST", "/step", _json({"session_id": "\ud800", "action": "noop()"})),
        ("POST", "/step", {"json": {"action": "noop()"}, "headers": {"cookie": "envserver_session=" + "z" * 500}}),
        ("POST", "/step", {"json": {"action": "noop()"}, "headers": {"cookie": "envserver_session=\"\\\x7f"}}),
        ("POST", "/step", {"json": {"session_id": sid, "action": "noop(0)", "include_screenshot": "yes please"}}),
        ("POST", "/close", {"json": {"session_id": ["a"]}}), ("POST", "/close", {"json": {}}),
        ("GET", "/state?session_id=%ED%A0%80%ff", {}), ("GET", "/state", {"params": {"session_id": "q" * 99}}),
        ("GET", "/state", {"headers": {"cookie": "envserver_session=%ff%fe"}}),
        ("TRACE", "/step", {}), ("PUT", "/reset", {}), ("DELETE", "/close", {}), ("GET", "/../../etc/passwd", {}),
        ("POST", "/health", {}),  # (/mcp answers malformed JSON-RPC in JSON-RPC: test_envserver_openenv.py)
    ]


@pytest.fixture(params=["live", "replay"])
def server(request):
    return request.getfixturevalue("envserver" if request.param == "live" else "small_replay")


def test_malformed_requests_get_4xx_never_5xx(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        sid = c.post("/reset", json={}).json()["session_id"]
        try:
            for method, path, kwargs in _requests(sid):
                r = c.request(method, path, **kwargs)
                assert 400 <= r.status_code < 500, (method, path, str(kwargs)[:100], r.status_code, r.text[:300])
                assert r.json()["error"]["code"], r.text[:300]
                if r.status_code == 405:
                    assert r.headers["allow"], (method, path)
            assert c.post("/step", json={"session_id": sid, "action": "click('13')"}).json()["reward"] == 1.0
        finally:
            c.post("/close", json={"session_id": sid})
    _log_is_clean(server)


def test_a_flood_on_one_session_is_refused_not_queued(envserver):
    """30 concurrent steps on one session: one at a time plays, the rest get 409 session_busy at once."""
    with httpx.Client(base_url=envserver.url, timeout=60) as c:
        sid = c.post("/reset", json={}).json()["session_id"]
        try:
            def step(_):
                return c.post("/step", json={"session_id": sid, "action": "noop(2000)"}).status_code

            with ThreadPoolExecutor(30) as pool:
                codes = list(pool.map(step, range(30)))
            assert set(codes) <= {200, 409} and codes.count(200) >= 1, codes
            assert c.post("/step", json={"session_id": sid, "action": "click('13')"}).json()["reward"] == 1.0
        finally:
            c.post("/close", json={"session_id": sid})
    _log_is_clean(envserver)


def test_closing_a_session_mid_step_answers_that_step_404(envserver):
    with httpx.Client(base_url=envserver.url, timeout=60) as c:
        sid = c.post("/reset", json={}).json()["session_id"]
        with ThreadPoolExecutor(1) as pool:
            step = pool.submit(c.post, "/step", json={"session_id": sid, "action": "noop(3000)"})
            time.sleep(1)
            assert c.post("/close", json={"session_id": sid}).json() == {"ok": True}
            r = step.result()
        assert r.status_code in (200, 404), r.text  # it finished first, or learns its session was closed
    _log_is_clean(envserver)


def test_hostile_websocket_messages_get_error_messages(envserver):
    url = envserver.url.replace("http://", "ws://") + "/ws"
    cases = [
        (b"\x00\xff binary", "INVALID_JSON"), ("{not json", "INVALID_JSON"), ("[" * 30000, "INVALID_JSON"),
        ("[]", "VALIDATION_ERROR"), ('{"type": "reboot"}', "UNKNOWN_TYPE"), ('{"type": ["step"]}', "UNKNOWN_TYPE"),
        ('{"type": "step", "data": {"action_str": "click(\'13\')"}}', "EXECUTION_ERROR"),  # before any reset
        ('{"type": "state"}', "EXECUTION_ERROR"), ('{"type": "reset", "data": [1]}', "VALIDATION_ERROR"),
        ('{"type": "reset", "data": {"task": "no-such-task"}}', "VALIDATION_ERROR"),
        ('{"type": "reset", "data": {"session_id": "someone-elses"}}', "VALIDATION_ERROR"),
        ('{"type": "reset", "data": {"colour": "red"}}', "VALIDATION_ERROR"),
    ]
    with ws_connect(url, max_size=2**24) as ws:
        for message, code in cases:
            ws.send(message)
            reply = json.loads(ws.recv(timeout=60))
            assert reply["type"] == "error" and reply["data"]["code"] == code, (str(message)[:60], reply)
        ws.send('{"type": "reset", "data": {"seed": 1}}')
        assert json.loads(ws.recv(timeout=60))["data"]["observation"]["goal"] == "Click the button."
        ws.send('{"type": "step", "data": {"action_str": "noop(9e999)"}}')
        out = json.loads(ws.recv(timeout=60))["data"]
        assert "out of range" in out["observation"]["last_action_error"]
    with ws_connect(url, max_size=2**24) as ws:  # a message over the body limit ends the connection (1009)
        ws.send('{"type": "reset"}')
        ws.recv(timeout=60)
        ws.send("x" * 70000)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=60)
        assert closed.value.rcvd.code == 1009
    # leaving without a close message, mid-episode, still closes the session
    deadline = time.monotonic() + 30
    while httpx.get(envserver.url + "/health").json()["active_sessions"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(envserver.url + "/health").json()["active_sessions"] == 0
    _log_is_clean(envserver)


# ---- the step deadline ------------------------------------------------------------------------------------

def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith("Threads:")))


def test_steps_past_the_deadline_cost_only_their_session_a_relaunch():
    """Every session of the pool runs a step longer than the deadline at once (noop(9000), deadline 3 s): each
    answers 503 session_lost at the deadline, the old browsers and threads are gone, and each session plays again."""
    with running_server(2, "--step-deadline-s", "3") as server, httpx.Client(base_url=server.url, timeout=60) as c:
        sids = [c.post("/reset", json={"seed": i}).json()["session_id"] for i in range(2)]
        chromium_before = {p.pid for p in browser_processes(server.pid)}

        def play(action):
            def send(sid):
                started = time.monotonic()
                r = c.post("/step", json={"session_id": sid, "action": action})
                return r, time.monotonic() - started
            with ThreadPoolExecutor(len(sids)) as pool:
                return list(pool.map(send, sids))

        play("noop(0)")  # the server's request threads exist now, so that only session threads can change
        threads_before = _threads(server.pid)
        answers = play("noop(9000)")
        for r, took in answers:
            assert r.status_code == 503 and r.json()["error"]["code"] == "session_lost", r.text
            assert "deadline" in r.json()["error"]["message"] and took < 3 + 5, took
        # torn down, all of it: Chromium at once, then each old thread stops its driver and exits
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (chromium_before & {p.pid for p in browser_processes(server.pid)}
                                               or _threads(server.pid) > threads_before):
            time.sleep(0.2)
        assert not chromium_before & {p.pid for p in browser_processes(server.pid)}
        assert _threads(server.pid) <= threads_before  # new generations took the old ones' places
        for sid in sids:
            out = c.post("/reset", json={"session_id": sid})
            assert out.status_code == 200, out.text
            assert c.post("/step", json={"session_id": sid, "action": "click('13')"}).json()["reward"] == 1.0
        metrics = c.get("/metrics").text
        assert "envserver_sessions_lost_total 2.0" in metrics
    _log_is_clean(server)


def test_a_browser_that_cannot_relaunch_answers_503_never_500(tmp_path, monkeypatch):
    """Chromium refuses to start (a wrapper that fails while a flag file exists): reset answers 503 session_lost,
    and the same session recovers once Chromium starts again."""
    from envserver.browser import chromium_path

    flag = tmp_path / "refuse"
    wrapper = tmp_path / "chromium"
    wrapper.write_text(f"#!/bin/sh\n[ -e {flag} ] && exit 1\nexec {chromium_path()} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("BGWORK_CHROMIUM", str(wrapper))  # the server inherits it
    with running_server(2, "--step-deadline-s", "2") as server, httpx.Client(base_url=server.url, timeout=60) as c:
        sid = c.post("/reset", json={}).json()["session_id"]
        flag.touch()
        assert c.post("/step", json={"session_id": sid, "action": "noop(5000)"}).status_code == 503
        for body in ({"session_id": sid}, {}):  # the lost session, and a brand-new one (closed again, not kept)
            r = c.post("/reset", json=body)
            assert r.status_code == 503 and r.json()["error"]["code"] == "session_lost", r.text
        assert c.get("/health").json()["active_sessions"] == 1
        flag.unlink()
        assert c.post("/reset", json={"session_id": sid}).status_code == 200
        assert c.post("/step", json={"session_id": sid, "action": "click('13')"}).json()["reward"] == 1.0
    _log_is_clean(server)


# ---- sessions nobody closes --------------------------------------------------------------------------------

def test_forgotten_sessions_never_lock_the_pool():
    """Two forgotten sessions fill a 2-session pool; a new client gets 429 only until they have idled
    --evict-idle-s, then the least recently used one is evicted and says so."""
    with running_server(2, "--evict-idle-s", "3") as server, httpx.Client(base_url=server.url, timeout=60) as c:
        first, second = (c.post("/reset", json={}).json()["session_id"] for _ in range(2))
        for sid in (first, second):  # both used just now; `first` is the least recently used
            c.post("/step", json={"session_id": sid, "action": "noop(0)"}).raise_for_status()
        full = c.post("/reset", json={})
        assert full.status_code == 429 and full.json()["error"]["code"] == "pool_full", full.text
        time.sleep(3.5)
        fresh = c.post("/reset", json={})
        assert fresh.status_code == 200, fresh.text
        gone = c.post("/step", json={"session_id": first, "action": "noop(0)"})
        assert gone.status_code == 404 and "evicted" in gone.json()["error"]["message"]
        assert c.post("/step", json={"session_id": second, "action": "noop(0)"}).status_code == 200
        assert "envserver_sessions_evicted_total 1.0" in c.get("/metrics").text
    _log_is_clean(server)
