"""The HTTP contract of envserver against a real server and real Chromium."""

from __future__ import annotations

import base64

import httpx
import pytest

from bgwork.envclient import EnvError
from bgwork.solvers import solve
from tests.conftest import browser_processes, running_server

REQUIRED_SOLVED = ["click-test", "click-button", "enter-text", "focus-text", "click-checkboxes", "login-user"]


def test_health_and_tasks(envserver, client):
    health = client.health()
    assert health["status"] == "healthy" and health["max_sessions"] == 4
    assert health["task_count"] == 125 and "Chromium" in health["browser"]
    tasks = client.tasks()
    assert len(tasks) == 125 and {"click-test", "login-user", "book-flight"} <= set(tasks)


def test_observation_has_goal_and_page(client):
    out = client.reset("click-test", seed=3)
    try:
        obs = out["observation"]
        assert set(obs) == {"goal", "text", "axtree_txt", "url", "last_action", "last_action_error", "elapsed"}
        assert obs["text"] == obs["axtree_txt"]  # the page, under the name the original clients read (#7)
        assert obs["goal"] == "Click the button."
        assert "[13] button 'Click Me!'" in obs["axtree_txt"]
        assert "InlineTextBox" not in obs["axtree_txt"]  # Chromium >= 156 noise filtered
        assert out["info"]["task"] == "click-test" and out["info"]["seed"] == 3
    finally:
        client.close(out["session_id"])


@pytest.mark.parametrize("task", REQUIRED_SOLVED)
def test_scripted_solver_reaches_reward_one(client, task):
    out = client.reset(task, seed=11)
    sid = out["session_id"]
    try:
        for action in solve(task, out["observation"]):
            step = client.step(sid, action)
            assert step["observation"]["last_action_error"] == "", (action, step["observation"])
        assert step["done"] is True and step["reward"] == 1.0
    finally:
        client.close(sid)


def test_reset_in_place_keeps_the_browser_and_can_switch_task(envserver, client):
    sid = client.reset("click-test", seed=1)["session_id"]
    try:
        before = {p.pid for p in browser_processes(envserver.pid)}
        again = client.reset("enter-text", seed=2, session_id=sid)
        assert again["session_id"] == sid and again["info"]["task"] == "enter-text"
        assert "textbox" in again["observation"]["axtree_txt"]
        assert {p.pid for p in browser_processes(envserver.pid)} == before  # nothing relaunched
    finally:
        client.close(sid)


def test_screenshot_only_on_request(client):
    out = client.reset("click-test", seed=0)
    sid = out["session_id"]
    try:
        assert "screenshot" not in out["observation"]
        shot = client.step(sid, "noop(wait_ms=0)", include_screenshot=True)["observation"]["screenshot"]
        assert base64.b64decode(shot)[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        client.close(sid)


def test_client_mistakes_get_4xx_with_a_reason(envserver, client):
    url = envserver.url
    sid = client.reset("click-test")["session_id"]
    client.close(sid)
    cases = [
        ("/step", {"session_id": "nope", "action": "noop()"}, 404, "unknown_session"),
        ("/step", {"session_id": sid, "action": "noop()"}, 404, "unknown_session"),  # closed ids stay dead
        ("/reset", {"session_id": sid}, 404, "unknown_session"),
        ("/close", {"session_id": sid}, 404, "unknown_session"),
        ("/reset", {"task": "clik-test"}, 400, "unknown_task"),
        ("/reset", {"seed": "x"}, 422, "invalid_request"),
        ("/reset", {"task": "click-test", "colour": 1}, 422, "invalid_request"),
        ("/step", {"action": "noop()"}, 409, "no_session"),  # no session_id and no envserver_session cookie
        ("/step", {"session_id": "x", "action": 13}, 422, "invalid_request"),
        ("/step", {"session_id": "x", "action": "a" * 70_000}, 413, "body_too_large"),
    ]
    for path, body, status, code in cases:
        r = httpx.post(url + path, json=body, timeout=30)
        shown = body if len(str(body)) < 200 else "..."
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (path, shown, r.text[:300])
    assert "was closed" in httpx.post(url + "/step", json=cases[1][1]).json()["error"]["message"]
    assert "click-test" in httpx.post(url + "/reset", json={"task": "clik-test"}).json()["error"]["suggestions"]
    r = httpx.post(url + "/step", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


@pytest.mark.browser
def test_pool_full_is_429_and_frees_on_close():
    with running_server(1) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        first = http.post("/reset", json={"task": "click-test"}).json()["session_id"]
        r = http.post("/reset", json={"task": "click-test"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "pool_full"
        assert http.post("/close", json={"session_id": first}).json() == {"ok": True}
        assert http.post("/reset", json={"task": "click-test"}).status_code == 200


def test_metrics_are_prometheus_text(envserver, client):
    sid = client.reset("click-test")["session_id"]
    client.step(sid, "click(13)")
    client.close(sid)
    text = httpx.get(envserver.url + "/metrics").text
    for name in ("envserver_sessions_active", "envserver_resets_total", "envserver_steps_total",
                 'envserver_action_errors_total{kind="invalid"}', "envserver_request_seconds_bucket",
                 "envserver_browser_seconds_bucket"):
        assert name in text, name


def test_unknown_session_raises_typed_client_error(client):
    with pytest.raises(EnvError) as info:
        client.step("does-not-exist", "noop()")
    assert info.value.status == 404 and info.value.code == "unknown_session"
