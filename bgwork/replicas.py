"""Several env servers behind one client: new sessions go to the least loaded one, a dead one is left out.

    client = connect(env_url, params.env)        # an EnvClient for one URL, a ReplicaClient for a list
    player = EpisodePlayer(client, ..., max_parallel=session_budget(client, params.env))

A ReplicaClient answers like an EnvClient (reset / step / close / tasks / seeds / health). A session stays on
the server that opened it; a new one goes to the server with the lowest share of its sessions in use (its
GET /health `active_sessions` over `max_sessions`, plus the resets this client has in flight there; ties go
round-robin from the rank's own offset, so ranks start on different servers).

A server that stops answering (refused, reset, timed out, and then no /health) is left out: the call that
found it raises ServerUnavailable, an infrastructure failure, so EpisodePlayer re-runs that episode on the
others and never scores it 0. Only when no server is left does a call raise NoEnvServerLeft, which stops the
run with every server's reason. A server left out is asked again after REPROBE_S (an external one restarted).
"""

from __future__ import annotations

import logging
import threading
import time

import httpx

from bgwork import ranks
from bgwork.config import EnvParams
from bgwork.envclient import EnvClient, EnvError, ServerUnavailable
from bgwork.outage import InfrastructureError

REPROBE_S = 30.0  # seconds before a server left out is asked for /health again
PROBE_TIMEOUT_S = 5.0

log = logging.getLogger(__name__)


class NoEnvServerLeft(InfrastructureError):
    """Every env server of the run is gone; not an infrastructure hiccup to retry but the end of the run."""


def connect(env_url: str | list[str], env: EnvParams):
    """A client for the run's env server(s): `env_url` is what `bgwork.embedded.env_server` yielded."""
    urls = [env_url] if isinstance(env_url, str) else list(env_url)
    if len(urls) == 1:
        return EnvClient.connect(urls[0], env)
    return ReplicaClient(urls, token=env.token, timeout=env.request_timeout, first=ranks.rank(),
                         outage_timeout_s=env.outage_timeout_s)


