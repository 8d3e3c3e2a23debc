"""bgwork.embedded: external URL checked and left alone; embedded server started, stopped, failures explained."""

import psutil
import pytest

from bgwork.config import EnvParams
from bgwork.embedded import EmbeddedServer, env_server
from bgwork.envclient import EnvClient


@pytest.mark.browser
def test_embedded_server_stops_with_its_whole_process_group(tmp_path):
    with env_server(EnvParams(max_sessions=1), log_dir=tmp_path) as url:
        client = EnvClient(url)
        client.reset("click-test")  # starts Playwright + Chromium under the server
        port = url.rsplit(":", 1)[1]
        (server,) = [p for p in psutil.Process().children() if port in p.cmdline()]  # not other tests' servers
        started = [server, *server.children(recursive=True)]
        assert any("chromium" in p.name() for p in started)
        client.shutdown()
    gone, alive = psutil.wait_procs(started, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert "Application shutdown complete" in (tmp_path / "envserver.log").read_text()


@pytest.mark.browser
def test_external_url_is_checked_and_left_running():
    server = EmbeddedServer(EnvParams(max_sessions=1))
    try:
        with env_server({"url": server.url + "/"}) as url:
            assert url == server.url and EnvClient(url).health()["status"] == "healthy"
        assert server.proc.poll() is None  # not ours to stop
    finally:
        server.stop()
    assert server.proc.poll() is not None


@pytest.mark.browser
def test_unreachable_url_and_failed_start_say_why(tmp_path):
    with pytest.raises(ConnectionError, match=r"env.url = http://127.0.0.1:9: GET /health did not answer"):
        with env_server(EnvParams(url="http://127.0.0.1:9")):
            pass
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 2 while starting.*unrecognized arguments: --bogus"):
        EmbeddedServer(EnvParams(), log_path=tmp_path / "s.log", extra_args=("--bogus",))
