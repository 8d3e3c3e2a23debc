"""The "learning has to be real" experiment (slow, not CI): notebook 03 with params/learn.yaml on CPU.

The bundled SmolLM2-135M-Instruct plays held-out seeds of four easy tasks before and after training (a short
warm start on scripted demonstrations, then GRPO with LoRA); the trained success rate must be at least 3x the
untrained one, within an hour. A second test asserts issue 13's headline, GRPO's own share over SFT-only
(params/ablation.yaml, replayed tasks; strict xfail until it is reached). docs/benchmarks.md records the tables.

    .venv/bin/python -m pytest -m slow tests/test_learning.py
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(3900)  # the run itself may take up to an hour
def test_trained_success_is_at_least_three_times_untrained(tmp_path):
    env = {**os.environ, "BGWORK_RUNS_DIR": str(tmp_path / "runs")}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "bgwork", "run", "03", "-f", str(ROOT / "params/learn.yaml")],
                         capture_output=True, text=True, env=env, timeout=3600, cwd=ROOT)
    minutes = (time.monotonic() - started) / 60
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    untrained, trained = metrics["eval/untrained_success_rate"], metrics["eval/trained_success_rate"]
    print(f"untrained {untrained:.3f} -> trained {trained:.3f} in {minutes:.1f} min ({run_dir})")
    assert trained >= 3 * untrained - 1e-9 and trained > 0, metrics  # rates of the same episode count
    assert minutes < 60


def _run_arm(tmp_path, name: str, *overrides: str) -> Path:
    env = {**os.environ, "BGWORK_RUNS_DIR": str(tmp_path / "runs")}
    out = subprocess.run([sys.executable, "-m", "bgwork", "run", "03", "-f", str(ROOT / "params/ablation.yaml"),
                          "-p", f"name={name}", *[a for o in overrides for a in ("-p", o)]],
                         capture_output=True, text=True, env=env, timeout=3600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").glob(f"*__03_full_run__{name}")
    return run_dir


@pytest.mark.slow
@pytest.mark.timeout(7200)  # two arms of params/ablation.yaml, ~35 min together on the 2-core box
@pytest.mark.xfail(strict=True, reason="not reached yet: SFT+GRPO - SFT-only was +0.008 [-0.025, +0.042] over "
                   "training seeds 0 and 1 on 2026-12-03 with exploration (+0.000 without, 2026-11-28; "
                   "+0.025 with rollout.curriculum=signal, seed 0; "
                   "docs/benchmarks.md, \"GRPO's own share\"); strict, so reaching it fails this marker and the "
                   "docs get updated")
def test_grpo_adds_its_own_share_over_sft_only(tmp_path):
    """Issue 13's headline on the replayed task set: SFT+GRPO beats SFT-only given the same number of extra
    optimizer steps (4 more demonstration passes) by >= 0.10 held-out success, the paired interval above 0."""
    from bgwork import ablation as ab

    sft = _run_arm(tmp_path, "ablation-sft", "train.max_steps=0", "warmstart.epochs=6")
    both = _run_arm(tmp_path, "ablation-sft-grpo-s0", "seed=0")
    d = ab.paired_difference(ab.Arm("SFT+GRPO", [both], "trained"), ab.Arm("SFT-only", [sft], "trained"))
    print(f"SFT+GRPO - SFT-only: {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
    assert d["mean"] >= 0.10 and d["ci_low"] > 0, d
