"""`python -m envserver --host 127.0.0.1 --port 8000 --max-sessions 4` (live browsers)
or `python -m envserver --replay FILE` (a recording from `python -m envserver.record`: no browser needed)."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import os
import sys

import uvicorn

from .app import ServerSettings, create_app, make_backend

TOKEN_ENV = "BGWORK_ENV_TOKEN"
# envserver.session's defaults, written here so a replay server never imports the browser stack; a test
# keeps them equal.
PRE_OBSERVATION_DELAY, CALL_TIMEOUT, ACTION_TIMEOUT_MS, STEP_DEADLINE = 0.1, 60.0, 1500, 30.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="envserver", description="Offline BrowserGym MiniWoB++ server")
    p.add_argument("--host", default="127.0.0.1", help="bind address; non-loopback requires $%s" % TOKEN_ENV)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-sessions", type=int, default=4, help="bound on open sessions (429 beyond)")
    p.add_argument("--idle-timeout", type=float, default=600.0, help="seconds before an idle session is reaped")
    p.add_argument("--evict-idle-s", type=float, default=60.0,
                   help="when the pool is full, a new session evicts the least recently used session idle at least "
                        "this long (a client that never closes its sessions cannot lock others out)")
    p.add_argument("--task", default="click-test", help="task used when a reset names none")
    p.add_argument("--replay", metavar="FILE", help="serve this recording (python -m envserver.record) instead of "
                                                    "live browsers: no Chromium or Playwright needed")
    p.add_argument("--pre-observation-delay", type=float, default=PRE_OBSERVATION_DELAY,
                   help="seconds to wait after an action before observing (BrowserGym default 0.5)")
    p.add_argument("--slow-mo", type=int, default=0, help="Playwright slow_mo in ms (MiniWoB tasks ask 100)")
    p.add_argument("--call-timeout", type=float, default=CALL_TIMEOUT,
                   help="seconds a reset (or a browser start) may take before the session counts as lost")
    p.add_argument("--step-deadline-s", type=float, default=STEP_DEADLINE,
                   help="seconds a step may take; past it the session's browser is torn down and relaunched in its "
                        "own thread, and the step answers 503 session_lost")
    p.add_argument("--action-timeout-ms", type=int, default=ACTION_TIMEOUT_MS,
                   help="Playwright timeout of each click/fill/press in the page (BrowserGym 500)")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    if args.max_sessions < 1:
        p.error("--max-sessions must be >= 1")
    if args.action_timeout_ms < 1:
        p.error("--action-timeout-ms must be >= 1")
    for name in ("call_timeout", "step_deadline_s"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if not args.evict_idle_s >= 0:
        p.error("--evict-idle-s must be >= 0")
    return args


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_from(args: argparse.Namespace, token: str | None = None) -> ServerSettings:
    session = None
    if not args.replay:
        from .session import SessionSettings

        session = SessionSettings(pre_observation_delay=args.pre_observation_delay, slow_mo=args.slow_mo,
                                  call_timeout=args.call_timeout, action_timeout_ms=args.action_timeout_ms,
                                  step_deadline=args.step_deadline_s)
    return ServerSettings(max_sessions=args.max_sessions, idle_timeout=args.idle_timeout, default_task=args.task,
                          token=token, session=session, replay=args.replay, evict_idle=args.evict_idle_s)


def main(argv=None) -> None:
    args = parse_args(argv)
    token = os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        sys.exit(f"envserver: binding {args.host} exposes browsers beyond this machine; "
                 f"set {TOKEN_ENV} to a secret bearer token first")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(args, token)
    try:
        backend = make_backend(settings)
    except ValueError as e:  # an unreadable recording: say which file and why, no traceback
        sys.exit(f"envserver: {e}")
    if settings.replay and args.task not in backend.tasks():
        if args.task != parse_args([]).task:
            sys.exit(f"envserver: --task {args.task} is not in the recording {args.replay} "
                     f"(it has {', '.join(backend.tasks())})")
        settings.default_task = backend.tasks()[0]
    health = backend.health()
    if settings.replay:
        logging.getLogger("envserver").info("replaying %s (%d episodes of %s); no browser", settings.replay,
                                            health["replay"]["episodes"], ", ".join(backend.tasks()))
    else:
        logging.getLogger("envserver").info("live browsers: %s", health["browser"])
    # h11 + wsproto on asyncio: the same stack whatever optional speedups happen to be installed
    uvicorn.run(create_app(settings, backend), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=30, loop="asyncio", http="h11", ws=_websocket_protocol(),
                ws_max_size=settings.max_body_bytes)


def _websocket_protocol() -> str:
    """wsproto (a dependency) serves /ws; an install without it still serves HTTP, and says why /ws is off."""
    if importlib.util.find_spec("wsproto") is not None:
        return "wsproto"
    logging.getLogger(__name__).warning("wsproto is not installed: /ws (openenv-core 0.3's client) is disabled; "
                                        "pip install wsproto")
    return "none"


if __name__ == "__main__":
    main()
