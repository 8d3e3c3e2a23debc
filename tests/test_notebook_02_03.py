"""Notebooks 02 (debug run) and 03 (full run) executed headless by `bgwork run`, tiny random LFM2, real envserver."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser  # every test here starts an env server, hence Chromium

ROOT = Path(__file__).resolve().parents[1]


def bgwork_run(tmp_path, notebook, *args):
    env = {**os.environ, "BGWORK_RUNS_DIR": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "bgwork", "run", notebook, "-f", str(ROOT / "params/tiny.yaml"), *args]
    return subprocess.run(cmd,
                          capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)


def test_debug_run_trains_plots_and_records(tmp_path):
    out = bgwork_run(tmp_path, "02")
    assert out.returncode == 0, out.stderr[-3000:]
    (d,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["train/global_step"] == 2
    for key in ("final_reward", "final_reward_std", "final_entropy", "final_loss", "final_success_rate"):
        assert f"train/{key}" in metrics, key
    out_dir = Path(metrics["train/output_dir"])
    assert out_dir.parent == d and out_dir.name.startswith("tiny-random-lfm2-browsergym-")
    assert (out_dir / "checkpoint-2").is_dir() and (out_dir / "final").is_dir()
    assert list((out_dir / "tensorboard").glob("events.out.tfevents.*"))
    html = (d / "02_debug_run.html").read_text()
    assert "data:image/png;base64," in html


def test_full_run_evaluates_before_and_after(tmp_path):
    """LoRA over a warm start, then the optional GGUF export of the final model (random weights: sizes and
    plumbing only, verification is test_gguf_export's job)."""
    out = bgwork_run(tmp_path, "03", "-p", "train.max_steps=1", "-p", "train.save_steps=1",
                     "-p", "evaluation.episodes_per_task=2", "-p", "warmstart.episodes_per_task=2",
                     "-p", "export.after_training=true", "-p", "export.quants=[F16, Q8_0]", "-p", "export.verify=false")
    assert out.returncode == 0, out.stderr[-3000:]
    (d,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["train/global_step"] == 1
    assert metrics["eval/untrained_success_rate"] == 0.0  # random weights write no valid action
    assert "eval/trained_success_rate/click-test" in metrics
    assert "eval/warmstart_success_rate/click-test" in metrics  # GRPO's own share is visible in the report
    final = Path(metrics["train/final_dir"])
    base = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base) == final.parent / "warmstart"  # the adapter sits on the warm-started weights
    assert set(metrics["export/files"]) == {"F16", "Q8_0"}
    assert all(Path(f["path"]).stat().st_size > 0 for f in metrics["export/files"].values())
