"""Notebook 01 executed headless by `bgwork run` against a real embedded envserver (Chromium), tiny params."""

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.browser  # every test here starts an env server, hence Chromium

ROOT = Path(__file__).resolve().parents[1]


def bgwork_run(tmp_path, *args):
    env = {**os.environ, "BGWORK_RUNS_DIR": str(tmp_path / "runs")}
    return subprocess.run([sys.executable, "-m", "bgwork", "run", "01", "-f", str(ROOT / "params/smoke.yaml"), *args],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


def server_left(url):
    """Any process still running the embedded server of `url` (by its --port argument)?"""
    port = url.rsplit(":", 1)[1]
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "--port" in cmd and cmd[cmd.index("--port") + 1:][:1] == [port]:
            found.append(p.pid)
    return found


def test_smoke_passes_and_reports(tmp_path):
    out = bgwork_run(tmp_path, "-p", "smoke.tasks=[click-test,choose-date]")  # choose-date: no scripted solver
    assert out.returncode == 0, out.stderr[-3000:]
    (d,) = (tmp_path / "runs").iterdir()
    report = d / "01_env_smoke_test.html"
    assert f"report: {report}" in out.stdout
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["smoke/passed"] is True and metrics["smoke/checks_total"] == 12  # 2 server + 5 per task
    assert (metrics["smoke/checks_skipped"], metrics["smoke/checks_passed"]) == (1, 11)  # solving choose-date
    assert metrics["smoke/reset_seconds_mean"] > 0 and metrics["smoke/step_seconds_mean"] > 0
    html = report.read_text()
    assert "malformed action refused" in html and "data:image/png;base64," in html  # table and chart
    assert "skipped: no scripted solver" in html and "1 skipped" in html
    assert "tasks: 100%" in html and "tasks:   0%" not in html  # headless text bar: only its final state
    assert (d / "envserver.log").exists()
    assert not server_left(metrics["smoke/env_url"]), "the embedded envserver is still running"


def test_failed_check_fails_the_run(tmp_path):
    out = bgwork_run(tmp_path, "-p", "smoke.tasks=[no-such-task]")
    assert out.returncode == 1
    assert "smoke test FAILED" in out.stderr
    (d,) = (tmp_path / "runs").iterdir()
    html = (d / "01_env_smoke_test.html").read_text()
    assert "This run FAILED" in html and "unknown_task" in html
    metrics = json.loads((d / "metrics.json").read_text())  # recorded before the verdict raises
    assert metrics["smoke/passed"] is False and metrics["smoke/checks_passed"] < metrics["smoke/checks_total"]
    assert not server_left(metrics["smoke/env_url"])
