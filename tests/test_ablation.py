"""bgwork.ablation: arms of notebook-03 run dirs compared on the same held-out episodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bgwork import ablation as ab
from bgwork.params import dump_yaml, load_params
from bgwork.stats import wilson

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["t1", "t2", "t3"]
SEEDS = range(100, 110)


def make_run(root: Path, name: str, stages: dict[str, dict[str, float]], demos=("t1",)) -> Path:
    """A run dir as notebook 03 leaves it: params.yaml and eval/<stage>.jsonl; `stages` gives each stage's success
    rate per task (the first k seeds of a task succeed)."""
    run = root / f"20261127T000000Z__03_full_run__{name}"
    (run / "eval").mkdir(parents=True)
    dump_yaml(load_params({"name": name, "rollout": {"tasks": TASKS},
                           "warmstart": {"episodes_per_task": 2 if demos else 0, "tasks": list(demos) or None}}),
              run / "params.yaml")
    for stage, rates in stages.items():
        lines = [{"task": t, "seed": s, "success": i < round(rates[t] * len(SEEDS)), "reward": 0.0, "steps": 1,
                  "format_errors": 0, "actions": [], "lost": None} for t in TASKS for i, s in enumerate(SEEDS)]
        (run / "eval" / f"{stage}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


def test_success_table_pools_runs_with_wilson_intervals_and_demo_groups(tmp_path):
    a = make_run(tmp_path, "a-s0", {"trained": {"t1": 1.0, "t2": 0.5, "t3": 0.0}})
    b = make_run(tmp_path, "a-s1", {"trained": {"t1": 0.8, "t2": 0.5, "t3": 0.2}})
    arm = ab.Arm("SFT+GRPO", [a, b], "trained")
    table = ab.success_table([arm], ab.demo_tasks(a))
    assert list(table.index) == TASKS + [ab.DEMO, ab.NO_DEMO, ab.ALL]
    row = table.loc["t1"]
    assert row[("SFT+GRPO", "success")] == 0.9 and row[("SFT+GRPO", "episodes")] == 20
    assert (row[("SFT+GRPO", "ci_low")], row[("SFT+GRPO", "ci_high")]) == pytest.approx(wilson(18, 20))
    assert table.loc[ab.NO_DEMO, ("SFT+GRPO", "success")] == pytest.approx((10 + 2) / 40)
    assert table.loc[ab.ALL, ("SFT+GRPO", "episodes")] == 60
    assert "| t1 | 0.90 [" in ab.markdown(table)


def test_paired_difference_averages_each_arms_runs_per_episode(tmp_path):
    sft = make_run(tmp_path, "sft", {"untrained": {"t1": 0.0, "t2": 0.0, "t3": 0.0},
                                     "trained": {"t1": 0.5, "t2": 0.5, "t3": 0.0}})
    g0 = make_run(tmp_path, "g-s0", {"trained": {"t1": 0.5, "t2": 1.0, "t3": 0.6}})
    g1 = make_run(tmp_path, "g-s1", {"trained": {"t1": 0.5, "t2": 1.0, "t3": 0.2}})
    both, sft_only = ab.Arm("SFT+GRPO", [g0, g1], "trained"), ab.Arm("SFT-only", [sft], "trained")
    d = ab.paired_difference(both, sft_only)
    assert d["pairs"] == 30 and d["mean"] == pytest.approx((0 + 5 + 4) / 30) and d["excludes_zero"]
    assert ab.paired_difference(both, sft_only, ["t1"])["mean"] == 0.0
    diffs = ab.difference_table(both, sft_only, ab.demo_tasks(sft))
    assert diffs.loc["t3", "mean"] == pytest.approx(0.4) and diffs.loc[ab.DEMO, "mean"] == 0.0
    seeds = ab.per_seed_differences(both, sft_only, ["t3"])
    assert [round(s["mean"], 3) for s in seeds] == [0.6, 0.2]
    assert "| **all** | +0.300 [" in ab.difference_markdown(diffs)


def test_stage_difference_is_grpos_share_within_a_run(tmp_path):
    run = make_run(tmp_path, "r", {"warm-started": {"t1": 0.5, "t2": 0.2, "t3": 0.0},
                                   "trained": {"t1": 0.5, "t2": 0.6, "t3": 0.3}})
    d = ab.stage_difference(run)
    assert d["mean"] == pytest.approx(0.7 / 3) and d["ci_low"] > 0
    figures = ab.stage_difference_metrics(d)
    assert figures["eval/trained_minus_warmstart"] == d["mean"] and "eval/trained_minus_warmstart_ci_low" in figures
    assert ab.stage_difference(make_run(tmp_path, "no-warm", {"trained": {"t1": 1, "t2": 1, "t3": 1}})) is None
    assert ab.stage_difference_metrics(None) == {}


def test_per_seed_share_within_runs_pairs_each_run_with_its_own_warm_start(tmp_path):
    """Two seeds whose warm starts differ: each seed's GRPO share is against its own warm start, not the pool."""
    r0 = make_run(tmp_path, "g-s0", {"warm-started": {"t1": 0.0, "t2": 0.0, "t3": 0.0},
                                     "trained": {"t1": 0.3, "t2": 0.0, "t3": 0.0}})
    r1 = make_run(tmp_path, "g-s1", {"warm-started": {"t1": 0.6, "t2": 0.0, "t3": 0.0},
                                     "trained": {"t1": 0.6, "t2": 0.0, "t3": 0.0}})
    both, warm = ab.Arm("SFT+GRPO", [r0, r1], "trained"), ab.Arm("SFT", [r0, r1], "warm-started")
    seeds = ab.per_seed_differences(both, warm, ["t1"])
    assert [round(s["mean"], 3) for s in seeds] == [0.3, 0.0]  # against the pool it would read 0.0 and +0.3
    assert [round(s["mean"], 3) for s in seeds] == [round(ab.stage_difference(r)["mean"] * 3, 3) for r in (r0, r1)]


