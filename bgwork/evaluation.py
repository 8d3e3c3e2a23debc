"""Held-out evaluation: success rate per task on rollout.eval_seeds (never used in training).

The seeds depend only on the task and the seed range, so the untrained and the trained model, and
different runs, are measured on exactly the same episodes. Notebook 03 plays them at each stage of a run:

    result, stages = train_between_evaluations(params, run_dir, env_url)   # {"untrained": table, ...}
    table = stage_table(stages); plot_stages(table); stage_metrics(stages, params.rollout.tasks)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from bgwork import ranks
from bgwork.config import Params
from bgwork.curriculum import recorded_seeds, task_weights
from bgwork.envclient import EnvClient
from bgwork.metrics import STAGES, SUCCESS_RATE, eval_success_key
from bgwork.rollout import Episode, EpisodePlayer, episode_records, success_table


def eval_specs(params: Params, episodes_per_task: int, available: dict | None = None) -> list[tuple[str, int]]:
    """The same held-out seeds for every model: per task, a sample fixed by the task's name.

    `available`: a replay server's recorded seeds (EnvClient.seeds()); the sample is then drawn from those."""
    lo, hi = params.rollout.eval_seeds
    tasks = list(task_weights(params.rollout))
    pools = ({t: range(lo, hi) for t in tasks} if available is None
             else recorded_seeds(available, tasks, lo, hi, "eval"))
    short = {t: len(p) for t, p in pools.items() if len(p) < episodes_per_task}
    if short:
        raise ValueError(f"evaluation.episodes_per_task = {episodes_per_task} exceeds the held-out seeds of "
                         f"rollout.eval_seeds = {[lo, hi]} ({short})")
    return [(task, seed) for task in tasks
            for seed in random.Random(f"eval:{task}").sample(pools[task], episodes_per_task)]


def evaluate(model, tokenizer, client: EnvClient, params: Params, episodes_per_task: int | None = None):
    """(episodes, per-task table) of the model on held-out seeds, played in batches like training.

    Under data parallelism each rank plays its share of the episodes and every rank gets all of them back."""
    from bgwork.replicas import session_budget

    n = episodes_per_task if episodes_per_task is not None else params.evaluation.episodes_per_task
    player = EpisodePlayer(client, tokenizer, params.rollout, temperature=params.train.temperature,
                           max_completion_length=params.train.max_completion_length,
                           max_parallel=session_budget(client, params.env), greedy=params.evaluation.greedy)
    try:
        mine: list[Episode] = player.play(model, ranks.share(eval_specs(params, n, client.seeds())))
    finally:
        player.close()
    episodes = ranks.unshare(ranks.all_gather(mine))
    return episodes, success_table(episodes)


# --- stages of a run (notebook 03) ---------------------------------------------------------------------------

def train_between_evaluations(params: Params, run_dir: str | Path, env_url: str | list[str]):
    """Held-out success of the untrained model, after the warm start (`evaluation.after_warmstart`), and after
    GRPO, with training in between: (TrainResult, {stage: per-task table}); no stages when
    `evaluation.episodes_per_task` is 0.

    Training starts from the evaluated weights (LoRA adapters are injected into them, in place), so every
    stage measures the same model on the same episodes; what GRPO itself added is "trained" - "warm-started".
    """
    from bgwork.models import resolve_model
    from bgwork.replicas import connect
    from bgwork.trainer import device_and_dtype, train

    device, dtype = device_and_dtype(params.model.dtype)
    stages: dict = {}
    with connect(env_url, params.env) as client:
        def play(stage, resolved):
            if params.evaluation.episodes_per_task:
                episodes, stages[stage] = evaluate(resolved.model, resolved.tokenizer, client, params)
                if ranks.is_main():
                    save_episodes(run_dir, stage, episodes)

        base = resolve_model(params.model.name, dtype=dtype, device=device)
        if params.evaluation.before_training:
            play("untrained", base)
        warm = (lambda resolved: play("warm-started", resolved)) if params.evaluation.after_warmstart else None
        result = train(params, run_dir, env_url, resolved=base, after_warm_start=warm)
        play("trained", base)
    return result, stages


def save_episodes(run_dir: str | Path, stage: str, episodes: list[Episode]) -> Path:
    """<run dir>/eval/<stage>.jsonl, one episode a line: what paired comparisons between models read back."""
    path = Path(run_dir) / "eval" / f"{stage}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in episode_records(episodes)))
    return path


def load_episodes(run_dir: str | Path, stage: str) -> list[dict]:
    path = Path(run_dir) / "eval" / f"{stage}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved evaluation of stage {stage!r} in this run dir")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stage_table(stages: dict):
    """Stages side by side (columns: stage x metric, rows: tasks and "all"), rounded to 3 decimals for reading;
    None when nothing was evaluated."""
    import pandas as pd

    return pd.concat({s: stages[s] for s in STAGES if s in stages}, axis=1).round(3) if stages else None


def plot_stages(table):
    """Held-out success rate per task, one bar per stage."""
    import matplotlib.pyplot as plt

    if table is None:
        return None
    ax = table.xs(SUCCESS_RATE, axis=1, level=1).plot.bar(figsize=(8, 3.5), rot=0)
    ax.set_ylabel("success rate (held-out seeds)")
    plt.tight_layout()
    return ax.figure


def stage_metrics(stages: dict, tasks: list[str]) -> dict:
    """metrics.json figures: each stage's held-out success rate, overall and per task."""
    out = {}
    for stage, table in stages.items():
        out[eval_success_key(stage)] = float(table.loc["all", SUCCESS_RATE])
        out.update({eval_success_key(stage, t): float(table.loc[t, SUCCESS_RATE]) for t in tasks})
    return out
