"""The env server a notebook talks to: `env.url` if set, else an embedded one on a free loopback port.

    with env_server(params.env, log_dir=run_dir) as url:
        client = EnvClient(url, ...)

Several servers (`env.urls`, or `env.replicas: K` embedded ones, each a process with env.max_sessions) come as
a list of URLs; `bgwork.replicas.connect(url, params.env)` takes either.

The embedded server runs in its own process group (uvicorn + Playwright + Chromium) and is always stopped:
on leaving the `with`, when the interpreter exits (weakref.finalize), and — on Linux — when the process
that started it dies without cleaning up (a killed notebook kernel), through PR_SET_PDEATHSIG. That signal
follows the starting *thread*: start a server from a thread that lives as long as the server should.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import httpx

# Runs in the child before envserver is imported: ask Linux to SIGTERM it when its parent dies.
_BOOT = """import ctypes, os, runpy, signal, sys
parent = int(sys.argv.pop(1))
if sys.platform == "linux":
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(1)
sys.argv[0] = "envserver"
runpy.run_module("envserver", run_name="__main__", alter_sys=True)
"""


class EmbeddedServer:
    """A `python -m envserver` child process; `.url` while it runs, `.stop()` ends its whole process group."""

    def __init__(self, env, log_path: str | Path | None = None, startup_timeout: float = 180.0,
                 extra_args: tuple[str, ...] = (), port: int | None = None, wait: bool = True):
        """`port`: a fixed loopback port (e.g. to restart a server where its clients expect it); None: a free one.
        `wait=False` returns once the process is started; `wait_healthy()` then waits for it."""
        port = port or _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(log_path or tempfile.mkstemp(prefix="envserver-", suffix=".log")[1])
        args = ["--host", "127.0.0.1", "--port", str(port), "--max-sessions", str(env.max_sessions),
                "--pre-observation-delay", str(env.pre_observation_delay),
                "--action-timeout-ms", str(env.action_timeout_ms), "--step-deadline-s", str(env.step_deadline_s),
                "--evict-idle-s", str(env.evict_idle_s), *replay_args(env), *extra_args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(os.getpid()), *args],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)  # own group: stop() reaches Chromium too
        self._finalizer = weakref.finalize(self, _stop_group, self.proc)  # also runs at interpreter exit
        self.startup_timeout = startup_timeout
        if wait:
            self.wait_healthy()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self._finalizer()  # idempotent: a finalizer runs at most once

    def wait_healthy(self) -> None:
        """Return when /health answers; else stop the server and raise with the end of its log."""
        try:
            self._wait_healthy(self.startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the embedded envserver exited with code {self.proc.returncode} while starting; "
                                   f"its log ({self.log_path}) ends with:\n{_tail(self.log_path)}")
            if _healthy(self.url):
                return
            time.sleep(0.25)
        raise TimeoutError(f"the embedded envserver at {self.url} was not healthy after {timeout:.0f} s; "
                           f"its log ({self.log_path}) ends with:\n{_tail(self.log_path)}")


@contextlib.contextmanager
def env_server(env, log_dir: str | Path | None = None):
    """Yield the base URL of a healthy env server, or the list of URLs of several; stop what we started.

    `env` is an EnvParams (or its dict). With `env.url` / `env.urls` set the servers are external and only checked;
    else one embedded server starts, or `env.replicas` of them.
    """
    if isinstance(env, dict):
        from bgwork.params import load_params
        env = load_params(env=env).env
    external = env.url or getattr(env, "urls", None)
    if external and getattr(env, "replay", None):
        raise ValueError(f"env.replay = {env.replay} starts an embedded replay server, but env.url(s) = {external} "
                         f"names an external one: set one of them (python -m envserver --replay FILE serves a "
                         f"recording)")
    if env.url:
        token = env.token or os.environ.get("BGWORK_ENV_TOKEN")
        if not _healthy(env.url, token):
            raise ConnectionError(f"env.url = {env.url}: GET /health did not answer 200; is the envserver running?")
        yield env.url.rstrip("/")
        return
    if getattr(env, "urls", None):
        token = env.token or os.environ.get("BGWORK_ENV_TOKEN")
        down = [u for u in env.urls if not _healthy(u, token)]
        if down:
            raise ConnectionError(f"env.urls: {down} did not answer 200 to GET /health; are those envservers running?")
        urls = [u.rstrip("/") for u in env.urls]
        yield urls if len(urls) > 1 else urls[0]
        return
    if getattr(env, "replicas", 1) > 1:
        with embedded_replicas(env, log_dir) as servers:
            yield [s.url for s in servers]
        return
    server = EmbeddedServer(env, log_path=Path(log_dir) / "envserver.log" if log_dir else None)
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def embedded_replicas(env, log_dir: str | Path | None = None):
    """env.replicas embedded servers, started together (logs: envserver-<i>.log), all stopped afterwards.

    Started from this thread: PR_SET_PDEATHSIG ends a child when the *thread* that started it exits."""
    started = []
    try:
        for i in range(env.replicas):
            started.append(EmbeddedServer(env, Path(log_dir) / f"envserver-{i}.log" if log_dir else None, wait=False))
        for server in started:
            server.wait_healthy()
        yield started
    finally:
        for server in started:
            server.stop()


def replay_args(env) -> list[str]:
    """`--replay FILE` when env.replay names a recording (relative to the project root), checked here so a
    wrong path fails with the key's name before any server starts."""
    if not getattr(env, "replay", None):
        return []
    from bgwork.runs import PROJECT_ROOT

    path = Path(env.replay).expanduser()
    path = path if path.is_absolute() else PROJECT_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"env.replay = {env.replay}: no such recording ({path}); make one with `bgwork record`")
    return ["--replay", str(path)]


def _stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the group (uvicorn closes sessions and browsers), SIGKILL whatever is left after `grace` s."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc.pid, signal.SIGKILL)  # stragglers (Chromium helpers) even when the server exited
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _healthy(url: str, token: str | None = None) -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return httpx.get(url.rstrip("/") + "/health", headers=headers, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
