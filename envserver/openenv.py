"""OpenEnv's runtime contract on top of the core routes: /metadata, /schema, /state, /mcp and the /ws WebSocket.

openenv-core's validator (`openenv validate <url>`, v0.3.0) checks: GET /openapi.json has info.version
(profile openenv-http/1.x when it starts with "1."), GET /health says status "healthy", GET /metadata has
name and description, GET /schema has action, observation and state schemas, POST /mcp answers JSON-RPC 2.0
(it posts `{}`), and /reset, /step and /state are all in the OpenAPI paths ("simulation" mode).

/mcp is MCP over plain JSON-RPC (one JSON object per POST, answered as JSON): initialize, ping, tools/list,
tools/call, and OpenEnv's openenv/session/create|close. Its tools drive the same session pool through the
same handlers as /reset, /step and /close, so every action, whichever tool it came through, is parsed by
envserver.actions before the browser sees it. Tool names avoid reset/step/state/close, which OpenEnv
reserves (RFC 003) for its own Gym-style API.

/ws speaks the protocol of openenv-core 0.3's EnvClient (GenericEnvClient and every typed client built on it):
JSON text messages {"type": "reset"|"step"|"state"|"close"|"mcp", "data": {...}}, answered by
{"type": "observation"|"state"|"mcp"|"error", "data": {...}}. Each connection has its own session, opened by
its first reset and closed when the socket closes, however it closes.
"""

from __future__ import annotations

import inspect
import json
import logging
from typing import Any, Callable

from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, TypeAdapter, ValidationError

from . import API_VERSION, __version__
from .grammar import DEFAULT_ACTIONS, SIGNATURES
from .schemas import (
    Action,
    ActionObject,
    ApiError,
    CloseRequest,
    EpisodeState,
    Observation,
    ResetRequest,
    SessionCookie,
    StepRequest,
    error_responses,
    safe_text,
)

NAME = "bgwork-envserver"
DESCRIPTION = ("Offline BrowserGym MiniWoB++ environments (125 tasks, real Chromium), many sessions in parallel. "
               "Drop-in for OpenEnv's BrowserGym server: POST /reset, /step {action: {action_str}}, /close.")
# MCP revisions that begin with the initialize handshake; we answer the client's if we know it, else the newest.
MCP_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
SERVER_ERROR = -32000  # implementation-defined: the pool is full, a browser was lost

log = logging.getLogger(__name__)


# ---- routes -----------------------------------------------------------------------------------------------

def add_openenv_routes(app: FastAPI, reset: Callable, step: Callable, close: Callable, hold: Callable) -> None:
    """Register the OpenEnv routes. reset/step/close take the core request models (and the client's cookie)
    and return the core answers; hold(session_id, cookie) is a context manager that yields the session."""
    settings = app.state.settings
    mcp = McpServer(reset, step, close)

    @app.get("/metadata")
    def metadata() -> dict:
        return {"name": NAME, "description": DESCRIPTION, "version": __version__, "api_version": API_VERSION,
                "default_task": settings.default_task, "author": "bgwork", "documentation_url": None}

    @app.get("/schema")
    def schema() -> dict:
        return {"action": Action.model_json_schema(), "observation": Observation.model_json_schema(),
                "state": EpisodeState.model_json_schema()}

    @app.get("/state", responses=error_responses(404, 409, 422))
    def state(session_id: str | None = Query(None, min_length=1, max_length=64,
                                              description="the session (many run at once); if left out, the one "
                                                          "the envserver_session cookie names"),
              envserver_session: SessionCookie = None) -> dict:
        with hold(session_id, envserver_session) as session:
            return _state(session)

    @app.post("/mcp")
    async def mcp_endpoint(request: Request) -> Response:
        try:
            message = json.loads(await request.body())
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's limit
            return JSONResponse(_error(None, PARSE_ERROR, "request body is not valid JSON"))
        reply = await run_in_threadpool(mcp.handle, message)  # tools block on a browser
        return Response(status_code=202) if reply is None else JSONResponse(reply)

    @app.websocket("/ws")
    async def ws_endpoint(websocket: WebSocket) -> None:
        await WsSession(websocket, settings, reset, step, close, hold, mcp).serve()


