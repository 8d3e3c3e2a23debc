"""OpenEnv's own clients, unchanged and installed from the package index, play episodes on envserver (issue #15).

- openenv-core 0.1.1 (the version OpenEnv's cookbook pins): its HTTPEnvClient, a dev dependency of this project.
  It sends no session_id (the server's cookie names the session), adds timeout_s to /step, calls /state with no
  query, and never closes a session.
- openenv-core 0.3.0 (current): its GenericEnvClient over the /ws WebSocket, from a venv this test creates once
  and caches under the bgwork cache dir (openenv-core pulls gradio, fastmcp and openai: never into .venv).
  scripts/openenv_validate.sh uses the same venv.

Both run reset -> step -> state -> close against a live server and against a replay server.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.browser

OPENENV_03 = "openenv-core==0.3.0"
CLICK_ME = re.compile(r"\[(\d+)\] button 'Click Me!'")


def cache_dir() -> Path:
    return Path(os.environ.get("BGWORK_CACHE", Path.home() / ".cache" / "bgwork"))


def client_venv(spec: str) -> Path:
    """A venv holding `spec` (pip's own resolution of its dependencies), made once, kept in the bgwork cache."""
    venv = cache_dir() / ("venv-" + re.sub(r"[^A-Za-z0-9.]+", "-", spec))
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs never build it at once
        if not (venv / ".complete").exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            spec], check=True, timeout=1200)
            (venv / ".complete").write_text(spec + "\n")
    return venv


@pytest.fixture
def replay(small_replay):
    return small_replay


@pytest.fixture(params=["live", "replay"])
def server(request, envserver, replay):
    return envserver if request.param == "live" else replay


# ---- openenv-core 0.1.1: HTTP --------------------------------------------------------------------------------

def http_client(url: str):
    from openenv_core.client_types import StepResult
    from openenv_core.http_env_client import HTTPEnvClient

    class BrowserGymEnv(HTTPEnvClient):
        """The three methods every 0.1 client defines, as OpenEnv's BrowserGym client (envs/browsergym_env) does."""

        def _step_payload(self, action: dict) -> dict:
            return {"action_str": action["action_str"], "metadata": action.get("metadata", {})}

        def _parse_result(self, payload: dict) -> StepResult:
            return StepResult(observation=payload.get("observation", {}), reward=payload.get("reward"),
                              done=payload.get("done", False))

        def _parse_state(self, payload: dict) -> dict:
            return payload

    return BrowserGymEnv(base_url=url, request_timeout_s=60)


def test_openenv_core_0_1_http_client_plays_an_episode(server):
    env = http_client(server.url)
    first = env.reset()
    assert first.observation["goal"] == "Click the button." and first.done is False
    bid = CLICK_ME.search(first.observation["axtree_txt"])[1]
    wrong = env.step({"action_str": f"click({bid})"})  # the classic mistake: an unquoted bid
    assert wrong.reward == 0.0 and "quoted string" in wrong.observation["last_action_error"]
    done = env.step({"action_str": f"click('{bid}')"})
    assert (done.reward, done.done) == (1.0, True), done.observation
    state = env.state()
    assert (state["step_count"], state["cum_reward"], state["done"]) == (2, 1.0, True)
    env.close()  # 0.1's close() leaves the server session open; the test closes it (0.1's users cannot)
    assert httpx.post(server.url + "/close", json={"session_id": state["session_id"]}).json() == {"ok": True}


def test_openenv_core_0_1_client_never_fills_the_pool(replay):
    """Each 0.1 reset opens a session it never closes. On a 2-session server, 6 episodes in a row still play:
    a session its cookie client has moved on from is evicted first."""
    env = http_client(replay.url)
    for episode in range(6):
        first = env.reset()
        bid = CLICK_ME.search(first.observation["axtree_txt"])[1]
        assert env.step({"action_str": f"click('{bid}')"}).reward == 1.0, episode
    assert httpx.get(replay.url + "/health").json()["active_sessions"] <= 2
    httpx.post(replay.url + "/close", json={"session_id": env.state()["session_id"]})


# ---- openenv-core 0.3.0: WebSocket ---------------------------------------------------------------------------

EPISODE_03 = """
import json, re, sys
from openenv.core.generic_client import GenericEnvClient

for url in sys.argv[1:]:
    with GenericEnvClient(base_url=url).sync() as env:
        first = env.reset(seed=1)
        bid = re.search(r"\\[(\\d+)\\] button 'Click Me!'", first.observation["axtree_txt"])[1]
        wrong = env.step({"action_str": f"click({bid})"})
        done = env.step({"action_str": f"click('{bid}')"})
        state = env.state()
        again = env.reset(seed=2)  # a second episode on the same connection (the same session)
        state2 = env.state()
    print(json.dumps({"goal": first.observation["goal"], "done": [done.reward, done.done], "state": state,
                      "wrong": [wrong.reward, wrong.observation["last_action_error"]], "state2": state2}))
"""


def test_openenv_core_0_3_websocket_client_plays_episodes(envserver, replay):
    """One run of the 0.3 client (its import takes seconds) against the live and the replay server."""
    python = client_venv(OPENENV_03) / "bin" / "python"
    servers = [envserver, replay]
    before = [httpx.get(s.url + "/health").json()["active_sessions"] for s in servers]
    out = subprocess.run([str(python), "-c", EPISODE_03, *(s.url for s in servers)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for server, line, sessions in zip(servers, out.stdout.strip().splitlines()[-2:], before):
        result = json.loads(line)
        assert result["goal"] == "Click the button."
        assert result["wrong"][0] == 0.0 and "quoted string" in result["wrong"][1]
        assert result["done"] == [1.0, True]
        assert (result["state"]["step_count"], result["state"]["cum_reward"]) == (2, 1.0)
        assert result["state2"]["session_id"] == result["state"]["session_id"]  # one session per connection
        assert result["state2"]["step_count"] == 0 and result["state2"]["seed"] == 2
        deadline = time.monotonic() + 30  # closed with the socket, as the server notices it closing
        while (gone := httpx.get(server.url + "/state", params={"session_id": result["state"]["session_id"]})
               ).status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gone.status_code == 404 and "was closed" in gone.json()["error"]["message"]
        assert httpx.get(server.url + "/health").json()["active_sessions"] == sessions
