"""Shared fixtures: a real envserver (uvicorn + Playwright + system Chromium) on a free loopback port."""

from __future__ import annotations

import contextlib

import psutil
import pytest

from bgwork.config import EnvParams
from bgwork.embedded import EmbeddedServer
from bgwork.envclient import EnvClient


@contextlib.contextmanager
def running_server(max_sessions: int = 4, *extra_args: str, **env_fields):
    server = EmbeddedServer(EnvParams(max_sessions=max_sessions, **env_fields), extra_args=extra_args)
    try:
        yield server
    finally:
        server.stop()


def browser_processes(server_pid: int) -> list[psutil.Process]:
    """Chromium and Playwright-driver processes under the server."""
    try:
        return psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="session")
def envserver():
    """One shared server for tests that only need ordinary sessions (each test closes what it opens)."""
    with running_server(4) as server:
        yield server


@pytest.fixture
def client(envserver):
    with EnvClient(envserver.url) as c:
        yield c


@pytest.fixture(scope="session")
def small_replay(tmp_path_factory):
    """A replay server (2 sessions) over a small recording made here: click-test, seeds 0-2, clicks, depth 1."""
    from envserver.record import record

    path = tmp_path_factory.mktemp("small-replay") / "click-test.jsonl.gz"
    record(["click-test"], [0, 1, 2], path, sessions=1, depth=1, kinds=("click",))
    with running_server(2, "--replay", str(path)) as server:
        yield server
