"""The "learning has to be real" experiment (slow, not CI): notebook 03 with params/learn.yaml on CPU.

The bundled SmolLM2-135M-Instruct plays held-out seeds of four easy tasks before and after training (a short
warm start on scripted demonstrations, then GRPO with LoRA); the trained success rate must be at least 3x the
untrained one, within an hour. docs/benchmarks.md records the measured table.

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
