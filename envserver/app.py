"""The HTTP API. Client mistakes get 4xx with {"error": {"code", "message"}}; a lost browser gets 503 session_lost.

The routes are the same whichever backend serves the sessions: live Chromium (envserver.live) or a
recording (envserver.replay). Either way an action string goes through envserver.grammar first.

Which session a request means: its `session_id`; where a client leaves that out (openenv-core 0.1's HTTP
client never sends one), the `envserver_session` cookie that the last /reset answered with. A session
serves one request at a time (409 session_busy otherwise), so no client can pile up browser work.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import API_VERSION, __version__
from .grammar import ActionError, parse_action
from .metrics import Metrics
from .openenv import add_openenv_routes
from .pool import Episode, PoolFull, SessionBusy, SessionLost, SessionPool, UnknownSession
from .schemas import (
    COOKIE,
    ERRORS,
    ActionObject,
    ApiError,
    CloseRequest,
    ErrorBody,
    ResetRequest,
    SessionCookie,
    StepRequest,
    error_responses,
    safe_text,
)
from .tasks import UnknownSeed, UnknownTask

log = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    max_sessions: int = 4
    idle_timeout: float = 600.0
    default_task: str = "click-test"
    token: str | None = None
    max_body_bytes: int = 64 * 1024
    session: Any = None  # envserver.session.SessionSettings (live mode); None: its defaults
    replay: str | None = None  # a recording (envserver.record) to serve instead of live browsers
    evict_idle: float = 60.0  # a full pool evicts the least recently used session idle this long


def make_backend(settings: ServerSettings):
    """Live Chromium sessions, or the recording named by settings.replay (which needs no browser)."""
    if settings.replay:
        from .replay import ReplayBackend

        return ReplayBackend(settings.replay)
    from .live import LiveBackend
    from .session import SessionSettings as LiveSettings

    return LiveBackend(settings.session or LiveSettings())


# ---- app ------------------------------------------------------------------------------------------

def create_app(settings: ServerSettings, backend=None) -> FastAPI:
    backend = backend or make_backend(settings)
    metrics = Metrics()
    pool = SessionPool(settings.max_sessions, settings.idle_timeout, backend.new_session,
                       on_reap=metrics.reaped.inc, evict_idle=settings.evict_idle, on_evict=metrics.evicted.inc)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.close_all()  # no chromium or driver outlives the server

    app = FastAPI(title="bgwork envserver", version=API_VERSION, lifespan=lifespan,
                  description="Offline BrowserGym MiniWoB++ sessions over HTTP. Errors are answered as "
                              '{"error": {"code", "message"}}; a 503 (session_lost, unavailable) is an '
                              "infrastructure failure, never an episode outcome.")
    app.state.pool, app.state.metrics, app.state.settings, app.state.backend = pool, metrics, settings, backend
    _install_guards(app, settings, metrics)
    app.openapi = lambda: _openapi(app, backend)

    @app.get("/health")
    def health() -> dict:
        return {"status": "healthy", "version": __version__, "active_sessions": pool.active,  # OpenEnv's word
                "max_sessions": pool.max_sessions, **backend.health()}

    @app.get("/tasks")
    def tasks() -> dict:
        seeds = backend.seeds()  # a replay serves only its recorded seeds
        return {"tasks": backend.tasks(), **({"seeds": seeds} if seeds is not None else {})}

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format"}})
    def prometheus() -> PlainTextResponse:
        metrics.active.set(pool.active)
        body, content_type = metrics.render()
        return PlainTextResponse(body, media_type=content_type)

    def do_reset(req: ResetRequest | None, cookie: str | None = None) -> dict:
        req = req or ResetRequest()
        task = req.task or settings.default_task
        try:
            backend.check(task, req.seed)
        except UnknownTask as e:
            raise ApiError(400, "unknown_task", str(e), suggestions=e.suggestions) from None
        except UnknownSeed as e:
            raise ApiError(400, "unknown_seed", str(e)) from None
        if req.session_id:
            held = _hold(pool, req.session_id)
        else:
            held = _create(pool)
            if cookie:
                pool.supersede(cookie)  # see SessionPool.supersede
        with held as session:
            with metrics.timed("reset"):
                try:
                    observation, info = _session_call(
                        session, lambda: session.reset(task, req.seed, req.include_screenshot,
                                                       req.include_pruned_html), metrics)
                except ApiError as e:
                    if req.session_id:
                        raise
                    with contextlib.suppress(UnknownSession):  # its client never learnt this id: no lingering
                        pool.close(session.id)
                    raise ApiError(e.status, e.code, f"could not start an episode: {e.message.split('; POST')[0]}; "
                                                     "POST /reset to try again") from None
            session.task_name, session.episode = task, Episode(task, req.seed, req.episode_id)
            _remember(session, observation)
        metrics.resets.labels(task).inc()
        return {"session_id": session.id, "observation": observation,
                "info": {"task": task, "seed": req.seed, **info}, "reward": None, "done": False}

    def do_step(req: StepRequest, cookie: str | None = None) -> dict:
        with _hold_named(pool, req.session_id, cookie) as session:
            return _step(session, req, metrics)

    def do_close(req: CloseRequest) -> dict:
        try:
            pool.close(req.session_id)
        except UnknownSession as e:
            raise ApiError(404, "unknown_session", str(e)) from None
        metrics.closed.inc()
        return {"ok": True}

    @app.post("/reset", responses=error_responses(400, 404, 409, 429, 503))
    def reset(response: Response, req: ResetRequest | None = None, envserver_session: SessionCookie = None) -> dict:
        """Start an episode: in a new session, or in `session_id`'s (reset in place: ~8x faster)."""
        out = do_reset(req, envserver_session)
        response.set_cookie(COOKIE, out["session_id"], httponly=True, samesite="strict", path="/")
        return out

    @app.post("/step", responses=error_responses(404, 409, 422, 503))
    def step(req: StepRequest, envserver_session: SessionCookie = None) -> dict:
        """Play one action. An action the grammar rejects is answered (reward 0) without reaching the browser."""
        return do_step(req, envserver_session)

    @app.post("/close", responses=error_responses(404))
    def close(req: CloseRequest) -> dict:
        """Close a session and its browser; its id is never valid again."""
        return do_close(req)

    add_openenv_routes(app, reset=do_reset, step=do_step, close=do_close,
                       hold=lambda session_id, cookie: _hold_named(pool, session_id, cookie))
    return app


