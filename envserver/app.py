"""The HTTP API. Client mistakes get 4xx with {"error": {"code", "message"}}; a dead browser gets 503 session_lost.

The routes are the same whichever backend serves the sessions: live Chromium (envserver.live) or a
recording (envserver.replay). Either way an action string goes through envserver.grammar first.
"""

from __future__ import annotations

import logging
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import API_VERSION, __version__
from .grammar import ActionError, parse_action
from .metrics import Metrics
from .openenv import add_openenv_routes
from .pool import Episode, PoolFull, SessionLost, SessionPool, UnknownSession
from .schemas import ActionObject, ApiError, CloseRequest, ResetRequest, StepRequest
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
                       on_reap=metrics.reaped.inc)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.close_all()  # no chromium or driver outlives the server

    app = FastAPI(title="bgwork envserver", version=API_VERSION, lifespan=lifespan,
                  description="Offline BrowserGym MiniWoB++ sessions over HTTP.")
    app.state.pool, app.state.metrics, app.state.settings, app.state.backend = pool, metrics, settings, backend
    _install_guards(app, settings, metrics)

    @app.get("/health")
    def health() -> dict:
        return {"status": "healthy", "version": __version__, "active_sessions": pool.active,  # OpenEnv's word
                "max_sessions": pool.max_sessions, **backend.health()}

    @app.get("/tasks")
    def tasks() -> dict:
        seeds = backend.seeds()  # a replay serves only its recorded seeds
        return {"tasks": backend.tasks(), **({"seeds": seeds} if seeds is not None else {})}

    @app.get("/metrics")
    def prometheus() -> PlainTextResponse:
        metrics.active.set(pool.active)
        body, content_type = metrics.render()
        return PlainTextResponse(body, media_type=content_type)

    @app.post("/reset")
    def reset(req: ResetRequest | None = None) -> dict:
        req = req or ResetRequest()
        task = req.task or settings.default_task
        try:
            backend.check(task, req.seed)
        except UnknownTask as e:
            raise ApiError(400, "unknown_task", str(e), suggestions=e.suggestions) from None
        except UnknownSeed as e:
            raise ApiError(400, "unknown_seed", str(e)) from None
        session = _get(pool, req.session_id) if req.session_id else _create(pool)
        with metrics.timed("reset"):
            observation, info = _session_call(
                session, lambda: session.reset(task, req.seed, req.include_screenshot, req.include_pruned_html),
                metrics)
        session.task_name, session.episode = task, Episode(task, req.seed, req.episode_id)
        _remember(session, observation)
        metrics.resets.labels(task).inc()
        return {"session_id": session.id, "observation": observation,
                "info": {"task": task, "seed": req.seed, **info}, "reward": None, "done": False}

    @app.post("/step")
    def step(req: StepRequest) -> dict:
        session = _get(pool, req.session_id)
        if session.task_name is None:
            raise ApiError(409, "not_reset", "this session has no episode yet: POST /reset with its session_id first")
        raw = req.action.action_str if isinstance(req.action, ActionObject) else req.action
        metrics.steps.labels(session.task_name).inc()
        try:
            action = parse_action(raw, viewport=session.viewport)
        except ActionError as e:  # never executed: the browser sees nothing
            metrics.action_errors.labels("invalid").inc()
            obs = {**session.last_obs, "last_action": raw[:200], "last_action_error": f"InvalidAction: {e}"}
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

    @app.post("/close")
    def close(req: CloseRequest) -> dict:
        try:
            pool.close(req.session_id)
        except UnknownSession as e:
            raise ApiError(404, "unknown_session", str(e)) from None
        metrics.closed.inc()
        return {"ok": True}

    add_openenv_routes(app, reset=reset, step=step, close=close)
    return app


def _get(pool: SessionPool, session_id: str):
    try:
        return pool.get(session_id)
    except UnknownSession as e:
        raise ApiError(404, "unknown_session", str(e)) from None


def _create(pool: SessionPool):
    try:
        return pool.create()
    except PoolFull as e:
        raise ApiError(429, "pool_full", str(e)) from None


def _session_call(session, fn, metrics: Metrics):
    try:
        return fn()
    except SessionLost as e:
        metrics.lost.inc()
        raise ApiError(503, "session_lost", f"{e}; POST /reset (same or no session_id) to recover",
                       session_id=session.id) from None


def _remember(session, observation: dict) -> None:
    """An invalid action is answered with the last observation (never a browser call): keep it, sans screenshot."""
    session.last_obs = {k: v for k, v in observation.items() if k not in ("screenshot", "pruned_html")}


# ---- guards: errors, auth, body size --------------------------------------------------------------

def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


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
        return _error(e.status_code, codes.get(e.status_code, f"http_{e.status_code}"), str(e.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error(500, "internal", f"{type(e).__name__}: {str(e)[:500]}")

    @app.middleware("http")
    async def auth_and_size(request: Request, call_next):
        started = time.perf_counter()
        if settings.token and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
                return _error(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer ...)")
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > settings.max_body_bytes):
            return _error(413, "body_too_large", f"request body over {settings.max_body_bytes} bytes")
        if size is None and request.method == "POST":
            body = await request.body()  # chunked upload: measure what actually came
            if len(body) > settings.max_body_bytes:
                return _error(413, "body_too_large", f"request body over {settings.max_body_bytes} bytes")
        response = await call_next(request)
        metrics.observe_request(request.url.path, time.perf_counter() - started)
        return response
