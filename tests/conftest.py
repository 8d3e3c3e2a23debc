"""Shared fixtures: a real envserver (uvicorn + Playwright + system Chromium) on a free loopback port.

Test tiers (markers in pyproject.toml): `browser` tests start Chromium (a test that asks for the shared
`envserver`, directly or through `client`/`http`, is marked here; one that starts a server itself carries
`@pytest.mark.browser`); `llama_cpp` tests export a model to GGUF and run it in llama.cpp; `slow` experiments
stay out of the default suite; `heavy` tests (the few default tests that train or restart servers for ~20 s or
more) run in the default suite only. `pytest --fast` runs the rest, the inner loop (< 2 min on the 2-core box):
`-m "not browser and not llama_cpp and not slow and not heavy"`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import psutil
import pytest

from bgwork.config import EnvParams
from bgwork.embedded import EmbeddedServer
from bgwork.envclient import EnvClient

# The committed recording of nine single-decision MiniWoB tasks (replayed without a browser).
SINGLE_DECISION_REPLAY = Path(__file__).resolve().parents[1] / "data/replay/miniwob-single-decision.jsonl.gz"


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


FAST = "not browser and not llama_cpp and not slow and not heavy"


def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true",
                     help=f"the fast tier: tests that start no Chromium, no llama.cpp and are not heavy (-m '{FAST}')")


def pytest_configure(config):
    if config.getoption("--fast"):
        config.option.markexpr = FAST


def pytest_collection_modifyitems(items):
    for item in items:
        if "envserver" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def envserver():
    """One shared server for tests that only need ordinary sessions (each test closes what it opens)."""
    with running_server(4) as server:
        yield server


@pytest.fixture
def client(envserver):
    with EnvClient(envserver.url) as c:
        yield c


@pytest.fixture(scope="module")
def replay_server():
    """A replay server (32 sessions) over the committed recording of nine single-decision tasks: no browser."""
    with running_server(32, "--replay", str(SINGLE_DECISION_REPLAY)) as server:
        yield server


@pytest.fixture(scope="session")
def small_replay(tmp_path_factory):
    """A replay server (2 sessions) over a small recording made here: click-test, seeds 0-2, clicks, depth 1."""
    from envserver.record import record

    path = tmp_path_factory.mktemp("small-replay") / "click-test.jsonl.gz"
    record(["click-test"], [0, 1, 2], path, sessions=1, depth=1, kinds=("click",))
    with running_server(2, "--replay", str(path)) as server:
        yield server