def _step(session, req: StepRequest, metrics: Metrics) -> dict:
    if session.task_name is None:
        raise ApiError(409, "not_reset", "this session has no episode yet: POST /reset with its session_id first")
    raw = req.action.action_str if isinstance(req.action, ActionObject) else req.action
    metrics.steps.labels(session.task_name).inc()
    try:
        action = parse_action(raw, viewport=session.viewport)
    except ActionError as e:  # never executed: the browser sees nothing
        metrics.action_errors.labels("invalid").inc()
        obs = {**session.last_obs, "last_action": safe_text(raw[:200]), "last_action_error": f"InvalidAction: {e}"}
        session.episode.record(0.0, done=False)
        return {"session_id": session.id, "observation": obs, "reward": 0.0, "done": False,
                "truncated": False, "info": {"action_valid": False}}
    with metrics.timed("step"):
        observation, reward, done, truncated, info = _session_call(
            session, lambda: session.step(action, req.include_screenshot, req.include_pruned_html), metrics)
    _remember(session, observation)
    session.episode.record(reward, done)
    if observation["last_action_error"]:
        metrics.action_errors.labels("browser").inc()
    if info.get("recorded") is False:
        metrics.replay_unrecorded.inc()
    return {"session_id": session.id, "observation": observation, "reward": reward, "done": done,
            "truncated": truncated, "info": {"action_valid": True, **info}}


@contextlib.contextmanager
def _hold_named(pool: SessionPool, session_id: str | None, cookie: str | None):
    """The session a request names: its session_id, else its cookie's."""
    if session_id:
        with _hold(pool, session_id) as session:
            yield session
    elif cookie:
        with _hold(pool, cookie, by_cookie=True) as session:
            yield session
    else:
        raise ApiError(409, "no_session", f"this request names no session: give its session_id, or POST /reset "
                                          f"first (its answer sets the {COOKIE} cookie that then names it)")


@contextlib.contextmanager
def _hold(pool: SessionPool, session_id: str, by_cookie: bool = False):
    held = pool.hold(session_id, by_cookie=by_cookie)
    try:
        session = held.__enter__()
    except UnknownSession as e:
        raise ApiError(404, "unknown_session", str(e)) from None
    except SessionBusy as e:
        raise ApiError(409, "session_busy", str(e)) from None
    try:
        yield session
    finally:
        held.__exit__(None, None, None)


