"""Every run ends with a status: finished, failed (with its cause) or killed, and `bgwork resume` continues a run
that did not finish. Real `bgwork` processes on throwaway notebooks (papermill, the real kernel); the full-disk
case runs on a real tmpfs (needs root to mount one: skipped, saying so, where that is impossible)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ckpt_fixtures import tmpfs

from bgwork import notebook_run
from bgwork.runs import read_run

ROOT = Path(__file__).resolve().parents[1]

# First attempt: says it started, then waits to be killed. A later attempt finds the first one's mark and ends.
WAITS_FOR_KILL = '''\
# %% tags=["parameters"]
run_dir = None

# %%
import pathlib, time
from bgwork.runs import record_metric
mark = pathlib.Path(run_dir, "attempt-1")
if not mark.exists():
    mark.write_text("started")
    print("first attempt, waiting to be killed", flush=True)
    time.sleep(600)
print("second attempt goes on")
record_metric(run_dir, "waits/done", True)
'''

FIRST = '''\
# %% tags=["parameters"]
run_dir = None

# %%
from bgwork.runs import record_metric
print("first notebook ran")
record_metric(run_dir, "first/runs", 1 + __import__("bgwork.runs").runs.read_metrics(run_dir).get("first/runs", 0))
'''

# Fills the disk it runs on, then fails: everything the runner writes afterwards meets ENOSPC.
FILLS_THE_DISK = '''\
# %% tags=["parameters"]
run_dir = None

# %%
import pathlib
print("before the disk filled up", flush=True)
with open(pathlib.Path(run_dir, "ballast"), "wb") as fh:
    while True:
        fh.write(b"x" * 65536)
'''


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return str(path)


def bgwork(tmp_path: Path, *args, runs_dir: Path | None = None, **kw):
    env = {**os.environ, "BGWORK_RUNS_DIR": str(runs_dir or tmp_path / "runs"), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bgwork", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path, **kw)


@pytest.mark.heavy
def test_killed_run_is_found_killed_then_resumed_in_its_own_dir(tmp_path):
    nbs = [write(tmp_path, "first", FIRST), write(tmp_path, "waits", WAITS_FOR_KILL)]
    env = {**os.environ, "BGWORK_RUNS_DIR": str(tmp_path / "runs"), "PYTHONPATH": str(ROOT)}
    runner = subprocess.Popen([sys.executable, "-m", "bgwork", "run", *nbs], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "runs").glob("*/attempt-1")):
        assert runner.poll() is None and time.monotonic() < deadline, runner.stdout.read().decode()[-3000:]
        time.sleep(0.5)
    (d,) = (tmp_path / "runs").iterdir()
    assert json.loads((d / "run.json").read_text())["status"] == "running"
    out = bgwork(tmp_path, "resume", str(d))
    assert out.returncode == 2 and "still running (runner pid" in out.stderr  # one runner per run dir
    os.killpg(runner.pid, signal.SIGKILL)  # the runner and its kernel, as an OOM killer or a reboot would
    runner.wait(30)

    status = bgwork(tmp_path, "status", str(d))  # reading the dir finds the dead runner ...
    assert status.returncode == 0 and status.stdout.split()[0] == "killed", status.stdout
    info = json.loads((d / "run.json").read_text())  # ... and records it
    assert info["status"] == "killed" and f"bgwork resume {d}" in info["error"]
    assert [n["status"] for n in info["notebooks"]] == ["ok", "killed"]

    out = bgwork(tmp_path, "resume", str(d))
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [d.name]  # no new run dir
    info = read_run(d)
    assert info["status"] == "finished" and [n["status"] for n in info["notebooks"]] == ["ok", "ok"]
    assert [a["status"] for a in info["attempts"]] == ["killed"]
    assert info["command"].startswith("bgwork run ") and info["resume_command"] == f"bgwork resume {d}"
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics == {"first/runs": 1, "waits/done": True}  # the finished notebook was not run again
    log = (d / "run.log").read_text()
    assert log.index("first attempt, waiting to be killed") < log.index("resuming (attempt 2) from waits")
    assert log.index("resuming (attempt 2)") < log.index("second attempt goes on")
    assert "second attempt goes on" in (d / "waits.html").read_text()

    out = bgwork(tmp_path, "resume", str(d))
    assert out.returncode == 2 and "finished already" in out.stderr


def test_resume_says_what_is_not_a_run(tmp_path):
    out = bgwork(tmp_path, "resume", str(tmp_path))
    assert out.returncode == 2 and f"{tmp_path}: not a run dir of `bgwork run` (no run.json)" in out.stderr


def test_a_notebook_that_cannot_be_rendered_still_gets_a_page(tmp_path):
    """The report of a cut-off .ipynb (what a full disk leaves) is a page with the error, not a crash."""
    nbs = [write(tmp_path, "first", FIRST)]
    result = notebook_run.run(nbs, root=tmp_path / "runs")
    ipynb = result.run_dir / "first.ipynb"
    ipynb.write_text(ipynb.read_text()[:300])  # cut off mid-JSON
    nb = notebook_run.NotebookResult("first", nbs[0], status="ok")
    report = notebook_run._report(ipynb, nb, result.run_dir)
    assert nb.status == "failed" and nb.error.startswith("report: NotJSONError")
    page = Path(report).read_text()
    assert "This run FAILED" in page and "could not be rendered" in page and "first notebook ran" in page


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MiB tmpfs."""
    with tmpfs(tmp_path / "small-disk", "16m") as mnt:
        yield mnt


