"""envserver as a drop-in for the remote BrowserGym server (issue #7): the original clients' request bodies,
and OpenEnv's runtime contract (/metadata, /schema, /state, /mcp), against a real server and real Chromium.

MCP replies are checked with the `mcp` SDK's own models (installed with BrowserGym), not our assumptions.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import subprocess
import sys

import httpx
import mcp
import mcp.types
import pytest

from tests.conftest import running_server

CLICK_ME = re.compile(r"\[(\d+)\] button 'Click Me!'")


@pytest.fixture
def http(envserver):
    with httpx.Client(base_url=envserver.url, timeout=60) as c:
        yield c


def _until_no_timeout(send, tries: int = 3) -> tuple[dict, int]:
    """BrowserGym gives a click 500 ms; on a starved 2-core box it can time out in the page. That is an honest
    env outcome (last_action_error, reward 0), not a protocol error: retried so these tests test the protocol.
    `send()` returns a step result; returns the last one and how many steps were sent."""
    for attempt in range(1, tries + 1):
        out = send()
        if "Timeout" not in out["observation"]["last_action_error"]:
            break
    return out, attempt


def _bid(observation: dict) -> str:
    """What the original client did: find the button's bid in the page text."""
    return CLICK_ME.search(observation["text"]).group(1)


def test_original_client_click_test_episode(http):
    """Exactly the original client's bodies: empty reset, {"action": {"action_str"}, "session_id"} steps, close."""
    out = http.post("/reset", json={}).json()
    assert out["reward"] is None and out["done"] is False
    sid, obs = out["session_id"], out["observation"]
    assert obs["goal"] == "Click the button." and obs["url"].endswith("click-test.html")
    assert obs["text"] == obs["axtree_txt"] and "[13] button 'Click Me!'" in obs["text"]  # never empty (bug 3)
    assert obs["last_action_error"] == ""

    body = {"action": {"action_str": f"click('{_bid(obs)}')"}, "session_id": sid}
    step, _ = _until_no_timeout(lambda: http.post("/step", json=body).json())
    assert (step["reward"], step["done"], step["session_id"]) == (1.0, True, sid)
    assert not step["observation"]["last_action_error"] and "goal" in step["observation"]
    assert http.post("/close", json={"session_id": sid}).json() == {"ok": True}


def test_reset_without_any_body_or_with_only_a_seed(http):
    for kwargs in ({}, {"json": {"seed": 5}}):
        out = http.post("/reset", **kwargs)
        assert out.status_code == 200, out.text
        out = out.json()
        try:
            assert out["observation"]["goal"] == "Click the button." and out["reward"] is None
        finally:
            http.post("/close", json={"session_id": out["session_id"]})


def test_screenshot_and_pruned_html_only_when_asked(http):
    out = http.post("/reset", json={"include_pruned_html": True}).json()
    sid = out["session_id"]
    try:
        assert "Click Me!" in out["observation"]["pruned_html"] and "screenshot" not in out["observation"]
        step = http.post("/step", json={"session_id": sid, "action": "noop(wait_ms=0)",
                                        "include_screenshot": True}).json()["observation"]
        assert step["screenshot"] and "pruned_html" not in step
        rejected = http.post("/step", json={"session_id": sid, "action": "click(13)"}).json()["observation"]
        assert "bid" in rejected["last_action_error"] and not {"pruned_html", "screenshot"} & set(rejected)
    finally:
        http.post("/close", json={"session_id": sid})


def test_openenv_contract_endpoints(http):
    spec = http.get("/openapi.json").json()
    assert spec["info"]["version"].startswith("1.")  # OpenEnv profile openenv-http/1.x
    assert {"/reset", "/step", "/state", "/mcp", "/schema", "/metadata"} <= set(spec["paths"])
    assert http.get("/health").json()["status"] == "healthy"
    meta = http.get("/metadata").json()
    assert meta["name"] == "bgwork-envserver" and "BrowserGym" in meta["description"]

    schema = http.get("/schema").json()
    assert schema["action"]["required"] == ["action_str"]
    out = http.post("/reset", json={"include_pruned_html": True, "include_screenshot": True}).json()
    http.post("/close", json={"session_id": out["session_id"]})
    properties = schema["observation"]["properties"]
    assert set(out["observation"]) == set(properties)  # the schema documents exactly what is served
    assert set(schema["observation"]["required"]) == set(properties) - {"screenshot", "pruned_html"}
    assert {"episode_id", "step_count"} <= set(schema["state"]["properties"])