def _state(session) -> dict:
    episode, obs = session.episode, session.last_obs
    if episode is None:
        raise ApiError(409, "not_reset", "this session has no episode yet: POST /reset with its session_id first")
    return EpisodeState(episode_id=episode.episode_id, step_count=episode.step_count, session_id=session.id,
                        task_name=episode.task, seed=episode.seed, goal=obs["goal"], url=obs["url"],
                        cum_reward=episode.cum_reward, done=episode.done).model_dump()


# ---- /ws: openenv-core 0.3's EnvClient --------------------------------------------------------------------

# openenv-core's WSErrorCode values; our own code and HTTP status ride along as `error` and `status`.
WS_CODES = {400: "VALIDATION_ERROR", 422: "VALIDATION_ERROR", 404: "SESSION_ERROR", 409: "EXECUTION_ERROR",
            429: "CAPACITY_REACHED", 503: "SESSION_ERROR"}


class WsSession:
    """One WebSocket connection and the session it owns (opened by its first reset, closed with the socket)."""

    def __init__(self, websocket: WebSocket, settings, reset: Callable, step: Callable, close: Callable,
                 hold: Callable, mcp: "McpServer"):
        self.ws, self.settings = websocket, settings
        self.reset, self.step, self.close, self.hold, self.mcp = reset, step, close, hold, mcp
        self.session_id: str | None = None

    async def serve(self) -> None:
        from .app import authorized  # the same bearer token as HTTP

        if self.settings.token and not authorized(self.ws.headers, self.settings.token):
            await self.ws.close(code=1008, reason="missing or wrong bearer token (Authorization: Bearer ...)")
            return
        await self.ws.accept()
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    text = (message.get("bytes") or b"").decode("utf-8", "replace")
                reply, done = await run_in_threadpool(self.handle, text)
                await self.ws.send_text(json.dumps(reply))
                if done:
                    await self.ws.close()
                    break
        except Exception:  # noqa: BLE001 - the client went away mid-send, or worse: log it, never crash ASGI
            log.warning("websocket session %s ended abnormally", self.session_id, exc_info=True)
        finally:
            if self.session_id is not None:
                await run_in_threadpool(self._close_session)

    def handle(self, text: str) -> tuple[dict, bool]:
        """One message -> (reply, whether the connection ends)."""
        try:
            message = json.loads(text)
        except (ValueError, RecursionError) as e:
            return _ws_error(f"Invalid JSON: {str(e)[:200]}", "INVALID_JSON"), False
        if not isinstance(message, dict):
            return _ws_error("a message is a JSON object {\"type\": ..., \"data\": {...}}", "VALIDATION_ERROR"), False
        kind, data = message.get("type"), message.get("data", {})
        data = {} if data is None else data
        if not isinstance(data, dict) and kind != "mcp":
            return _ws_error("data must be an object", "VALIDATION_ERROR"), False
        try:
            if kind == "reset":
                return {"type": "observation", "data": self._reset(data)}, False
            if kind == "step":
                return {"type": "observation", "data": self._step(data)}, False
            if kind == "state":
                with self.hold(self._require_session(), None) as session:
                    return {"type": "state", "data": _state(session)}, False
            if kind == "mcp":
                return {"type": "mcp", "data": self.mcp.handle(data)}, False
            if kind == "close":
                return {"type": "closed", "data": {"session_id": self.session_id}}, True
        except ApiError as e:
            return _ws_error(e.message, WS_CODES.get(e.status, "EXECUTION_ERROR"), status=e.status, error=e.code,
                             **e.extra), False
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
            return _ws_error(f"Invalid message: {problems}", "VALIDATION_ERROR"), False
        return _ws_error(f"Unknown message type: {safe_text(str(kind))[:100]} (expected reset, step, state, close "
                         "or mcp)", "UNKNOWN_TYPE"), False

    def _reset(self, data: dict) -> dict:
        if "session_id" in data:
            raise ApiError(422, "invalid_request", "data.session_id: the connection's session is implicit; "
                                                   "open another connection for another session")
        request = ResetRequest.model_validate({**data, "session_id": self.session_id})
        try:
            out = self.reset(request)
        except ApiError as e:
            if e.status != 404 or self.session_id is None:
                raise
            self.session_id = None  # evicted or reaped while the socket idled: start a new one
            out = self.reset(request.model_copy(update={"session_id": None}))
        self.session_id = out["session_id"]
        return out

    def _step(self, data: dict) -> dict:
        options = {k: data[k] for k in ("include_screenshot", "include_pruned_html") if k in data}
        if "action_str" in data:  # OpenEnv's BrowserGymAction: {action_str, metadata}
            action = ActionObject.model_validate(data)
        elif "action" in data:
            action = data["action"]
        else:
            raise ApiError(422, "invalid_request",
                           "data.action_str is required, e.g. {\"action_str\": \"click('13')\"}")
        return self.step(StepRequest(session_id=self._require_session(), action=action, **options))

    def _require_session(self) -> str:
        if self.session_id is None:
            raise ApiError(409, "not_reset", "this connection has no episode yet: send {\"type\": \"reset\"} first")
        return self.session_id

    def _close_session(self) -> None:
        try:
            self.close(CloseRequest(session_id=self.session_id))
        except ApiError:  # already evicted or reaped
            pass