def test_runner_survives_its_disk_filling_up(tmp_path, small_disk):
    nbs = [write(tmp_path, "first", FIRST), write(tmp_path, "fills", FILLS_THE_DISK)]
    out = bgwork(tmp_path, "run", *nbs, runs_dir=small_disk)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "FAILED fills: OSError: [Errno 28] No space left on device" in out.stderr
    assert "Traceback" not in out.stderr
    (d,) = small_disk.iterdir()
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "failed" and info["cause"] == "ENOSPC"
    assert [n["status"] for n in info["notebooks"]] == ["ok", "failed"]
    assert "first notebook ran" in (d / "first.html").read_text()  # what was complete is still there
    assert "could not be rendered (NotJSONError" in out.stderr  # papermill's last save was cut off
    assert not (d / "fills.html").exists()  # no room even for the plain page: no empty file posing as one


def test_reading_a_dead_runners_dir_records_it_killed(tmp_path):
    """Notebook 05's inventory reads the run dirs it walks: a run left "running" by a dead runner becomes killed.
    A pid now held by a process younger than the run (pid reuse) counts as dead too."""
    from ckpt_fixtures import make_run

    from bgwork.checkpoints import inventory, inventory_table
    from bgwork.runs import this_runner, write_json

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    runners = {"dead": {**this_runner(), "pid": int(gone.stdout)},
               "reused": {**this_runner(), "started": time.time() - 86400},  # this pid, but a day "older" run
               "alive": this_runner()}
    for name, runner in runners.items():
        make_run(tmp_path / name / "tiny-random-lfm2-browsergym-20260101T000000Z", [1])
        write_json(tmp_path / name / "run.json", {"status": "running", "runner": runner,
                                                   "notebooks": [{"name": "02_debug_run", "status": "running"}]})
    runs = {r.name.split("/")[0]: r.status for r in inventory(tmp_path)}
    assert runs == {"dead": "killed", "reused": "killed", "alive": "running"}
    assert set(inventory_table(inventory(tmp_path))["run status"]) == {"killed", "running"}
    dead = json.loads((tmp_path / "dead" / "run.json").read_text())
    assert dead["status"] == "killed" and dead["notebooks"][0]["status"] == "killed" and dead["killed_detected_utc"]