def test_arms_must_have_played_the_same_episodes(tmp_path):
    a = make_run(tmp_path, "a", {"trained": {"t1": 1.0, "t2": 0.5, "t3": 0.0}})
    b = make_run(tmp_path, "b", {"trained": {"t1": 1.0, "t2": 0.5, "t3": 0.0}})
    lines = (b / "eval" / "trained.jsonl").read_text().splitlines()
    (b / "eval" / "trained.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="its runs evaluated different held-out episodes"):
        ab.Arm("x", [a, b], "trained")
    with pytest.raises(FileNotFoundError, match="no saved evaluation of stage 'untrained'"):
        ab.Arm("x", [a], "untrained")


def test_the_benchmark_script_prints_the_table_and_the_verdict(tmp_path):
    zero = {"t1": 0.0, "t2": 0.0, "t3": 0.0}
    sft = make_run(tmp_path, "ablation-sft", {"untrained": zero, "trained": {"t1": 0.9, "t2": 0.3, "t3": 0.3}})
    grpo = [make_run(tmp_path, f"ablation-grpo-s{i}", {"trained": {"t1": 0.5, "t2": 0.5, "t3": 0.5}}, demos=())
            for i in (0, 1)]
    both = [make_run(tmp_path, f"ablation-sft-grpo-s{i}", {"warm-started": {"t1": 0.9, "t2": 0.3, "t3": 0.3},
                                                          "trained": {"t1": 0.9, "t2": 0.8, "t3": 0.7}})
            for i in (0, 1)]
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--runs-root", str(tmp_path)],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert f"SFT-only: {sft.name} (trained)" in out and grpo[1].name in out and both[0].name in out
    assert "Goal 1: SFT+GRPO >= SFT-only + 0.10 with an interval excluding 0: +0.300" in out and "-> met" in out
    assert "Goal 2: GRPO-only above base on the tasks without demos ['t2', 't3']: +0.500" in out
    assert "| **tasks without demos** |" in out