def test_state_follows_the_episode(http):
    sid = http.post("/reset", json={"seed": 2}).json()["session_id"]
    try:
        first = http.get("/state", params={"session_id": sid}).json()
        assert (first["step_count"], first["task_name"], first["seed"], first["done"]) == (0, "click-test", 2, False)
        http.post("/step", json={"session_id": sid, "action": "click(13)"})  # rejected, still a step
        _, clicks = _until_no_timeout(
            lambda: http.post("/step", json={"session_id": sid, "action": {"action_str": "click('13')"}}).json())
        state = http.get("/state", params={"session_id": sid}).json()
        assert (state["step_count"], state["cum_reward"], state["done"]) == (1 + clicks, 1.0, True)
        assert state["episode_id"] == first["episode_id"] and state["goal"] == "Click the button."
        http.post("/reset", json={"session_id": sid})
        assert http.get("/state", params={"session_id": sid}).json()["episode_id"] != first["episode_id"]
        http.post("/reset", json={"session_id": sid, "episode_id": "episode-001"})  # OpenEnv's reset body
        assert http.get("/state", params={"session_id": sid}).json()["episode_id"] == "episode-001"
    finally:
        http.post("/close", json={"session_id": sid})
    gone = http.get("/state", params={"session_id": sid})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_session"
    by_cookie = http.get("/state")  # no query: the session the last /reset's cookie named
    assert by_cookie.status_code == 404 and sid in by_cookie.json()["error"]["message"]
    http.cookies.clear()
    missing = http.get("/state")
    assert missing.status_code == 409 and "session_id" in missing.json()["error"]["message"]


# ---- /mcp --------------------------------------------------------------------------------------------------