def session_budget(client, env: EnvParams) -> int:
    """Sessions this rank may hold at once: the servers' capacity (a ReplicaClient's summed max_sessions of the
    servers still alive, else env.max_sessions) shared by every rank of the run."""
    capacity = getattr(client, "max_sessions", None) or env.max_sessions
    return max(1, capacity // ranks.world_size())


class ReplicaClient:
    def __init__(self, urls: list[str], token: str | None = None, timeout: float = EnvParams.request_timeout,
                 first: int = 0, outage_timeout_s: float = EnvParams.outage_timeout_s):
        if len(urls) < 2:
            raise ValueError(f"ReplicaClient needs several env server URLs, got {urls}")
        self.clients = [EnvClient(u, token=token, timeout=timeout) for u in urls]
        self.urls = [c.base_url for c in self.clients]
        self.base_url = ", ".join(self.urls)  # for messages, as EnvClient's
        self.outage_timeout_s = outage_timeout_s
        self._headers = dict(self.clients[0]._http.headers)
        self._lock = threading.Lock()
        self._owner: dict[str, int] = {}  # session id -> server index
        self._pending = [0] * len(urls)  # resets in flight per server, not yet in its active_sessions
        self._dead: dict[int, tuple[str, float]] = {}  # server index -> (why, when)
        self._turn = first % len(urls)
        healths = [self._probe(i) for i in range(len(urls))]
        down = [f"{u}" for u, h in zip(self.urls, healths) if h is None]
        if down:
            raise ConnectionError(f"env servers {down}: GET /health did not answer 200; are they running?")
        self._capacity = [int(h.get("max_sessions") or 0) for h in healths]
        self._check_same_tasks()

    @property
    def max_sessions(self) -> int | None:
        """Sessions the servers still alive can hold together (it shrinks when one dies)."""
        return sum(c for i, c in enumerate(self._capacity) if i not in self._dead) or None

    # --- EnvClient's interface ---------------------------------------------------------------------------

    def health(self, timeout: float | None = None) -> dict:
        """Every server's /health, summed; ServerUnavailable when none answers (as EnvClient's when its one is down)."""
        per = [self._probe(i) for i in range(len(self.clients))]
        live = [h for h in per if h]
        if not live:
            raise ServerUnavailable(0, "unavailable", f"none of the env servers {self.base_url} answers GET /health")
        return {"status": "healthy" if live else "unavailable",
                "active_sessions": sum(h.get("active_sessions", 0) for h in live),
                "max_sessions": sum(h.get("max_sessions", 0) for h in live),
                "replicas": [{"url": u, **(h or {"status": "unavailable"})} for u, h in zip(self.urls, per)]}

    def tasks(self) -> list[str]:
        return self._on(self._any_live(), "tasks")

    def seeds(self):
        return self._on(self._any_live(), "seeds")

    def reset(self, task: str, seed: int | None = None, session_id: str | None = None,
              include_screenshot: bool = False) -> dict:
        if session_id:
            return self._on(self._owner_of(session_id), "reset", task, seed, session_id, include_screenshot)
        i = self._pick()
        try:
            out = self._on(i, "reset", task, seed, None, include_screenshot)
        finally:
            with self._lock:
                self._pending[i] -= 1
        with self._lock:
            self._owner[out["session_id"]] = i
        return out

    def step(self, session_id: str, action: str, include_screenshot: bool = False) -> dict:
        return self._on(self._owner_of(session_id), "step", session_id, action, include_screenshot)

    def close(self, session_id: str) -> None:
        with self._lock:
            i = self._owner.pop(session_id, None)
        if i is None or i in self._dead:
            return  # never ours, or its server is gone and took the session with it
        self._on(i, "close", session_id)

    def shutdown(self) -> None:
        for c in self.clients:
            c.shutdown()

    def __enter__(self) -> "ReplicaClient":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # --- which server ------------------------------------------------------------------------------------

    def _pick(self) -> int:
        """The least loaded live server for a new session (and count the reset as in flight there)."""
        with self._lock:
            loads = {}
            for i in self._rotation():
                if i in self._dead and time.monotonic() - self._dead[i][1] < REPROBE_S:
                    continue
                h = self._probe(i)
                if h is None:
                    self._bury(i, "GET /health did not answer")
                    continue
                self._dead.pop(i, None)
                loads[i] = (h.get("active_sessions", 0) + self._pending[i]) / max(h.get("max_sessions") or 1, 1)
            if not loads:
                raise NoEnvServerLeft(self._obituary())
            i = min(loads, key=loads.get)  # the first of equals in rotation order
            self._turn = (i + 1) % len(self.clients)
            self._pending[i] += 1
            return i

    def _rotation(self) -> list[int]:
        n = len(self.clients)
        return [(self._turn + k) % n for k in range(n)]

    def _owner_of(self, session_id: str) -> int:
        i = self._owner.get(session_id)
        if i is None:
            raise EnvError(404, "unknown_session", f"session {session_id!r} was not opened through this client")
        if i in self._dead:
            raise ServerUnavailable(0, "unavailable", f"the env server of session {session_id!r}, {self.urls[i]}, is "
                                                      f"gone ({self._dead[i][0]})")
        return i

    def _any_live(self) -> int:
        live = [i for i in self._rotation() if i not in self._dead]
        if not live:
            raise NoEnvServerLeft(self._obituary())
        return live[0]

    def _on(self, i: int, method: str, *args):
        try:
            return getattr(self.clients[i], method)(*args)
        except ServerUnavailable as e:
            if self._probe(i) is None:
                with self._lock:
                    self._bury(i, str(e))
            raise

    def revive(self, up: list[EnvClient]) -> None:
        """Servers that answer /health again after an outage (bgwork.outage) take new sessions again."""
        with self._lock:
            for i, c in enumerate(self.clients):
                if c in up and self._dead.pop(i, None):
                    log.warning("env server %s answers again and takes sessions again", self.urls[i])

    def _bury(self, i: int, why: str) -> None:
        if i not in self._dead:
            log.warning("env server %s left out: %s (%d of %d left)", self.urls[i], why,
                        len(self.clients) - len(self._dead) - 1, len(self.clients))
        self._dead[i] = (why, time.monotonic())

    def _obituary(self) -> str:
        gone = "; ".join(f"{self.urls[i]}: {why}" for i, (why, _) in sorted(self._dead.items()))
        return f"no env server is left of the {len(self.clients)} this run uses ({gone})"

    def _probe(self, i: int) -> dict | None:
        try:
            r = httpx.get(self.urls[i] + "/health", headers=self._headers, timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def _check_same_tasks(self) -> None:
        answers = [(sorted(c.tasks()), c.seeds()) for c in self.clients]
        odd = [u for u, a in zip(self.urls, answers) if a != answers[0]]
        if odd:
            raise ValueError(f"env servers {odd} serve other tasks than {self.urls[0]}: every server of env.urls / "
                             f"env.replicas must serve the same tasks (and the same recording)")