def _ws_error(message: str, code: str, **extra: Any) -> dict:
    return {"type": "error", "data": {"message": safe_text(message), "code": code, **extra}}


# ---- MCP over JSON-RPC ------------------------------------------------------------------------------------

class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None):
        self.code, self.message, self.data = code, message, data


def _error(request_id, code: int, message: str, data: Any = None) -> dict:
    error = {"code": code, "message": message, **({"data": data} if data is not None else {})}
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


class McpServer:
    def __init__(self, reset: Callable, step: Callable, close: Callable):
        self.reset, self.step, self.close = reset, step, close
        self.tools = _tools()
        self.methods = {"initialize": self.initialize, "ping": lambda params: {}, "tools/list": self.list_tools,
                        "tools/call": self.call_tool, "openenv/session/create": self.create_session,
                        "openenv/session/close": self.close_session}

    def handle(self, message: Any) -> dict | None:
        """One JSON-RPC message -> its response, or None for a notification (answered 202, no body)."""
        if isinstance(message, list):
            return _error(None, INVALID_REQUEST, "batch requests are not supported: POST one JSON-RPC object at a time")
        if not isinstance(message, dict):
            return _error(None, INVALID_REQUEST, f"a JSON-RPC request is an object, got {type(message).__name__}")
        request_id = message.get("id")
        if not _valid_id(request_id):
            return _error(None, INVALID_REQUEST, "id must be a string, an integer or null")
        if message.get("jsonrpc") != "2.0":
            return _error(request_id, INVALID_REQUEST, 'jsonrpc must be "2.0"')
        method, params = message.get("method"), message.get("params")
        params = {} if params is None else params
        if not isinstance(method, str):
            return _error(request_id, INVALID_REQUEST, "method must be a string, e.g. \"tools/list\"")
        if "id" not in message:
            return None  # notifications (notifications/initialized, .../cancelled) need no action here
        if method not in self.methods:
            return _error(request_id, METHOD_NOT_FOUND, f"method {method!r} not found; this server answers "
                                                        f"{', '.join(self.methods)}")
        if not isinstance(params, dict):
            return _error(request_id, INVALID_PARAMS, "params must be an object")
        try:
            result = self.methods[method](params)
        except RpcError as e:
            return _error(request_id, e.code, e.message, e.data)
        except Exception as e:  # noqa: BLE001 - a server fault is still answered in JSON-RPC, never a bare 500
            log.exception("mcp %s failed", method)
            return _error(request_id, INTERNAL_ERROR, f"{type(e).__name__}: {str(e)[:500]}")
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def initialize(self, params: dict) -> dict:
        asked = params.get("protocolVersion")
        return {"protocolVersion": asked if asked in MCP_VERSIONS else MCP_VERSIONS[-1],
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": NAME, "version": __version__},
                "instructions": "Call new_episode (optionally with a task from GET /tasks), then act with click, "
                                "fill, ... on that session_id; the bid is the number in brackets in axtree_txt. "
                                "end_session frees the browser."}

    def list_tools(self, params: dict) -> dict:
        return {"tools": [{"name": name, "description": description, "inputSchema": schema}
                          for name, (description, schema, _) in self.tools.items()]}

    def call_tool(self, params: dict) -> dict:
        name, arguments = params.get("name"), params.get("arguments", {})
        arguments = {} if arguments is None else arguments
        if not isinstance(name, str) or name not in self.tools:
            raise RpcError(INVALID_PARAMS, f"unknown tool {name!r}; tools/list names them")
        if not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, "arguments must be an object")
        if "session_id" not in arguments and isinstance(params.get("session_id"), str):
            arguments = {**arguments, "session_id": params["session_id"]}  # OpenEnv's clients put it beside name
        _, _, run = self.tools[name]
        try:
            result, failed = run(self, arguments), False
        except ApiError as e:  # unknown session, pool full, session lost: a tool error the caller can act on
            result, failed = {"error": {"code": e.code, "message": e.message, **e.extra}}, True
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
            result, failed = {"error": {"code": "invalid_arguments", "message": f"{name}: {problems}"}}, True
        return {"content": [{"type": "text", "text": json.dumps(result)}], "structuredContent": result,
                "isError": failed}

    def create_session(self, params: dict) -> dict:
        """OpenEnv's MCP clients open a session first: here that is a new episode of the default (or given) task."""
        out = self._run(lambda: self.reset(ResetRequest(task=params.get("task"), seed=params.get("seed"))))
        return {"session_id": out["session_id"], "observation": out["observation"]}

    def close_session(self, params: dict) -> dict:
        session_id = params.get("session_id")
        if not isinstance(session_id, str):
            raise RpcError(INVALID_PARAMS, "session_id (a string) is required")
        self._run(lambda: self.close(CloseRequest(session_id=session_id)))
        return {"session_id": session_id, "closed": True}

    @staticmethod
    def _run(fn: Callable) -> dict:
        try:
            return fn()
        except ApiError as e:
            raise RpcError(INVALID_PARAMS if e.status in (400, 404, 409, 422) else SERVER_ERROR, e.message,
                           {"status": e.status, "code": e.code}) from None
        except ValidationError as e:
            raise RpcError(INVALID_PARAMS, str(e)) from None


