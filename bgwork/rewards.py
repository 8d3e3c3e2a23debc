"""Reward functions for GRPOTrainer. The environment's reward arrives as the `env_reward` column that
`rollout_func` returns (TRL passes extra rollout keys to reward functions as keyword arguments).

An episode voided by infrastructure failures has env_reward None: returned as None, TRL leaves it out of
the group baseline and gives it advantage 0 — it is never scored 0.

Under data parallelism each rank scores only its own episodes; the episode metrics are computed from every
rank's episodes (gathered here), so the logged success_rate of an N-rank run covers the whole batch.
"""

from __future__ import annotations

from collections import defaultdict

from bgwork import metrics as m
from bgwork import ranks
from bgwork.config import RolloutParams


def env_reward(completions, env_reward, **kwargs) -> list[float | None]:
    """The task's own reward (MiniWoB: 1 on success, 0 otherwise). Also logs success and format metrics."""
    log_metric = kwargs.get("log_metric")
    if log_metric is not None:
        columns = [list(kwargs.get(k, [])) for k in ("task", "success", "format_errors", "episode_steps", "attempts")]
        # every rank logs the same all-rank figures, so TRL's mean over ranks leaves them as they are
        everyone = [sum(c, []) for c in zip(*ranks.all_gather(columns))]
        for name, value in episode_metrics(*everyone).items():
            log_metric(name, value)
        for name, seconds in (kwargs.get("rollout_timings") or [{}])[0].items():
            log_metric(m.rollout_timing(name), seconds)
        if kwargs.get("env_outage_s"):
            log_metric(m.ENV_OUTAGE_S, float(kwargs["env_outage_s"][0]))
        for name, value in (kwargs.get("sampling_stats") or [{}])[0].items():
            log_metric(name, value)  # names from bgwork.metrics (sampling/..., curriculum/...)
    return [None if r is None else float(r) for r in env_reward]


def episode_metrics(tasks, success, format_errors, steps, attempts) -> dict[str, float]:
    """success_rate (overall and per task), format_error_rate (per action), episode_steps, infra retries, and how
    many episodes there were and how many of them stayed lost to infrastructure (unscored)."""
    out: dict[str, float] = {}
    scored = [(t, s) for t, s in zip(tasks, success) if s is not None]
    if scored:
        out[m.SUCCESS_RATE] = sum(s for _, s in scored) / len(scored)
        per_task = defaultdict(list)
        for t, s in scored:
            per_task[t].append(s)
        for t, vals in sorted(per_task.items()):
            out[m.per_task(m.SUCCESS_RATE, t)] = sum(vals) / len(vals)
    if sum(steps):
        out[m.FORMAT_ERROR_RATE] = sum(format_errors) / sum(steps)
        out[m.EPISODE_STEPS] = sum(steps) / len(steps)
    if attempts:
        out[m.ENV_RETRIES] = sum(a - 1 for a in attempts) / len(attempts)
    out[m.EPISODES] = len(tasks)
    out[m.EPISODES_LOST] = sum(s is None for s in success)
    if success:
        out[m.ENV_LOST] = sum(s is None for s in success) / len(success)
    return out


def make_shaping_rewards(params: RolloutParams) -> list:
    """Optional shaping terms, each its own reward function so TRL logs it separately; off (empty) by default."""
    funcs = []
    if params.format_reward > 0:
        def format_reward(completions, episode_steps, format_errors, env_reward, **kwargs):
            return [None if r is None else params.format_reward * (1 - e / max(n, 1))
                    for n, e, r in zip(episode_steps, format_errors, env_reward)]
        funcs.append(format_reward)
    if params.step_penalty > 0:
        def step_penalty(completions, episode_steps, env_reward, **kwargs):
            return [None if r is None else -params.step_penalty * n for n, r in zip(episode_steps, env_reward)]
        funcs.append(step_penalty)
    return funcs


def reward_functions(params: RolloutParams) -> list:
    return [env_reward, *make_shaping_rewards(params)]
