"""Which episodes a run plays: (task, seed) pairs drawn from the curriculum, and the dataset TRL iterates.

Tasks are drawn by `rollout.task_weights`, task seeds from `rollout.train_seeds` (training) or
`rollout.eval_seeds` (held-out); the config guarantees both ranges are valid and never overlap.
Each row of the training dataset names one GRPO group: `num_generations` episodes of the same (task, seed).
"""

from __future__ import annotations

import json
import random

from bgwork.config import Params, RolloutParams, generation_batch_size


def task_weights(rollout: RolloutParams) -> dict[str, float]:
    """Task -> sampling weight (equal when rollout.task_weights is null)."""
    return dict(zip(rollout.tasks, map(float, rollout.task_weights or [1.0] * len(rollout.tasks))))


def episode_specs(rollout: RolloutParams, n: int, seed: int, split: str = "train") -> list[tuple[str, int]]:
    """n (task, seed) pairs: tasks drawn by weight (the curriculum), task seeds from the split's range."""
    weights = task_weights(rollout)
    lo, hi = rollout.train_seeds if split == "train" else rollout.eval_seeds
    rng = random.Random(f"{split}:{seed}")
    names, w = list(weights), list(weights.values())
    # One draw pair per item, so a longer run starts with the same episodes (resume stays in step).
    return [(rng.choices(names, weights=w)[0], rng.randrange(lo, hi)) for _ in range(n)]


def encode_spec(task: str, seed: int) -> str:
    """The dataset 'prompt' of a group: which task and seed its episodes play (TRL hands it to rollout_func)."""
    return json.dumps({"task": task, "seed": seed})


def decode_spec(prompt) -> tuple[str, int]:
    d = json.loads(prompt)
    return d["task"], int(d["seed"])


def train_dataset(params: Params):
    from datasets import Dataset

    t = params.train
    groups_per_step = generation_batch_size(t) // t.num_generations
    n = (t.max_steps + 1) * groups_per_step  # one epoch covers the whole run: every group a fresh (task, seed)
    return Dataset.from_dict({"prompt": [encode_spec(*s) for s in episode_specs(params.rollout, n, params.seed)]})
