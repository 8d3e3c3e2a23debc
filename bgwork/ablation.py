"""Does GRPO earn its own share? Arms of an ablation compared on the same held-out episodes.

Each arm is one or more run dirs of notebook 03 (one per training seed) and the evaluation stage that holds the
arm's model (`<run dir>/eval/<stage>.jsonl`, bgwork.evaluation). Every stage plays the same held-out (task, seed)
episodes, so arms are compared pair by pair:

    arms = [Arm("base", [sft_run], "untrained"), Arm("SFT-only", [sft_run], "trained"),
            Arm("GRPO-only", grpo_runs, "trained"), Arm("SFT+GRPO", sft_grpo_runs, "trained")]
    table = success_table(arms)                          # per task: success and 95 % Wilson interval per arm
    d = paired_difference(arms[3], arms[1])              # SFT+GRPO - SFT-only: mean, 95 % bootstrap CI
    stage_difference(run_dir, "trained", "warm-started") # GRPO's own share within one run (notebook 03)

An arm with several runs (training seeds) pools their episodes for its success rate; for a paired difference
each held-out episode's outcome is first averaged over the arm's runs, then the pairs are bootstrapped.
`per_seed_differences` shows each training seed on its own, so a reader sees whether the seeds agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bgwork.evaluation import load_episodes
from bgwork.stats import paired_difference as _paired
from bgwork.stats import wilson

ALL = "all"
DEMO, NO_DEMO = "tasks with demos", "tasks without demos"


@dataclass
class Arm:
    name: str
    runs: list[Path]
    stage: str  # "untrained", "warm-started" or "trained"
    episodes: list[list[dict]] = field(default_factory=list, repr=False)  # per run, read from its eval/<stage>.jsonl

    def __post_init__(self):
        self.runs = [Path(r) for r in self.runs]
        if not self.runs:
            raise ValueError(f"arm {self.name!r}: no run dirs")
        self.episodes = [load_episodes(r, self.stage) for r in self.runs]
        keys = [sorted(_key(e) for e in eps) for eps in self.episodes]
        if any(k != keys[0] for k in keys):
            raise ValueError(f"arm {self.name!r}: its runs evaluated different held-out episodes ({self.runs})")


def _key(e: dict) -> tuple[str, int]:
    return e["task"], int(e["seed"])


def outcomes(arm: Arm) -> dict[tuple[str, int], float]:
    """(task, seed) -> success averaged over the arm's runs (lost episodes left out)."""
    sums: dict = {}
    for eps in arm.episodes:
        for e in eps:
            if e["success"] is not None:
                n, s = sums.get(_key(e), (0, 0.0))
                sums[_key(e)] = (n + 1, s + float(e["success"]))
    return {k: s / n for k, (n, s) in sums.items()}


def outcomes_tasks(arm: Arm) -> list[str]:
    """The arm's tasks in the order its evaluation played them."""
    return list(dict.fromkeys(e["task"] for e in arm.episodes[0]))


def demo_tasks(run_dir: str | Path) -> list[str] | None:
    """The tasks a run's warm start demonstrated (params.yaml), or None when it had no warm start."""
    from bgwork.params import load_params
    from bgwork.warmstart import demo_tasks as tasks_of

    p = load_params(Path(run_dir) / "params.yaml")
    return tasks_of(p) if p.warmstart.episodes_per_task else None


def task_groups(tasks: list[str], demos: list[str] | None) -> dict[str, list[str]]:
    """Rows of the summary: every task, then the tasks with and without demonstrations, then all."""
    groups = {t: [t] for t in tasks}
    if demos is not None:
        groups[DEMO] = [t for t in tasks if t in demos]
        groups[NO_DEMO] = [t for t in tasks if t not in demos]
    groups[ALL] = list(tasks)
    return groups


def success_table(arms: list[Arm], demos: list[str] | None = None):
    """Rows: tasks, the demo / no-demo groups and "all"; columns: per arm, success rate (episodes pooled over its
    runs), its 95 % Wilson interval and the number of episodes."""
    import pandas as pd

    groups = task_groups(outcomes_tasks(arms[0]), demos)
    cols = {}
    for arm in arms:
        scored = [e for eps in arm.episodes for e in eps if e["success"] is not None]
        for row, members in groups.items():
            hits = [bool(e["success"]) for e in scored if e["task"] in members]
            lo, hi = wilson(sum(hits), len(hits))
            cols.setdefault((arm.name, "success"), {})[row] = sum(hits) / len(hits) if hits else float("nan")
            cols.setdefault((arm.name, "ci_low"), {})[row] = lo
            cols.setdefault((arm.name, "ci_high"), {})[row] = hi
            cols.setdefault((arm.name, "episodes"), {})[row] = len(hits)
    table = pd.DataFrame(cols)
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["arm", "metric"])
    return table


