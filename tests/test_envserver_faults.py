"""Faults: dead browsers, idle sessions, auth, and sessions that open/close forever without leaking."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from bgwork.envclient import EnvClient, SessionLost
from bgwork.solvers import solve
from tests.conftest import browser_processes, running_server


def chromium_of(session_id: str) -> psutil.Process:
    """The main Chromium process of a session (tagged by its launch flag), not a renderer."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if f"--bgwork-session={session_id}" in cmd and not any(a.startswith("--type=") for a in cmd):
            return p
    raise LookupError(session_id)


def test_killed_browser_answers_session_lost_then_reset_recovers(envserver, client):
    sid = client.reset("click-test", seed=1)["session_id"]
    try:
        chromium_of(sid).send_signal(signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(SessionLost) as info:
            client.step(sid, "click('13')")
        assert info.value.status == 503 and info.value.code == "session_lost"
        with pytest.raises(SessionLost):  # stays lost (never a reward of 0) until reset
            client.step(sid, "click('13')")
        out = client.reset("click-test", seed=2, session_id=sid)  # same id recovers with a fresh browser
        assert client.step(sid, solve("click-test", out["observation"])[0])["reward"] == 1.0
    finally:
        client.close(sid)
    other = client.reset("click-test")["session_id"]  # and the server as a whole is fine
    client.close(other)


@pytest.mark.browser
def test_idle_sessions_are_reaped():
    with running_server(2, "--idle-timeout", "1") as server, EnvClient(server.url) as c:
        sid = c.reset("click-test")["session_id"]
        deadline = time.monotonic() + 30
        while c.health()["active_sessions"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert c.health()["active_sessions"] == 0
        with pytest.raises(Exception) as info:
            c.step(sid, "noop()")
        assert info.value.status == 404
        assert "envserver_sessions_reaped_total 1.0" in httpx.get(server.url + "/metrics").text
        # the session left the pool before its browser closes; closing takes a moment on a busy box
        while (alive := live_browsers(server.pid)) and time.monotonic() < deadline + 30:
            time.sleep(0.5)
        assert not alive


def live_browsers(server_pid: int) -> list[psutil.Process]:
    out = []
    for p in browser_processes(server_pid):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_non_loopback_bind_requires_a_token():
    env = {k: v for k, v in os.environ.items() if k != "BGWORK_ENV_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "envserver", "--host", "0.0.0.0", "--port", "1"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "BGWORK_ENV_TOKEN" in out.stderr


@pytest.mark.browser
def test_token_is_checked_on_every_endpoint_but_health(monkeypatch):
    monkeypatch.setenv("BGWORK_ENV_TOKEN", "s3cret")
    with running_server(1) as server:
        url = server.url
        assert httpx.get(url + "/health").status_code == 200
        for method, path in [("GET", "/tasks"), ("GET", "/metrics"), ("POST", "/reset"), ("POST", "/step"),
                             ("POST", "/close"), ("GET", "/openapi.json")]:
            r = httpx.request(method, url + path, json={})
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
            r = httpx.request(method, url + path, json={}, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401, path
        with EnvClient(url) as c:  # the client reads the same variable
            sid = c.reset("click-test")["session_id"]
            c.close(sid)
        ws_url = url.replace("http://", "ws://") + "/ws"  # the WebSocket too
        with pytest.raises(InvalidStatus):
            ws_connect(ws_url).close()
        with ws_connect(ws_url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            ws.send('{"type": "state"}')
            assert "no episode yet" in ws.recv(timeout=30)


@pytest.mark.browser
@pytest.mark.timeout(1800)  # 737 s measured under a load average of ~25 on the 2-core box
def test_200_open_step_close_cycles_over_4_parallel_sessions_leak_nothing():
    with running_server(4) as server:
        baseline = {p.pid for p in browser_processes(server.pid)}

        def cycles(worker: int) -> list[tuple[float, str]]:
            results = []
            with EnvClient(server.url) as c:  # any HTTP error raises and fails the test
                for i in range(50):
                    out = c.reset("click-test", seed=worker * 1000 + i)
                    step = c.step(out["session_id"], solve("click-test", out["observation"])[0])
                    assert step["info"]["action_valid"]
                    results.append((step["reward"], step["observation"]["last_action_error"]))
                    c.close(out["session_id"])
            return results

        with ThreadPoolExecutor(4) as pool:
            results = [r for worker in pool.map(cycles, range(4)) for r in worker]
        assert len(results) == 200
        # On a starved 2-core box a rare correct click still times out in the page (CI: 5 of 200 at BrowserGym's
        # 500 ms; envserver gives 1500 ms, benchmarks/action_timeout.py). That is an env outcome reported as
        # last_action_error, not a lifecycle error; anything else failing is.
        failed = [r for r in results if r[0] != 1.0]
        assert len(failed) <= 10 and all("Timeout" in err for _, err in failed), failed
        assert EnvClient(server.url).health()["active_sessions"] == 0
        metrics = httpx.get(server.url + "/metrics").text
        assert "envserver_sessions_lost_total 0.0" in metrics
        time.sleep(1)
        left = [p for p in live_browsers(server.pid) if p.pid not in baseline]
        assert not left, [p.cmdline()[:2] for p in left]
