"""Groups that carry signal: DAPO-style dynamic sampling over a curriculum.

GRPO's advantage is a reward minus its group's mean: a group whose episodes all succeed (or all fail) gives every
episode advantage 0, and with the DAPO loss its tokens only dilute the others. `GroupSampler.play` plays the groups
a generation round asks for, and with `train.dynamic_sampling` plays extra groups (at most
`train.max_resample_groups`) until the round can be filled with groups whose rewards vary; zero-variance groups fill
what is left, so the batch keeps its size. Every on-policy episode played, kept or not, updates the curriculum's
running success (it is all evidence about the current policy; an explored one is not: bgwork.exploration).

    sampler = GroupSampler(player, curriculum, params.train, reward_functions(params.rollout))
    episodes, stats = sampler.play(model, specs)        # specs: one (task, seed) per group, or None: drawn
"""

from __future__ import annotations

import math
import statistics

from bgwork import metrics as m
from bgwork.config import TrainParams
from bgwork.curriculum import Curriculum, expected_signal
from bgwork.rollout import Episode, to_rollout_output


def total_rewards(episodes: list[Episode], reward_funcs: list) -> list[float | None]:
    """Each episode's reward as GRPO sums it (env reward + shaping terms); None for an unscorable (lost) one."""
    if not episodes:
        return []
    out = to_rollout_output(episodes)
    per_func = [f(completions=[None] * len(episodes), **out) for f in reward_funcs]
    return [None if any(r is None for r in rs) else math.fsum(rs) for rs in zip(*per_func)]


def has_signal(rewards: list[float | None]) -> bool:
    """A group carries signal when its scored rewards are not all equal (as TRL: std > 0)."""
    scored = [r for r in rewards if r is not None]
    return len(scored) >= 2 and statistics.pstdev(scored) > 1e-6


def teaches(rewards: list[float | None], explored: list[bool]) -> bool:
    """A group with something new for the policy: some episode scored above one of the policy's own.

    Without exploration this is `has_signal`. With it, a task the policy has solved still gives mixed groups
    (its explored episodes click elsewhere and fail), but those only re-teach what the policy already does;
    `rollout.curriculum: signal` counts them out so its draws go where a better action than the policy's turned up.
    """
    scored = [(r, x) for r, x in zip(rewards, explored) if r is not None]
    own = [r for r, x in scored if not x]
    if not own:  # every episode explored (ε = 1): nothing of the policy's to beat
        return has_signal(rewards)
    return max(r for r, _ in scored) > min(own) + 1e-6


class GroupSampler:
    def __init__(self, player, curriculum: Curriculum, train: TrainParams, reward_funcs: list):
        self.player, self.curriculum, self.reward_funcs = player, curriculum, reward_funcs
        self.group_size, self.dynamic = train.num_generations, train.dynamic_sampling
        self.budget = train.max_resample_groups
        self.timings: dict[str, float] = {}  # wall time of the last round's rollouts, for logging
        self.outage_s = 0.0  # seconds the last round waited for an env server that went away

    def play(self, model, specs: list[tuple[str, int]] | None, n_groups: int) -> tuple[list[Episode], dict]:
        """n_groups groups of group_size episodes, contiguous; and the round's sampling stats (metric -> value)."""
        self.timings, self.outage_s = {}, 0.0
        specs = list(specs) if specs is not None else self.curriculum.draw(n_groups)
        groups, signal = self._play(model, specs)
        extra = 0
        while self.dynamic and sum(signal) < n_groups and extra < self.budget:
            # Ask for as many groups as the yield so far says are needed (at least one, within the budget).
            yield_ = max(sum(signal) / len(signal), 0.25)
            k = min(self.budget - extra, math.ceil((n_groups - sum(signal)) / yield_))
            more, more_signal = self._play(model, self.curriculum.draw(k))
            groups, signal, extra = groups + more, signal + more_signal, extra + k
        kept = [g for g, s in zip(groups, signal) if s][:n_groups]
        kept += [g for g, s in zip(groups, signal) if not s][: n_groups - len(kept)]
        played = [e.success for g in groups for e in g if not e.lost]
        explored = [e.success for g in groups for e in g if not e.lost and e.explored]
        stats = {m.SAMPLING_GROUPS_PLAYED: float(len(groups)),
                 m.SAMPLING_SUCCESS_RATE_PLAYED: sum(played) / max(len(played), 1),
                 m.SAMPLING_FRAC_ZERO_STD_PLAYED: 1.0 - sum(signal) / len(signal),
                 m.CURRICULUM_EXPECTED_SIGNAL: expected_signal(self.curriculum)}
        if self.player.explorer is not None:
            stats[m.SAMPLING_EXPLORED_FRAC] = len(explored) / max(len(played), 1)
            stats[m.SAMPLING_EXPLORED_SUCCESS_RATE] = sum(explored) / max(len(explored), 1)
        for task, p in self.curriculum.success.items():
            stats[m.per_task(m.CURRICULUM_SUCCESS, task)] = p
        for task, share in self.curriculum.mixed.items():
            stats[m.per_task(m.CURRICULUM_MIXED, task)] = share
        for task, w in self.curriculum.weights().items():
            stats[m.per_task(m.CURRICULUM_WEIGHT, task)] = w
        return [e for g in kept for e in g], stats

    def _play(self, model, specs: list[tuple[str, int]]) -> tuple[list[list[Episode]], list[bool]]:
        g = self.group_size
        episodes = self.player.play(model, [s for s in specs for _ in range(g)])
        for name, seconds in self.player.timings.items():
            self.timings[name] = self.timings.get(name, 0.0) + seconds
        self.outage_s += self.player.outage_s
        # The curriculum follows the policy: an explored episode says what a random element would have done.
        self.curriculum.update([(e.task, e.success) for e in episodes if not e.lost and not e.explored])
        rewards = total_rewards(episodes, self.reward_funcs)
        groups = [episodes[i:i + g] for i in range(0, len(episodes), g)]
        group_rewards = [rewards[i:i + g] for i in range(0, len(episodes), g)]
        self.curriculum.update_groups([(grp[0].task, teaches(r, [e.explored > 0 for e in grp]))
                                       for grp, r in zip(groups, group_rewards)])
        return groups, [has_signal(r) for r in group_rewards]