def paired_difference(a: Arm, b: Arm, tasks: list[str] | None = None, seed: int = 0) -> dict:
    """a - b in held-out success over the episodes both played (optionally only `tasks`): the mean and its 95 %
    bootstrap interval over the (task, seed) pairs (each side averaged over its runs first)."""
    oa, ob = outcomes(a), outcomes(b)
    keys = sorted(k for k in oa.keys() & ob.keys() if tasks is None or k[0] in tasks)
    if not keys:
        which = f" of {tasks}" if tasks else ""
        raise ValueError(f"arms {a.name!r} and {b.name!r} share no held-out episode{which}")
    return _paired([oa[k] for k in keys], [ob[k] for k in keys], seed=seed)


def difference_table(a: Arm, b: Arm, demos: list[str] | None = None):
    """a - b per task, per demo / no-demo group and overall, with 95 % bootstrap intervals."""
    import pandas as pd

    rows = {row: paired_difference(a, b, members) for row, members in task_groups(outcomes_tasks(a), demos).items()}
    return pd.DataFrame(rows).T[["mean", "ci_low", "ci_high", "pairs", "excludes_zero"]]


def per_seed_differences(a: Arm, b: Arm, tasks: list[str] | None = None) -> list[dict]:
    """a - b for each of a's runs (training seeds) on its own: do the seeds agree? When a and b are two stages of
    the same runs (SFT+GRPO against its own warm start), each run is paired with itself, not with b's pool."""
    own = [r.resolve() for r in a.runs] == [r.resolve() for r in b.runs]
    return [{"run": r.name, **paired_difference(Arm(a.name, [r], a.stage), Arm(b.name, [r], b.stage) if own else b,
                                                tasks)} for r in a.runs]


def stage_difference(run_dir: str | Path, after: str = "trained", before: str = "warm-started") -> dict | None:
    """Within one run: `after` - `before` on the same held-out episodes (GRPO's own share after a warm start);
    None when the run did not save both stages."""
    run_dir = Path(run_dir)
    if not all((run_dir / "eval" / f"{s}.jsonl").is_file() for s in (after, before)):
        return None
    return paired_difference(Arm(after, [run_dir], after), Arm(before, [run_dir], before))


def stage_difference_metrics(diff: dict | None, after: str = "trained", before: str = "warm-started") -> dict:
    """metrics.json figures of `stage_difference`: eval/<after>_minus_<before>{,_ci_low,_ci_high}."""
    if diff is None:
        return {}
    key = f"eval/{_stage_key(after)}_minus_{_stage_key(before)}"
    return {key: diff["mean"], f"{key}_ci_low": diff["ci_low"], f"{key}_ci_high": diff["ci_high"]}


def _stage_key(stage: str) -> str:
    from bgwork.metrics import STAGES

    return STAGES[stage]


def markdown(table, digits: int = 2) -> str:
    """An arm table as markdown: one column per arm, "0.73 [0.55, 0.86] (30)" per cell."""
    arms = list(dict.fromkeys(table.columns.get_level_values(0)))
    lines = ["| task | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for row in table.index:
        cells = []
        for arm in arms:
            s, lo, hi, n = (table.loc[row, (arm, k)] for k in ("success", "ci_low", "ci_high", "episodes"))
            cells.append(f"{s:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] ({int(n)})")
        name = f"**{row}**" if row in (ALL, DEMO, NO_DEMO) else row
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def difference_markdown(diffs) -> str:
    """A `difference_table` as markdown: "+0.12 [+0.04, +0.20] (270)" per row."""
    lines = ["| tasks | difference [95 % CI] (pairs) | interval excludes 0 |", "|---|---|---|"]
    for row, d in diffs.iterrows():
        name = f"**{row}**" if row in (ALL, DEMO, NO_DEMO) else row
        lines.append(f"| {name} | {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] ({int(d['pairs'])}) | "
                     f"{'yes' if d['excludes_zero'] else 'no'} |")
    return "\n".join(lines)
