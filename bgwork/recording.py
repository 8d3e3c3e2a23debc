"""`bgwork record`: a replay recording for a run's tasks, made by envserver's own recorder.

    bgwork record --out data/replay/mine.jsonl.gz -f params/learn.yaml --train-seeds 200 --eval-seeds 50

The tasks are the params' rollout.tasks (or --tasks), the seeds the first N of rollout.train_seeds and of
rollout.eval_seeds, so a run with `env.replay` set to the file draws its episodes, and its held-out ones,
from seeds that are recorded. The browser settings are the params' env settings.
"""

from __future__ import annotations

import subprocess
import sys

from bgwork.config import Params


def recorder_command(params: Params, out: str, tasks: list[str] | None = None, train_seeds: int = 200,
                     eval_seeds: int = 50, depth: int = 2, actions: str | None = None) -> list[str]:
    """The `python -m envserver.record` command line for these params."""
    (a, _), (c, _) = params.rollout.train_seeds, params.rollout.eval_seeds
    seeds = ",".join(f"{lo}:{lo + n}" for lo, n in ((a, train_seeds), (c, eval_seeds)) if n > 0)
    cmd = [sys.executable, "-m", "envserver.record", "--tasks", ",".join(tasks or params.rollout.tasks),
           "--seeds", seeds, "--out", out, "--sessions", str(params.env.max_sessions), "--depth", str(depth),
           "--pre-observation-delay", str(params.env.pre_observation_delay),
           "--action-timeout-ms", str(params.env.action_timeout_ms)]
    return cmd + (["--actions", actions] if actions else [])


def record(params: Params, out: str, **options) -> int:
    """Run the recorder (it prints its progress and the file's stats); its exit code."""
    return subprocess.run(recorder_command(params, out, **options)).returncode