# ---- tools ------------------------------------------------------------------------------------------------

_SESSION = {"type": "string", "maxLength": 64, "description": "from new_episode"}


def _tools() -> dict[str, tuple[str, dict, Callable]]:
    """name -> (description, input JSON schema, run(server, arguments) -> dict)."""
    tools = {
        "new_episode": ("Start an episode: a new session, or the given session_id reset in place. Returns "
                        "session_id and the observation (goal, axtree_txt with [bid]s).",
                        _model_schema(ResetRequest),
                        lambda s, a: s.reset(ResetRequest.model_validate(a))),
        "act": ("Perform one BrowserGym action given as text, e.g. click('13'). Returns observation, reward, done.",
                _object({"session_id": _SESSION, "action": Action.model_json_schema()["properties"]["action_str"]},
                        ["session_id", "action"]),
                lambda s, a: s.step(StepRequest.model_validate(a))),
    }
    for name in DEFAULT_ACTIONS:
        tools[name] = _action_tool(name)
    tools["end_session"] = ("Close a session and its browser; its id is never valid again.",
                            _model_schema(CloseRequest), lambda s, a: s.close(CloseRequest.model_validate(a)))
    return tools


def _action_tool(name: str) -> tuple[str, dict, Callable]:
    """A tool per BrowserGym action, its arguments those of the action's signature."""
    fn = SIGNATURES[name]
    properties, required = {"session_id": _SESSION}, ["session_id"]
    for param in inspect.signature(fn).parameters.values():
        properties[param.name] = TypeAdapter(param.annotation).json_schema()
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        else:
            properties[param.name]["default"] = param.default
    description = inspect.cleandoc(fn.__doc__ or name).split("\n\n")[0] + " Returns observation, reward, done."

    def run(server: McpServer, arguments: dict) -> dict:
        args = {k: v for k, v in arguments.items() if k != "session_id"}
        if unknown := sorted(set(args) - set(properties)):
            raise ApiError(422, "invalid_arguments", f"{name}() has no argument {', '.join(unknown)}; "
                                                     f"it takes {', '.join(list(properties)[1:]) or 'none'}")
        # Written back as text so the action parser judges it exactly like a model's output.
        code = f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
        return server.step(StepRequest(session_id=arguments.get("session_id"), action=code))

    return description, _object(properties, required), run


def _object(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _model_schema(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema
