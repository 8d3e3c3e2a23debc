"""Which episodes a run plays: (task, seed) pairs drawn from the curriculum, and the dataset TRL iterates.

Tasks are drawn by `rollout.task_weights`, task seeds from `rollout.train_seeds` (training) or
`rollout.eval_seeds` (held-out); the config guarantees both ranges are valid and never overlap.
Each row of the training dataset names one GRPO group: `num_generations` episodes of the same (task, seed).
"""

from __future__ import annotations

import json
import random

from bgwork.config import Params, RolloutParams, global_generation_batch_size


def task_weights(rollout: RolloutParams) -> dict[str, float]:
    """Task -> sampling weight (equal when rollout.task_weights is null)."""
    return dict(zip(rollout.tasks, map(float, rollout.task_weights or [1.0] * len(rollout.tasks))))


def episode_specs(rollout: RolloutParams, n: int, seed: int, split: str = "train",
                  available: dict | None = None) -> list[tuple[str, int]]:
    """n (task, seed) pairs: tasks drawn by weight (the curriculum), task seeds from the split's range.

    `available` is a replay server's recorded seeds ({task: [[start, end), ...]], EnvClient.seeds()): seeds are
    then drawn from those inside the split's range."""
    weights = task_weights(rollout)
    lo, hi = rollout.train_seeds if split == "train" else rollout.eval_seeds
    pools = recorded_seeds(available, list(weights), lo, hi, split) if available is not None else None
    rng = random.Random(f"{split}:{seed}")
    names, w = list(weights), list(weights.values())
    # One draw pair per item, so a longer run starts with the same episodes (resume stays in step).
    specs = []
    for _ in range(n):
        task = rng.choices(names, weights=w)[0]
        specs.append((task, rng.randrange(lo, hi) if pools is None else rng.choice(pools[task])))
    return specs


def recorded_seeds(available: dict, tasks: list[str], lo: int, hi: int, split: str) -> dict[str, list[int]]:
    """Per task, the recorded seeds inside [lo, hi); an error naming the task when it has none."""
    pools = {t: [s for a, b in available.get(t, []) for s in range(max(a, lo), min(b, hi))] for t in tasks}
    empty = [t for t, seeds in pools.items() if not seeds]
    if empty:
        have = ", ".join(f"{t}: {available.get(t)}" for t in empty)
        raise ValueError(f"rollout.{split}_seeds = [{lo}, {hi}): the replay recording has no seeds of {empty} in that "
                         f"range (it has {have})")
    return pools


def encode_spec(task: str, seed: int) -> str:
    """The dataset 'prompt' of a group: which task and seed its episodes play (TRL hands it to rollout_func)."""
    return json.dumps({"task": task, "seed": seed})


def decode_spec(prompt) -> tuple[str, int]:
    d = json.loads(prompt)
    return d["task"], int(d["seed"])


def train_dataset(params: Params, available: dict | None = None):
    from datasets import Dataset

    t = params.train
    groups_per_step = global_generation_batch_size(t) // t.num_generations  # every rank's groups
    n = (t.max_steps + 1) * groups_per_step  # one epoch covers the whole run: every group a fresh (task, seed)
    specs = episode_specs(params.rollout, n, params.seed, available=available)
    return Dataset.from_dict({"prompt": [encode_spec(*s) for s in specs]})
