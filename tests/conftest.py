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
