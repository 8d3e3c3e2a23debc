"""Prometheus metrics, on a registry per app (several servers in one process stay separate)."""

from __future__ import annotations

import contextlib
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ROUTES = {"/health", "/tasks", "/reset", "/step", "/close", "/metrics", "/state", "/schema", "/metadata", "/mcp"}
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.active = Gauge("envserver_sessions_active", "open browser sessions", registry=r)
        self.resets = Counter("envserver_resets", "episode resets", ["task"], registry=r)
        self.steps = Counter("envserver_steps", "steps received", ["task"], registry=r)
        self.action_errors = Counter("envserver_action_errors", "actions that failed: invalid (rejected "
                                     "unexecuted) or browser (raised while executing)", ["kind"], registry=r)
        self.lost = Counter("envserver_sessions_lost", "calls answered session_lost", registry=r)
        self.closed = Counter("envserver_sessions_closed", "sessions closed by clients", registry=r)
        self.reaped = Counter("envserver_sessions_reaped", "idle sessions closed by the reaper", registry=r)
        self.evicted = Counter("envserver_sessions_evicted", "idle sessions closed to make room in a full pool",
                               registry=r)
        self.replay_unrecorded = Counter("envserver_replay_unrecorded", "replay mode: actions with no recorded "
                                         "outcome, answered 'not recorded' with reward 0", registry=r)
        self.latency = Histogram("envserver_request_seconds", "HTTP request latency", ["route"],
                                 buckets=BUCKETS, registry=r)
        self.browser_time = Histogram("envserver_browser_seconds", "time inside the browser per call", ["op"],
                                      buckets=BUCKETS, registry=r)

    def observe_request(self, path: str, seconds: float) -> None:
        self.latency.labels(path if path in ROUTES else "other").observe(seconds)

    @contextlib.contextmanager
    def timed(self, op: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.browser_time.labels(op).observe(time.perf_counter() - started)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
