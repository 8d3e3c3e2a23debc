"""Which episodes a run plays: (task, seed) pairs drawn from the curriculum, and the dataset TRL iterates.

Tasks are drawn by `rollout.task_weights`, task seeds from `rollout.train_seeds` (training) or
`rollout.eval_seeds` (held-out); the config guarantees both ranges are valid and never overlap.
Each row of the training dataset names one GRPO group: `num_generations` episodes of the same (task, seed).

With `rollout.curriculum: adaptive`, `Curriculum` draws the groups instead: it follows each task's running
success under the current policy and samples a task by the chance that a group of it carries a learning signal
(some episodes succeed, some fail), which is largest at success 0.5, the edge of competence. That chance assumes
the episodes of a group are independent draws; a near-deterministic policy breaks it (a group on one page all
fails or all succeeds), and with `rollout.explore_epsilon` a task the policy always fails can still give mixed
groups. `signal` therefore weights each task by the running share of its groups, as played, in which some episode
scored above one of the policy's own (`dynamic_sampling.teaches`: a group mixed only by explored failures on a
solved task does not count).
"""

from __future__ import annotations

import json
import math
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


# --- the adaptive curriculum ------------------------------------------------------------------------------------

def signal_probability(success: float, group_size: int) -> float:
    """Chance that a group of `group_size` episodes at this success rate is mixed (not all 0, not all 1): the only
    groups whose GRPO advantage is non-zero. 0 at success 0 and 1, largest at 0.5."""
    return 1.0 - success ** group_size - (1.0 - success) ** group_size


class Curriculum:
    """Draws (task, seed) groups during training and follows each task's running success.

    `rollout.curriculum: fixed` draws tasks by `rollout.task_weights`; `signal` by each task's running share of
    groups with something to learn (`update_groups`); `adaptive` by `signal_probability` under the
    running success, each task keeping `floor` of the draws. The running success is an exponential moving average
    per episode (`memory` = weight kept per episode), starting from an uninformed 0.5 so every task is probed early.
    Seeds come from the training range (or the replay's recorded pool), as in `episode_specs`.

        cur = Curriculum(params.rollout, group_size=8, seed=0, available=client.seeds())
        specs = cur.draw(4)                       # 4 (task, seed) groups
        cur.update([(task, success), ...])        # after playing them
    """

    def __init__(self, rollout: RolloutParams, group_size: int, seed: int, available: dict | None = None,
                 split: str = "train"):
        self.fixed = task_weights(rollout) if rollout.curriculum == "fixed" else None
        self.tasks = list(task_weights(rollout))
        self.group_size, self.memory, self.floor = group_size, rollout.curriculum_memory, rollout.curriculum_floor
        lo, hi = rollout.train_seeds if split == "train" else rollout.eval_seeds
        self.pools = (recorded_seeds(available, self.tasks, lo, hi, split) if available is not None
                      else {t: range(lo, hi) for t in self.tasks})
        self.success = {t: 0.5 for t in self.tasks}
        self.by_signal = rollout.curriculum == "signal"
        self.mixed = {t: 0.5 for t in self.tasks}  # running share of the task's groups with something to learn
        self.episodes = {t: 0 for t in self.tasks}  # played so far, for the report
        self.rng = random.Random(f"curriculum:{seed}")

    def reseed(self, seed: int, rank: int) -> None:
        """Data-parallel ranks draw different groups: rank 0 keeps the single-process stream."""
        self.rng = random.Random(f"curriculum:{seed}" + (f":{rank}" if rank else ""))

    def weights(self) -> dict[str, float]:
        """Task -> share of the draws: fixed, or `floor` each and the rest by the chance of a mixed group."""
        if self.fixed is not None:
            total = sum(self.fixed.values())
            return {t: w / total for t, w in self.fixed.items()}
        signal = {t: self.signal_estimate(t) for t in self.tasks}
        total = sum(signal.values())
        rest = 1.0 - self.floor * len(self.tasks)
        if total <= 0:  # every task solved or failed for sure: spread evenly
            return {t: 1.0 / len(self.tasks) for t in self.tasks}
        return {t: self.floor + rest * signal[t] / total for t in self.tasks}

    def draw(self, n: int) -> list[tuple[str, int]]:
        w = self.weights()
        tasks = self.rng.choices(list(w), weights=list(w.values()), k=n)
        return [(t, self.rng.choice(self.pools[t])) for t in tasks]

    def update(self, outcomes: list[tuple[str, bool]]) -> None:
        """Fold one batch of (task, success) outcomes (lost episodes left out) into the running estimates."""
        by_task: dict[str, list[bool]] = {}
        for task, ok in outcomes:
            by_task.setdefault(task, []).append(bool(ok))
        for task, oks in by_task.items():
            rate = sum(oks) / len(oks)
            # A batch of n episodes weighs like n single updates: memory ** n of the old estimate is kept.
            keep = self.memory ** len(oks)
            self.success[task] = keep * self.success[task] + (1 - keep) * rate
            self.episodes[task] += len(oks)

    def update_groups(self, groups: list[tuple[str, bool]]) -> None:
        """Fold one round's (task, group had something to learn) into each task's running share; a group
        weighs like its episodes (memory ** group_size of the old estimate is kept)."""
        keep = self.memory ** self.group_size
        for task, mixed in groups:
            if task in self.mixed:
                self.mixed[task] = keep * self.mixed[task] + (1 - keep) * float(mixed)

    def signal_estimate(self, task: str) -> float:
        """The chance a group of `task` carries signal, as this curriculum's mode estimates it."""
        return self.mixed[task] if self.by_signal else signal_probability(self.success[task], self.group_size)

    def state(self) -> dict:
        return {"success": dict(self.success), "episodes": dict(self.episodes), "mixed": dict(self.mixed),
                "rng": self.rng.getstate()}

    def load_state(self, state: dict) -> None:
        self.success.update({t: float(v) for t, v in state["success"].items() if t in self.success})
        self.mixed.update({t: float(v) for t, v in state.get("mixed", {}).items() if t in self.mixed})
        self.episodes.update({t: int(v) for t, v in state["episodes"].items() if t in self.episodes})
        self.rng.setstate(_as_tuple(state["rng"]))


def _as_tuple(x):
    """random.getstate() after a JSON round trip (lists) -> the nested tuples setstate wants."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list) else x


def expected_signal(curriculum: Curriculum) -> float:
    """Share of drawn groups expected to carry a signal under the current estimates (for the log)."""
    w = curriculum.weights()
    return math.fsum(w[t] * curriculum.signal_estimate(t) for t in w)