@contextlib.contextmanager
def _create(pool: SessionPool):
    held = pool.create()
    try:
        session = held.__enter__()
    except PoolFull as e:
        raise ApiError(429, "pool_full", str(e)) from None
    except Exception as e:  # noqa: BLE001 - a browser that cannot start is an infrastructure failure: 503
        log.exception("could not start a session")
        raise ApiError(503, "unavailable", f"could not start a browser session: {type(e).__name__}: "
                                           f"{safe_text(str(e))[:300]}") from None
    try:
        yield session
    finally:
        held.__exit__(None, None, None)


def _session_call(session, fn, metrics: Metrics):
    try:
        return fn()
    except SessionLost as e:
        if getattr(session, "closed", False):  # its client closed it while this request ran: not a lost browser
            raise ApiError(404, "unknown_session", f"session {session.id!r} was closed while this request ran; "
                                                   "POST /reset without session_id opens a new one") from None
        metrics.lost.inc()
        raise ApiError(503, "session_lost", f"{e}; POST /reset (same or no session_id) to recover",
                       session_id=session.id) from None


def _remember(session, observation: dict) -> None:
    """An invalid action is answered with the last observation (never a browser call): keep it, sans screenshot."""
    session.last_obs = {k: v for k, v in observation.items() if k not in ("screenshot", "pruned_html")}


def _openapi(app: FastAPI, backend) -> dict:
    """FastAPI's schema, plus what only this server knows (the task names it serves) and the errors every route
    shares: 401 (with a token), and for bodies 413 and 422 in our error shape, not FastAPI's."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        task = schema["components"]["schemas"]["ResetRequest"]["properties"]["task"]
        task["anyOf"] = [{"type": "string", "enum": backend.tasks()}, {"type": "null"}]
        ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                shared = [401] if path != "/health" else []
                shared += [413, 422] if method == "post" or operation.get("parameters") else []
                for status in shared:
                    operation["responses"][str(status)] = {"description": ERRORS[status], **ref}
        schema["components"]["schemas"].pop("HTTPValidationError", None)
        schema["components"]["schemas"].pop("ValidationError", None)
        app.openapi_schema = schema
    return app.openapi_schema


# ---- guards: errors, auth, body size --------------------------------------------------------------

def _error(status: int, code: str, message: str, headers: dict | None = None, **extra: Any) -> JSONResponse:
    body = ErrorBody(error={"code": code, "message": safe_text(message), **extra}).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def _install_guards(app: FastAPI, settings: ServerSettings, metrics: Metrics) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return _error(e.status, e.code, e.message, **e.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, e: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        return _error(422, "invalid_request", "; ".join(problems)[:2000])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        if e.status_code == 400 and "parsing the body" in str(e.detail):  # undecodable JSON (e.g. not UTF-8)
            return _error(422, "invalid_request", "request body is not valid JSON text")
        codes = {404: "not_found", 405: "method_not_allowed"}
        # e.headers carries 405's Allow: the methods the path does serve (RFC 9110)
        return _error(e.status_code, codes.get(e.status_code, f"http_{e.status_code}"), str(e.detail),
                      headers=e.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error(500, "internal", f"{type(e).__name__}: {str(e)[:500]}")

    @app.middleware("http")
    async def auth_and_timing(request: Request, call_next):
        started = time.perf_counter()
        if settings.token and request.url.path != "/health" and not authorized(request.headers, settings.token):
            return _error(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer ...)")
        response = await call_next(request)
        metrics.observe_request(request.url.path, time.perf_counter() - started)
        return response

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)


def authorized(headers, token: str) -> bool:
    given = headers.get("authorization", "")
    return secrets.compare_digest(given.encode("utf-8", "replace"), f"Bearer {token}".encode())


class BodyLimit:
    """Refuse (413) a request body over `max_bytes` before anything parses it, reading at most that much.

    A declared Content-Length is checked at once; a chunked body is read up to the limit, then handed on."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(scope, receive, send)
        if length is not None or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        await _error(413, "body_too_large", f"request body over {self.max_bytes} bytes")(scope, receive, send)
