"""Env outages with real processes: the env server (uvicorn + Playwright + Chromium) is SIGKILLed with its whole
process group in the middle of a rollout or a training run, and started again on the same port after a while,
or never. Lost episodes wait for it (bgwork.outage) and re-run; none is scored 0; past env.outage_timeout_s
training saves the steps it did and says so."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from transformers import TrainerCallback

from bgwork import metrics as m
from bgwork import models
from bgwork.checkpoint_io import checkpoint_problem
from bgwork.config import EnvParams
from bgwork.embedded import EmbeddedServer
from bgwork.envclient import EnvClient
from bgwork.outage import EnvOutage, wait_until_up
from bgwork.rollout import EpisodePlayer, to_rollout_output
from bgwork.trainer import newest_run_checkpoint, train
from tests.test_training import TINY, scalars, tiny_params

pytestmark = pytest.mark.browser

SERVER = EnvParams(max_sessions=4)


class Outage:
    """A real env server on a fixed port that can be SIGKILLed (group: uvicorn, Playwright, Chromium) and
    restarted on the same port `down_s` seconds later (None: never).

    The restarted server lives in the thread that started it until stop(): the embedded server's
    PR_SET_PDEATHSIG fires when the starting *thread* ends, not only the process."""

    def __init__(self):
        self.server = EmbeddedServer(SERVER)
        self.port = int(self.server.url.rsplit(":", 1)[1])
        self.url = self.server.url
        self.killed_at = self.back_at = None
        self.thread, self.done = None, threading.Event()

    def kill(self, down_s: float | None) -> None:
        os.killpg(self.server.pid, signal.SIGKILL)
        self.server.proc.wait(10)
        self.killed_at = time.monotonic()
        if down_s is not None:
            self.thread = threading.Thread(target=self._restart, args=(down_s,), daemon=True)
            self.thread.start()

    def _restart(self, down_s: float) -> None:
        if self.done.wait(down_s):
            return
        self.server = EmbeddedServer(SERVER, port=self.port)
        self.back_at = time.monotonic()
        self.done.wait()
        self.server.stop()

    def stop(self) -> None:
        self.done.set()
        if self.thread:
            self.thread.join(240)
        self.server.stop()


@pytest.fixture
def outage():
    o = Outage()
    try:
        yield o
    finally:
        o.stop()


@pytest.fixture(scope="module")
def tiny():
    return models.resolve_model(models.TINY_RANDOM_LFM2)


class KillBeforeFirstStep(EnvClient):
    """The real client; before its first step it takes the whole server down (every episode is mid-way)."""

    def __init__(self, outage: Outage, down_s: float | None, **kw):
        super().__init__(outage.url, **kw)
        self.outage, self.down_s, self.lock = outage, down_s, threading.Lock()

    def step(self, session_id, action, include_screenshot=False):
        with self.lock:
            if self.outage.killed_at is None:
                self.outage.kill(self.down_s)
        return super().step(session_id, action, include_screenshot)


def test_rollout_waits_for_a_restarted_server_and_scores_every_episode(outage, tiny):
    down = 5.0
    p = tiny_params(rollout={"env_retries": 1})
    with KillBeforeFirstStep(outage, down, outage_timeout_s=120) as c:
        player = EpisodePlayer(c, tiny.tokenizer, p.rollout, temperature=1.0, max_completion_length=256,
                               max_parallel=4)
        # Random weights write no valid action: answer "click(13)" (click-test's button), so rewards are earned.
        player.generate = lambda model, seqs: [(tiny.tokenizer.encode("click(13)", add_special_tokens=False),
                                                [0.0] * 4) for _ in seqs]
        try:
            episodes = player.play(tiny.model, [("click-test", 7)] * 4)
        finally:
            player.close()
    out = to_rollout_output(episodes)
    assert outage.back_at is not None
    assert [e.attempts for e in episodes] == [2] * 4 and not any(e.lost for e in episodes)
    assert out["env_reward"] == [1.0] * 4  # played again after the outage, none scored 0 (nor None)
    assert down - 1 <= player.outage_s <= down + 60  # it waited for the restart (start-up under load: <= 60 s)


def test_wait_gives_up_past_the_timeout_naming_server_and_cause(outage):
    outage.kill(None)
    start = time.monotonic()
    with EnvClient(outage.url) as c, pytest.raises(EnvOutage) as info:
        wait_until_up([c], 3.0, reason="ServerUnavailable: connection refused")
    assert 3.0 <= time.monotonic() - start <= 3.0 + 6.0  # the last poll may take its own 5 s probe timeout
    assert str(info.value).startswith(f"env server {outage.url} did not answer GET /health for 3 s "
                                      "(env.outage_timeout_s = 3); the episodes were lost to: ServerUnavailable")


class KillServer(TrainerCallback):
    """At the end of optimizer step N, take the env server down: {step: seconds until it restarts, or None}."""

    def __init__(self, outage: Outage, plan: dict[int, float | None]):
        self.outage, self.plan = outage, plan

    def on_step_end(self, args, state, control, **kw):
        if state.global_step in self.plan:
            if self.outage.thread:  # the server restarted by the last outage must be the one that is killed
                while self.outage.back_at is None:
                    time.sleep(0.2)
            self.outage.kill(self.plan[state.global_step])


def outage_params(outage: Outage, timeout_s: float, max_steps: int):
    return tiny_params(env={"url": outage.url, "outage_timeout_s": timeout_s},
                       train={**TINY["train"], "max_steps": max_steps, "save_steps": 10})


def assert_rode_out(output_dir, steps: list[int], outage_step: int, down_s: float) -> None:
    """TensorBoard shows the wait at `outage_step` only, step retried, and no episode left unscored."""
    tb = scalars(output_dir)
    waited = dict(tb[m.ENV_OUTAGE_S])
    assert sorted(waited) == steps and all(waited[s] == 0.0 for s in steps if s != outage_step), waited
    assert down_s - 1 <= waited[outage_step] <= down_s + 60, waited  # + the restart's start-up under load
    assert dict(tb[m.ENV_RETRIES])[outage_step] >= 1.0  # every episode of that step was played again ...
    assert [v for _, v in tb[m.ENV_LOST]] == [0.0] * len(steps)  # ... and none stayed lost (unscored, never 0)


@pytest.mark.heavy
def test_training_rides_out_a_restart_then_saves_its_steps_when_the_server_stays_away(tmp_path, outage):
    """The server dies after step 1 and is back 3 s later: step 2 waits and re-runs its episodes. It dies again
    after step 2 for good: step 3 gives up after env.outage_timeout_s, and checkpoint-2 holds the steps done."""
    timeout_s = 40.0
    with pytest.raises(EnvOutage) as info:
        train(outage_params(outage, timeout_s, 3), tmp_path, outage.url, callbacks=[KillServer(outage, {1: 3.0,
                                                                                                         2: None})])
    failed_after = time.monotonic() - outage.killed_at
    assert timeout_s <= failed_after <= timeout_s + 60, failed_after  # + failing calls and the save under load
    ckpt = newest_run_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "checkpoint-2" and checkpoint_problem(ckpt) is None
    message = str(info.value)
    assert f"did not answer GET /health for {timeout_s:.0f} s (env.outage_timeout_s = {timeout_s:g})" in message
    assert f"Saved {ckpt} (step 2); continue with `bgwork resume {tmp_path}`" in message
    assert_rode_out(ckpt.parent, [1, 2], 2, 3.0)


@pytest.mark.slow
def test_training_rides_out_a_30s_server_restart(tmp_path, outage):
    """The issue's case: killed -9 for 30 s mid-run and restarted; the run finishes with all its steps."""
    result = train(outage_params(outage, 120, 3), tmp_path, outage.url, callbacks=[KillServer(outage, {1: 30.0})])
    assert result.global_step == 3 and (result.final_dir / "model.safetensors").is_file()
    assert_rode_out(result.output_dir, [1, 2, 3], 2, 30.0)
