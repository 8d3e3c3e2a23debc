"""HTTP client of the envserver. Infrastructure failures raise; they are never turned into a reward of 0."""

from __future__ import annotations

import os
from typing import Any

import httpx

from bgwork.config import EnvParams


class EnvError(RuntimeError):
    """The server answered an error (status, code, message from its JSON body)."""

    def __init__(self, status: int, code: str, message: str):
        self.status, self.code, self.message = status, code, message
        super().__init__(f"envserver {status} {code}: {message}")


class SessionLost(EnvError):
    """The session's browser died: re-run the episode on a fresh reset."""


class ServerUnavailable(EnvError):
    """No answer from the server (down, unreachable, timed out)."""


class EnvClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = EnvParams.request_timeout,
                 outage_timeout_s: float = EnvParams.outage_timeout_s):
        """`timeout`: seconds per call; `outage_timeout_s`: how long a caller waits for this server to come back
        (bgwork.outage); by default the config's env.request_timeout and env.outage_timeout_s."""
        token = token or os.environ.get("BGWORK_ENV_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.outage_timeout_s = outage_timeout_s
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @property
    def clients(self) -> list["EnvClient"]:
        """The servers behind this client, what an outage waits for: this one (a ReplicaClient has several)."""
        return [self]

    def revive(self, up: list["EnvClient"]) -> None:
        """Nothing to re-admit: a single server is used again as soon as it answers (see ReplicaClient.revive)."""

    @classmethod
    def connect(cls, base_url: str, env: EnvParams) -> "EnvClient":
        """A client with the token and timeouts of the run's `env` section."""
        return cls(base_url, token=env.token, timeout=env.request_timeout, outage_timeout_s=env.outage_timeout_s)

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict[str, Any]:
        try:
            r = self._http.request(method, path, json=body, **({"timeout": timeout} if timeout else {}))
        except httpx.HTTPError as e:
            raise ServerUnavailable(0, "unavailable", f"{type(e).__name__} calling {self.base_url}{path}: {e}") from e
        if r.status_code < 400:
            return r.json()
        try:
            err = r.json()["error"]
            code, message = err["code"], err["message"]
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", r.text[:500]
        cls = SessionLost if code == "session_lost" else ServerUnavailable if r.status_code in (502, 504) else EnvError
        raise cls(r.status_code, code, message)

    def health(self, timeout: float | None = None) -> dict:
        return self._call("GET", "/health", timeout=timeout)

    def tasks(self) -> list[str]:
        return self._call("GET", "/tasks")["tasks"]

    def seeds(self) -> dict[str, list[list[int]]] | None:
        """A replay server's recorded seeds per task, as [start, end) ranges; None: a live server (any seed)."""
        return self._call("GET", "/tasks").get("seeds")

    def reset(self, task: str, seed: int | None = None, session_id: str | None = None,
              include_screenshot: bool = False) -> dict:
        """-> {session_id, observation, info}"""
        body = {"task": task, "seed": seed, "session_id": session_id, "include_screenshot": include_screenshot}
        return self._call("POST", "/reset", body)

    def step(self, session_id: str, action: str, include_screenshot: bool = False) -> dict:
        """-> {observation, reward, done, truncated, info}"""
        return self._call("POST", "/step", {"session_id": session_id, "action": action,
                                            "include_screenshot": include_screenshot})

    def close(self, session_id: str) -> None:
        self._call("POST", "/close", {"session_id": session_id})

    def shutdown(self) -> None:
        self._http.close()

    def __enter__(self) -> "EnvClient":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
