"""The browser-free replay: record from real Chromium sessions, serve the file, check it answers like the browser."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from envserver.parity import compare
from envserver.record import record
from tests.conftest import running_server

pytestmark = pytest.mark.browser

TASKS = ["click-test", "click-button", "focus-text-2", "click-dialog-2"]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """A small recording made here with the real recorder: 4 tasks x 3 seeds (train and held-out seeds)."""
    path = tmp_path_factory.mktemp("replay") / "small.jsonl.gz"
    header = record(TASKS, [0, 1, 1_000_000], path, sessions=2, merge_checks=2)
    assert header["stats"]["episodes"] == 12 and not header["stats"]["dropped"]
    return path


@pytest.fixture(scope="module")
def replay(recording):
    with running_server(8, "--replay", str(recording)) as server:
        yield server


def test_recording_says_what_it_holds_and_its_limits(recording):
    with gzip.open(recording, "rt") as fh:
        header = json.loads(fh.readline())
        lines = [json.loads(line) for line in fh]
    assert header["format"] == "bgwork-envserver-replay" and header["depth"] == 2
    assert set(header["tasks"]) == set(TASKS) and header["tasks"]["click-test"]["viewport"] == [332, 214]
    assert any("Not recorded" in limit for limit in header["limits"])
    assert header["missing_bid_errors"]["click"] == 'ValueError: Could not find element with bid "{bid}"'
    assert header["stats"]["merge_checks"] > 0 and header["stats"]["merge_mismatches"] == 0
    click_test = next(line for line in lines if line["task"] == "click-test")
    assert click_test["states"][0]["a"]["click('13', 'left', [])"][:3] == [1.0, True, False]


def test_replay_says_what_it_is_and_needs_no_browser(recording):
    """(How fast it starts is benchmarks/replay_start.py's question, not a test's.)"""
    code = ("import sys; from envserver.app import ServerSettings, create_app; "
            f"create_app(ServerSettings(replay={str(recording)!r})); "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('playwright', 'browsergym')]")
    subprocess.run([sys.executable, "-c", code], check=True)
    with running_server(2, "--replay", str(recording)) as server:
        health = httpx.get(server.url + "/health").json()
    assert health["mode"] == "replay" and health["browser"] is None
    assert health["replay"]["file"] == str(recording) and health["replay"]["episodes"] == 12


def test_a_recorded_episode_replays(replay):
    with httpx.Client(base_url=replay.url) as c:
        tasks = c.get("/tasks").json()
        assert tasks["tasks"] == sorted(TASKS) and tasks["seeds"]["click-test"] == [[0, 2], [1_000_000, 1_000_001]]
        out = c.post("/reset", json={"task": "click-test", "seed": 1}).json()
        sid, obs = out["session_id"], out["observation"]
        assert obs["goal"] == "Click the button." and "[13] button" in obs["axtree_txt"]
        assert obs["text"] == obs["axtree_txt"]
        wrong = c.post("/step", json={"session_id": sid, "action": "click('77')"}).json()
        assert wrong["observation"]["last_action_error"] == 'ValueError: Could not find element with bid "77"'
        assert (wrong["reward"], wrong["done"]) == (0.0, False)
        bad = c.post("/step", json={"session_id": sid, "action": "click(13)"}).json()  # the same grammar as live
        assert bad["info"]["action_valid"] is False and "quoted string" in bad["observation"]["last_action_error"]
        win = c.post("/step", json={"session_id": sid, "action": "click('13', button='left')"}).json()
        assert (win["reward"], win["done"]) == (1.0, True)
        assert win["observation"]["last_action"] == "click('13', button='left')"
        state = c.get("/state", params={"session_id": sid}).json()
        assert state["step_count"] == 3 and state["cum_reward"] == 1.0 and state["done"]
        assert c.post("/close", json={"session_id": sid}).json() == {"ok": True}


def test_unrecorded_actions_score_0_and_are_counted(replay):
    with httpx.Client(base_url=replay.url) as c:
        sid = c.post("/reset", json={"task": "click-button", "seed": 0}).json()["session_id"]
        before = c.post("/step", json={"session_id": sid, "action": "noop()"}).json()["observation"]
        for action in ("fill('13', 'hello')", "hover('13')", "mouse_click(10, 10)", "keyboard_type('x')"):
            out = c.post("/step", json={"session_id": sid, "action": action}).json()
            assert out["observation"]["last_action_error"].startswith("not recorded"), action
            assert (out["reward"], out["done"], out["info"]["recorded"]) == (0.0, False, False)
            assert out["observation"]["axtree_txt"] == before["axtree_txt"]  # the page is unchanged
        c.post("/close", json={"session_id": sid})
        metrics = c.get("/metrics").text
    assert "envserver_replay_unrecorded_total 4.0" in metrics


def test_seeds_and_tasks_outside_the_recording_are_refused_by_name(replay):
    with httpx.Client(base_url=replay.url) as c:
        r = c.post("/reset", json={"task": "click-test", "seed": 5})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_seed"
        assert "[0, 2), [1000000, 1000001)" in r.json()["error"]["message"]
        r = c.post("/reset", json={"task": "click-tes", "seed": 0})
        assert r.status_code == 400 and "click-test" in r.json()["error"]["suggestions"]
        r = c.post("/reset", json={"task": "enter-text", "seed": 0})  # a real task, not recorded
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_task"
        assert c.get("/health").json()["active_sessions"] == 0  # a refused reset opens no session


def test_a_bad_recording_file_fails_with_its_name_and_the_reason(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "something else"}\n')
    for path, says in ((bad, "not a bgwork-envserver-replay file"), (tmp_path / "none.jsonl.gz", "no such recording")):
        out = subprocess.run([sys.executable, "-m", "envserver", "--replay", str(path), "--port", "0"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and str(path) in out.stderr and says in out.stderr


def test_parity_with_the_live_browser_small_set(envserver, replay):
    report = compare(envserver.url, replay.url, 40, seed=1)
    assert report["samples"] == 40 and report["counts"]["valid"] >= 15, report
    assert report["agreement"] >= 0.99, report["disagreements"]


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 54 episodes recorded, then 320 samples played on both servers (~10 min quiet)
def test_parity_with_the_live_browser_300_samples(tmp_path):
    """>= 300 (task, seed, action) samples over the default task set, one- and two-step: >= 99 % agree."""
    from envserver.record import DEFAULT_TASKS

    path = tmp_path / "parity.jsonl.gz"
    record(list(DEFAULT_TASKS), list(range(6)), path, sessions=4)
    with running_server(4) as live, running_server(8, "--replay", str(path)) as rep:
        report = compare(live.url, rep.url, 320, seed=2)
    print(json.dumps({k: v for k, v in report.items() if k != "disagreements"}))
    assert report["agreement"] >= 0.99, report["disagreements"]
    assert report["two_step"] is not None and report["counts"]["malformed"] >= 30


def test_notebook_03_trains_against_the_replay_without_a_browser(recording, tmp_path):
    """The GPU path on CPU: replay server + tiny LFM2 through notebook 03 (warm start, GRPO, evaluation), with
    Chromium made unfindable so that any browser launch would fail the run."""
    import os

    from tests.test_notebook_02_03 import ROOT

    env = {**os.environ, "BGWORK_RUNS_DIR": str(tmp_path / "runs"), "BGWORK_CHROMIUM": str(tmp_path / "no-chromium")}
    out = subprocess.run(
        [sys.executable, "-m", "bgwork", "run", "03", "-f", str(ROOT / "params/tiny.yaml"),
         "-p", f"env.replay={recording}",
         "-p", "rollout.tasks=[click-test, click-button]", "-p", "train.max_steps=2", "-p", "train.save_steps=1",
         "-p", "evaluation.episodes_per_task=1", "-p", "warmstart.episodes_per_task=1"],
        capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    (d,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["train/global_step"] == 2 and "eval/trained_success_rate/click-button" in metrics
    out_dir = Path(metrics["train/output_dir"])
    assert (out_dir / "checkpoint-2").is_dir() and (out_dir / "final").is_dir()
    assert list((out_dir / "tensorboard").glob("events.out.tfevents.*")) and (d / "03_full_run.html").is_file()
    assert f"replaying {recording} (12 episodes" in (d / "envserver.log").read_text()


def test_bgwork_record_wraps_the_recorder_with_the_params_seeds(tmp_path):
    from tests.test_notebook_02_03 import ROOT

    out = tmp_path / "rec.jsonl.gz"
    done = subprocess.run([sys.executable, "-m", "bgwork", "record", "--out", str(out), "--tasks", "click-test",
                           "--train-seeds", "2", "--eval-seeds", "1", "-p", "env.max_sessions=2"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    with gzip.open(out, "rt") as fh:
        header, *lines = [json.loads(line) for line in fh]
    assert header["tasks"]["click-test"]["seeds"] == 3
    assert [(line["task"], line["seed"]) for line in lines] == [("click-test", 0), ("click-test", 1),
                                                                ("click-test", 1_000_000)]