def _rpc(http, method: str, params: dict | None = None, request_id: int = 1) -> dict:
    reply = http.post("/mcp", json={"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["id"] == request_id and "error" not in body, body
    return body["result"]


def _call(http, name: str, **arguments) -> mcp.types.CallToolResult:
    result = mcp.types.CallToolResult.model_validate(_rpc(http, "tools/call", {"name": name, "arguments": arguments}))
    assert result.content[0].text  # the same result as text, for clients that read only content
    return result


def test_mcp_handshake_and_tool_list(http):
    init = mcp.types.InitializeResult.model_validate(
        _rpc(http, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                  "clientInfo": {"name": "pytest", "version": "0"}}))
    assert init.protocol_version == "2025-06-18" and init.capabilities.tools is not None
    note = http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert note.status_code == 202 and note.content == b""
    assert _rpc(http, "ping") == {}

    tools = {t.name: t for t in mcp.types.ListToolsResult.model_validate(_rpc(http, "tools/list")).tools}
    assert {"new_episode", "act", "click", "fill", "end_session"} <= set(tools)
    assert not {"reset", "step", "state", "close"} & set(tools)  # names OpenEnv reserves for itself
    assert tools["click"].input_schema["required"] == ["session_id", "bid"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]{1,128}", name) for name in tools)


def test_mcp_click_test_episode(http, tmp_path):
    started = _call(http, "new_episode", task="click-test", seed=1)
    assert not started.is_error
    sid, obs = started.structured_content["session_id"], started.structured_content["observation"]
    try:
        wrong = _call(http, "click", session_id=sid, bid=int(_bid(obs))).structured_content  # the classic mistake
        assert wrong["reward"] == 0.0 and "must be a quoted string" in wrong["observation"]["last_action_error"]
        marker = tmp_path / "pwned"
        hostile = _call(http, "act", session_id=sid, action=f"__import__('os').system('touch {marker}')")
        assert "InvalidAction" in hostile.structured_content["observation"]["last_action_error"]
        smuggled = _call(http, "click", session_id=sid, **{f"bid='1') or open('{marker}', 'w') or ('": "x"})
        assert smuggled.is_error and "has no argument" in smuggled.structured_content["error"]["message"]
        assert not marker.exists()

        done, clicks = _until_no_timeout(lambda: _call(http, "click", session_id=sid, bid=_bid(obs)).structured_content)
        assert (done["reward"], done["done"], done["observation"]["last_action_error"]) == (1.0, True, "")
        steps = http.get("/state", params={"session_id": sid}).json()["step_count"]
        assert steps == 2 + clicks  # rejected actions count; the smuggled one never became one
    finally:
        assert not _call(http, "end_session", session_id=sid).is_error
    after = _call(http, "click", session_id=sid, bid="13")
    assert after.is_error and after.structured_content["error"]["code"] == "unknown_session"


def test_mcp_openenv_session_methods(http):
    """OpenEnv's MCP client: openenv/session/create, session_id beside the tool name, openenv/session/close."""
    sid = _rpc(http, "openenv/session/create")["session_id"]
    call = {"name": "act", "arguments": {"action": "click('13')"}, "session_id": sid}
    result, _ = _until_no_timeout(lambda: _rpc(http, "tools/call", call)["structuredContent"])
    assert result["reward"] == 1.0
    assert _rpc(http, "openenv/session/close", {"session_id": sid}) == {"session_id": sid, "closed": True}
    again = http.post("/mcp", json={"jsonrpc": "2.0", "id": 9, "method": "openenv/session/close",
                                    "params": {"session_id": sid}}).json()
    assert again["error"]["code"] == -32602 and "closed" in again["error"]["message"]


def test_mcp_sdk_client_plays_an_episode(envserver):
    """The `mcp` SDK's own client (Streamable HTTP; probes server/discover, falls back to initialize)."""
    async def episode() -> dict:
        async with mcp.Client(envserver.url + "/mcp", raise_exceptions=True) as client:
            assert "click" in {t.name for t in (await client.list_tools()).tools}
            sid = (await client.call_tool("new_episode", {"seed": 4})).structured_content["session_id"]
            try:
                for _ in range(3):  # see _until_no_timeout
                    done = (await client.call_tool("click", {"session_id": sid, "bid": "13"})).structured_content
                    if "Timeout" not in done["observation"]["last_action_error"]:
                        return done
                return done
            finally:
                await client.call_tool("end_session", {"session_id": sid})

    done = asyncio.run(episode())
    assert (done["reward"], done["done"]) == (1.0, True)


@pytest.mark.parametrize("body, code, says", [
    (b"{not json", -32700, "not valid JSON"),
    (b"\xff\xfe\x00garbage", -32700, "not valid JSON"),
    (b"[" * 5000 + b"]" * 5000, -32700, "not valid JSON"),  # nested past the parser's recursion limit
    (b"[]", -32600, "batch"),
    (b"{}", -32600, "jsonrpc"),
    (b'"tools/list"', -32600, "object"),
    (b'{"jsonrpc": "2.0", "id": 1}', -32600, "method"),
    (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', -32600, "jsonrpc"),
    (b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"}', -32600, "id"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/destroy"}', -32601, "tools/destroy"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [1]}', -32602, "params"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "rm"}}', -32602, "unknown tool"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": ["click"]}}', -32602, "unknown tool"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "click", "arguments": [1]}}',
     -32602, "arguments"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "openenv/session/create", "params": {"task": "click-tset"}}',
     -32602, "click-test"),
])
def test_mcp_malformed_requests_get_json_rpc_errors(http, body, code, says):
    reply = http.post("/mcp", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 200, reply.text  # never a 500, never a non-JSON-RPC body
    error = mcp.types.JSONRPCError.model_validate(reply.json()).error
    assert error.code == code and says in error.message, error


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(1500)  # the validator script gets 1200 s
def test_openenv_validator_passes_every_required_criterion(tmp_path):
    """openenv-core's own validator, from its own venv (created on first run, a few minutes)."""
    report_path = tmp_path / "report.json"
    script = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "openenv_validate.sh"
    done = subprocess.run(["bash", str(script), str(report_path)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["standard_profile"] == "openenv-http/1.x" and report["mode"] == "simulation"
    assert report["summary"]["required_passed_count"] == report["summary"]["required_total_count"] >= 6


@pytest.mark.browser
def test_schemathesis_finds_the_schema_true(tmp_path):
    """schemathesis (every default check: status codes, content types, response schemas, positive and negative
    data, unsupported methods...) against a live server on loopback, bounded examples, fixed seed."""
    with running_server(1, "--evict-idle-s", "0") as server:  # every new session may evict the last one
        out = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json",
                              "--max-examples", "5", "--seed", "15", "--workers", "1", "--request-timeout", "60",
                              "--no-color"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
        log = open(server.log_path, errors="replace").read()
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "Exception in ASGI application" not in log and "internal error on" not in log, log[-3000:]
