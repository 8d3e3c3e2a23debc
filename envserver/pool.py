"""A bounded pool of sessions (browser or replay), with idle eviction and reaping. Closed ids are never reused
(uuid4) nor revived.

A session is whatever the backend's `new_session(session_id)` makes: it has `id`, `last_used` (monotonic
seconds) and `close()`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
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


class SessionBusy(RuntimeError):
    """Another request is using this session: a session plays one action at a time."""


class UnknownSession(KeyError):
    def __init__(self, session_id: str, why: str | None):
        self.session_id, self.closed = session_id, why is not None
        super().__init__(f"session {session_id!r} {why or 'does not exist'}; "
                         "POST /reset without session_id opens a new one")

    def __str__(self) -> str:
        return self.args[0]


@dataclass
class _Entry:
    session: Any
    busy: threading.Lock = field(default_factory=threading.Lock)
    by_id: bool = False  # some request named it by session_id
    by_cookie: bool = False  # some request reached it through the cookie alone (openenv-core 0.1's client)
    superseded: bool = False  # its cookie client has moved on to a newer session: evicted first


class SessionPool:
    """At most `max_sessions` sessions. When full, a new session evicts the least recently used idle one:
    first any that its cookie-only client has left behind (superseded), then any idle >= `evict_idle` s.
    Independently, a reaper closes sessions idle > `idle_timeout` s. Busy sessions are never taken."""

    def __init__(self, max_sessions: int, idle_timeout: float, new_session: Callable[[str], Any], on_reap=None,
                 evict_idle: float = 60.0, on_evict=None):
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.evict_idle = evict_idle
        self._new_session = new_session
        self._entries: dict[str, _Entry] = {}
        self._gone: collections.OrderedDict[str, str] = collections.OrderedDict()  # id -> why (bounded memory)
        self._reserved = 0
        self._lock = threading.Lock()
        self._on_reap, self._on_evict = on_reap, on_evict
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="session-reaper", daemon=True)
        self._reaper.start()

    @property
    def active(self) -> int:
        return len(self._entries)

    def get(self, session_id: str):
        with self._lock:
            return self._entry(session_id).session

    @contextlib.contextmanager
    def create(self):
        """A new session, held (busy) for the caller until the `with` ends. PoolFull if nothing can be evicted."""
        with self._lock:
            victim = None
            if len(self._entries) + self._reserved >= self.max_sessions:
                victim = self._evictable()
                if victim is None:
                    raise PoolFull(f"all {self.max_sessions} sessions are in use (none idle for {self.evict_idle:g} s, "
                                   "the eviction threshold); close one or retry later")
                idle = time.monotonic() - victim.session.last_used
                self._forget(victim.session.id, f"was evicted (idle {idle:.0f} s while the pool was full)")
            self._reserved += 1
        if victim is not None:
            log.info("evicting idle session %s", victim.session.id)
            if self._on_evict:
                self._on_evict()
            _close_in_background(victim.session)
        try:
            session = self._new_session(uuid.uuid4().hex)  # a browser starts outside the lock
        finally:
            with self._lock:
                self._reserved -= 1
        entry = _Entry(session)
        entry.busy.acquire()
        with self._lock:
            self._entries[session.id] = entry
        try:
            yield session
        finally:
            session.last_used = time.monotonic()
            entry.busy.release()

    @contextlib.contextmanager
    def hold(self, session_id: str, by_cookie: bool = False):
        """The session, for this caller alone until the `with` ends; SessionBusy while another request has it."""
        with self._lock:
            entry = self._entry(session_id)
            if not entry.busy.acquire(blocking=False):
                raise SessionBusy(f"session {session_id!r} is busy with another request; a session plays one "
                                  "action at a time: wait for that answer")
            entry.by_cookie, entry.by_id = entry.by_cookie or by_cookie, entry.by_id or not by_cookie
            entry.session.last_used = time.monotonic()
        try:
            yield entry.session
        finally:
            entry.session.last_used = time.monotonic()
            entry.busy.release()

    def supersede(self, session_id: str) -> None:
        """Its cookie client opened a newer session: a session only ever reached through that cookie is now
        unreachable for it, so it goes first when the pool is full."""
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is not None and entry.by_cookie and not entry.by_id:
                entry.superseded = True

    def close(self, session_id: str) -> None:
        with self._lock:
            session = self._entry(session_id).session
            self._forget(session_id, "was closed")
        session.close()

    def close_all(self) -> None:
        self._stop.set()
        with self._lock:
            sessions = [e.session for e in self._entries.values()]
            for s in sessions:
                self._forget(s.id, "was closed (server shutdown)")
        for s in sessions:
            s.close()

    def _entry(self, session_id: str) -> _Entry:
        entry = self._entries.get(session_id)
        if entry is None:
            raise UnknownSession(session_id, self._gone.get(session_id))
        return entry

    def _forget(self, session_id: str, why: str) -> None:
        """Take it out of the pool (under the lock); its id is never valid again. The caller closes it."""
        self._entries.pop(session_id)
        self._gone[session_id] = why
        while len(self._gone) > 100_000:
            self._gone.popitem(last=False)

    def _evictable(self) -> _Entry | None:
        """Under the lock: the superseded or longest-idle session that is idle, and now held for removal."""
        now = time.monotonic()
        candidates = sorted((e for e in self._entries.values()
                             if e.superseded or now - e.session.last_used >= self.evict_idle),
                            key=lambda e: (not e.superseded, e.session.last_used))
        for entry in candidates:
            if entry.busy.acquire(blocking=False):  # never released: the session leaves the pool
                return entry
        return None

    def _reap_loop(self) -> None:
        while not self._stop.wait(min(5.0, max(self.idle_timeout / 4, 0.05))):
            now = time.monotonic()
            reaped = []
            with self._lock:
                for entry in list(self._entries.values()):
                    if now - entry.session.last_used > self.idle_timeout and entry.busy.acquire(blocking=False):
                        self._forget(entry.session.id, f"was reaped (idle over {self.idle_timeout:g} s)")
                        reaped.append(entry.session)
            for session in reaped:
                log.info("reaping idle session %s", session.id)
                if self._on_reap:  # counted as the session leaves the pool, not after its browser is down
                    self._on_reap()
                session.close()


def _close_in_background(session) -> None:
    """Closing a browser takes a moment: the request that evicted it should not wait for that."""
    threading.Thread(target=session.close, name=f"close-{session.id[:8]}", daemon=True).start()
