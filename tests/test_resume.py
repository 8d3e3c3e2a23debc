"""`bgwork run 02` killed and resumed, and run on a disk that fills up: real runner, kernel, env server, Chromium
and the tiny model.

- Killed -9 (kernel and runner, as an OOM killer or a reboot would) after checkpoint-2 of 6: `bgwork resume
  RUN_DIR` finds the run killed, trains steps 3-6 in the same run dir and output dir, writes final/ and one
  report covering all 6 steps, and run.json ends `finished`.
- A 64 MiB tmpfs as the runs dir: checkpoint-1 fits, checkpoint-2 does not. The runner prints the FAILED line,
  run.json says failed with ENOSPC, and checkpoint-1 is still complete and untouched.
"""

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

from bgwork import metrics as m
from bgwork.checkpoint_io import checkpoint_problem
from bgwork.tbscalars import load_scalars
from bgwork.trainer import newest_run_checkpoint
from bgwork.training_lock import LOCK_NAME, read_lock

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
# Two episodes of one short turn per step: the steps are cheap, the checkpoints real.
SMALL = ["-p", "train.per_device_train_batch_size=2", "-p", "rollout.max_episode_steps=1",
         "-p", "rollout.max_action_tokens=4"]


def bgwork_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "bgwork", *args]


def env_for(runs_dir: Path) -> dict:
    return {**os.environ, "BGWORK_RUNS_DIR": str(runs_dir), "PYTHONPATH": str(ROOT)}


def output_dir(run_dir: Path) -> Path:
    (out,) = [p for p in run_dir.iterdir() if p.name.startswith("tiny-random-lfm2-browsergym-")]
    return out


@pytest.mark.slow  # ~5 min of wall time on the loaded 2-core box (30 s of CPU); the mechanics of resume are in
@pytest.mark.timeout(1800)  # the default suite: tests/test_run_status.py (killed + resumed), test_outage.py
def test_killed_after_checkpoint_2_of_6_resumes_to_the_end_in_the_same_dir(tmp_path):
    runs = tmp_path / "runs"
    runner = subprocess.Popen(bgwork_cmd("run", "02", "-f", str(ROOT / "params/tiny.yaml"), "-p", "train.max_steps=6",
                                         "-p", "train.save_steps=2", "-p", "train.save_total_limit=3", *SMALL),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env_for(runs), cwd=ROOT,
                              start_new_session=True)
    deadline = time.monotonic() + 1200
    while not list(runs.glob("*/tiny-random-lfm2-browsergym-*/checkpoint-2")):
        assert runner.poll() is None and time.monotonic() < deadline, runner.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    (run_dir,) = runs.iterdir()
    kernel = read_lock(run_dir / LOCK_NAME)["pid"]  # the training process holds the training lock
    os.kill(kernel, signal.SIGKILL)
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait(30)
    out = output_dir(run_dir)
    assert not (out / "final").exists() and newest_run_checkpoint(run_dir).name in ("checkpoint-2", "checkpoint-4")

    resumed = subprocess.run(bgwork_cmd("resume", str(run_dir)), capture_output=True, text=True,
                             env=env_for(runs), cwd=ROOT, timeout=1500)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert [p.name for p in runs.iterdir()] == [run_dir.name]  # the same run dir ...
    assert output_dir(run_dir) == out and (out / "final" / "adapter_config.json").is_file()  # ... and output dir
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "finished" and [a["status"] for a in status["attempts"]] == ["killed"]
    assert status["resumed_from"].startswith(str(out / "checkpoint-"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/global_step"] == 6 and metrics["train/output_dir"] == str(out)
    assert sorted(p.name for p in run_dir.glob("*.html")) == ["02_debug_run.html"]  # one report ...
    loss = load_scalars(out).query(f"tag == '{m.LOSS}'")
    assert sorted(loss["step"]) == [1, 2, 3, 4, 5, 6]  # ... whose curves cover the whole run
    assert all(checkpoint_problem(out / f"checkpoint-{s}") is None for s in (2, 4, 6))
    log = (run_dir / "run.log").read_text()
    assert log.count("executing ") == 2 and "resuming (attempt 2) from 02_debug_run" in log


@pytest.fixture
def disk_64m(tmp_path):
    """A real 64 MiB tmpfs."""
    with tmpfs(tmp_path / "disk", "64m") as mnt:
        yield mnt


@pytest.mark.heavy
def test_full_disk_fails_with_enospc_and_keeps_what_was_complete(tmp_path, disk_64m):
    """A full fine-tune checkpoint of the tiny model is ~42 MB (weights 13, AdamW state 26, tokenizer 3.5)."""
    run = subprocess.run(bgwork_cmd("run", "02", "-f", str(ROOT / "params/tiny.yaml"), "-p", "lora.enabled=false",
                                    "-p", "train.max_steps=3", "-p", "train.save_steps=1",
                                    "-p", "train.save_total_limit=3", *SMALL),
                         capture_output=True, text=True, env=env_for(disk_64m), cwd=ROOT, timeout=1500)
    assert run.returncode == 1, run.stderr[-4000:]
    assert "FAILED 02_debug_run: OSError: [Errno 28] No space left on device while saving" in run.stderr
    (run_dir,) = disk_64m.iterdir()
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "failed" and status["cause"] == "ENOSPC", status
    assert "Errno 28" in status["error"]
    out = output_dir(run_dir)
    assert checkpoint_problem(out / "checkpoint-1") is None  # complete before the disk filled: still complete
    assert newest_run_checkpoint(run_dir) == out / "checkpoint-1"
    assert not (out / "checkpoint-2").exists() and not list(out.glob(".saving-*"))  # the partial one was removed
    assert "No space left on device" in (run_dir / "02_debug_run.html").read_text()  # the report says why
