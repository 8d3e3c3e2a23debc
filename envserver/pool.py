"""A bounded pool of sessions (browser or replay), with idle reaping. Closed ids are never reused (uuid4) nor revived.

A session is whatever the backend's `new_session(session_id)` makes: it has `id`, `last_used` (monotonic
seconds) and `close()`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass
class Episode:
    """What GET /state reports about a session's current episode (OpenEnv's State: episode_id, step_count)."""
    task: str
    seed: int | None
    episode_id: str | None = None  # the client's (OpenEnv lets it name episodes), else a fresh one
    step_count: int = 0
    cum_reward: float = 0.0
    done: bool = False

    def __post_init__(self):
        self.episode_id = self.episode_id or uuid.uuid4().hex

    def record(self, reward: float, done: bool) -> None:
        self.step_count += 1
        self.cum_reward += reward
        self.done = self.done or done


class SessionLost(RuntimeError):
    """The session's browser died (crash, OOM kill): an infrastructure failure, never a reward of 0."""


class SessionTimeout(SessionLost):
    """A browser call did not answer in time; the session is then treated as lost."""


class PoolFull(RuntimeError):
    pass


class UnknownSession(KeyError):
    def __init__(self, session_id: str, closed: bool):
        self.session_id, self.closed = session_id, closed
        super().__init__(f"session {session_id!r} {'was closed' if closed else 'does not exist'}; "
                         "POST /reset without session_id opens a new one")

    def __str__(self) -> str:
        return self.args[0]


class SessionPool:
    def __init__(self, max_sessions: int, idle_timeout: float, new_session: Callable[[str], Any], on_reap=None):
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self._new_session = new_session
        self._sessions: dict[str, Any] = {}
        self._closed_ids: collections.OrderedDict[str, None] = collections.OrderedDict()  # bounded memory
        self._reserved = 0
        self._lock = threading.Lock()
        self._on_reap = on_reap
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="session-reaper", daemon=True)
        self._reaper.start()

    @property
    def active(self) -> int:
        return len(self._sessions)

    def create(self):
        with self._lock:
            if len(self._sessions) + self._reserved >= self.max_sessions:
                raise PoolFull(f"all {self.max_sessions} sessions are in use; close one or retry later")
            self._reserved += 1
        try:
            session = self._new_session(uuid.uuid4().hex)  # a browser starts outside the lock
        finally:
            with self._lock:
                self._reserved -= 1
        with self._lock:
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str):
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise UnknownSession(session_id, closed=session_id in self._closed_ids)
            return session

    def close(self, session_id: str) -> None:
        self._remove(session_id).close()

    def _remove(self, session_id: str):
        """Take the session out of the pool (its id is then closed for good); the caller closes its browser."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
            if session is None:
                raise UnknownSession(session_id, closed=session_id in self._closed_ids)
            self._closed_ids[session_id] = None
            while len(self._closed_ids) > 100_000:
                self._closed_ids.popitem(last=False)
        return session

    def close_all(self) -> None:
        self._stop.set()
        for sid in list(self._sessions):
            try:
                self.close(sid)
            except UnknownSession:
                pass

    def _reap_loop(self) -> None:
        while not self._stop.wait(min(5.0, max(self.idle_timeout / 4, 0.05))):
            now = time.monotonic()
            idle = [s.id for s in list(self._sessions.values()) if now - s.last_used > self.idle_timeout]
            for sid in idle:
                log.info("reaping idle session %s", sid)
                try:
                    session = self._remove(sid)
                except UnknownSession:
                    continue
                if self._on_reap:  # counted as the session leaves the pool, not after its browser is down
                    self._on_reap()
                session.close()
