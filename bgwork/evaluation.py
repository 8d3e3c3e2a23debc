"""Held-out evaluation: success rate per task on rollout.eval_seeds (never used in training).

The seeds depend only on the task and the seed range, so the untrained and the trained model, and
different runs, are measured on exactly the same episodes.
"""

from __future__ import annotations

import random

from bgwork.config import Params
from bgwork.envclient import EnvClient
from bgwork.rollout import Episode, EpisodeRunner, success_table
from bgwork.training import recorded_seeds, seed_range, task_weights


def eval_specs(params: Params, episodes_per_task: int, available: dict | None = None) -> list[tuple[str, int]]:
    """The same held-out seeds for every model: per task, a sample fixed by the task's name.

    `available`: a replay server's recorded seeds (EnvClient.seeds()); the sample is then drawn from those."""
    lo, hi = seed_range(params.rollout.eval_seeds, "rollout.eval_seeds")
    tasks = list(task_weights(params.rollout))
    pools = recorded_seeds(available, tasks, lo, hi, "eval") if available is not None else {t: range(lo, hi) for t in tasks}
    short = {t: len(p) for t, p in pools.items() if len(p) < episodes_per_task}
    if short:
        raise ValueError(f"evaluation.episodes_per_task = {episodes_per_task} exceeds the held-out seeds of "
                         f"rollout.eval_seeds = {[lo, hi]} ({short})")
    return [(task, seed) for task in tasks for seed in random.Random(f"eval:{task}").sample(pools[task], episodes_per_task)]


def evaluate(model, tokenizer, client: EnvClient, params: Params, episodes_per_task: int | None = None):
    """(episodes, per-task table) of the model on held-out seeds, played in batches like training."""
    n = episodes_per_task if episodes_per_task is not None else params.evaluation.episodes_per_task
    runner = EpisodeRunner(client, tokenizer, params.rollout, temperature=params.train.temperature,
                           max_completion_length=params.train.max_completion_length,
                           max_parallel=params.env.max_sessions, greedy=params.evaluation.greedy)
    try:
        episodes: list[Episode] = runner.play(model, eval_specs(params, n, client.seeds()))
    finally:
        runner.close()
    return episodes, success_table(episodes)
