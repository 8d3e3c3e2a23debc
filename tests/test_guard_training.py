"""CollapseGuard inside a real (tiny) TRL GRPO training run fed a zero-variance deadlock."""

from __future__ import annotations

import pytest
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from bgwork import metrics as m
from bgwork.config import DiagnosticsParams, GuardParams
from bgwork.diagnostics import diagnose_runs
from bgwork.guard import CollapseGuard
from bgwork.models import TINY_RANDOM_LFM2, resolve_model
from bgwork.runs import read_metrics
from bgwork.tbscalars import load_scalars


@pytest.fixture(scope="module")
def tiny():
    return resolve_model(TINY_RANDOM_LFM2)


def always_solved(completions, **kwargs):
    """Every rollout scores 1.0: reward_std 0 and frac_reward_zero_std 1 at every step, as after bug 5."""
    return [1.0] * len(completions)


def _train(tiny, run_dir, mode, max_steps, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    args = GRPOConfig(output_dir=str(run_dir / "checkpoints"), per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=4, max_steps=max_steps, logging_steps=1, save_strategy="no",
                      report_to=["tensorboard"], use_cpu=True, learning_rate=1e-4, seed=0, disable_tqdm=True)
    guard = CollapseGuard(DiagnosticsParams(deadlock_patience=3), GuardParams(mode=mode), run_dir=run_dir)
    trainer = GRPOTrainer(model=tiny.model, processing_class=tiny.tokenizer, reward_funcs=[always_solved], args=args,
                          train_dataset=Dataset.from_dict({"prompt": ["Goal: click the button."] * 32}),
                          callbacks=[guard])
    trainer.train()
    return trainer


def test_guard_stops_a_deadlocked_grpo_run_with_a_checkpoint(tiny, tmp_path, monkeypatch):
    trainer = _train(tiny, tmp_path, "stop", max_steps=20, monkeypatch=monkeypatch)

    assert trainer.state.global_step == 3  # deadlock_patience=3 dead steps, then stop (not 20)
    assert (tmp_path / "checkpoints" / "checkpoint-3" / "model.safetensors").is_file()
    metrics = read_metrics(tmp_path)
    assert metrics["guard/stopped"] is True and metrics["guard/stopped_at_step"] == 3
    assert metrics["guard/reason"].startswith("deadlocked at step 1")
    assert metrics["guard/finding"]["data"]["regime"] == "all solved"
    # the offline reader sees the same run through TRL's real TensorBoard tags (train/ prefix dropped)
    df = load_scalars(tmp_path)
    assert {m.REWARD, m.REWARD_STD, m.FRAC_REWARD_ZERO_STD, m.ENTROPY, m.GRAD_NORM, m.LEARNING_RATE} <= set(df["tag"])
    [verdict] = diagnose_runs(df, DiagnosticsParams(deadlock_patience=3))
    assert verdict.summary == "deadlocked from step 1"


@pytest.mark.slow  # the callback unit test covers warn mode in the default suite
def test_guard_in_warn_mode_lets_training_finish(tiny, tmp_path, monkeypatch):
    trainer = _train(tiny, tmp_path, "warn", max_steps=4, monkeypatch=monkeypatch)

    assert trainer.state.global_step == 4
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").glob("checkpoint-*"))
    metrics = read_metrics(tmp_path)
    assert metrics["guard/stopped"] is False
    assert any("deadlocked" in w for w in metrics["guard/warnings"])


def varied(completions, **kwargs):
    """Rewards that differ within every group: non-zero advantages, so every update moves the weights."""
    return [float(i % 2) for i in range(len(completions))]


def test_guard_stops_a_diverged_run_and_saves_none_of_it(tiny, tmp_path, monkeypatch):
    """A learning rate of 1e30 puts the weights out of range at the first update: loss and grad_norm turn NaN/inf
    (what the 2-GPU KV-carry runs did). The guard stops at that step in warn mode too, and the checkpoint that was
    due then is not written; the healthy one before it stays."""
    from bgwork import trainer as bt

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tensorboard"))
    model = resolve_model(TINY_RANDOM_LFM2)  # its own copy: this run destroys the weights
    args = GRPOConfig(output_dir=str(tmp_path / "checkpoints"), per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=4, max_steps=8, logging_steps=1, save_strategy="steps", save_steps=1,
                      report_to=["tensorboard"], use_cpu=True, learning_rate=1e30, warmup_steps=0,
                      lr_scheduler_type="constant", seed=0, disable_tqdm=True)
    guard = CollapseGuard(DiagnosticsParams(), GuardParams(mode="warn"), run_dir=tmp_path)
    trainer = GRPOTrainer(model=model.model, processing_class=model.tokenizer, reward_funcs=[varied], args=args,
                          train_dataset=Dataset.from_dict({"prompt": ["Goal: click the button."] * 32}),
                          callbacks=[guard])
    trainer.train()

    step = trainer.state.global_step
    assert step < 8 and guard.stop_reason.startswith(f"diverged at step {step}")
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
    assert saved == [f"checkpoint-{s}" for s in range(1, step)]
    metrics = read_metrics(tmp_path)
    assert metrics["guard/stopped"] is True and metrics["guard/finding"]["kind"] == "diverged"
    with pytest.raises(bt.TrainingDiverged, match=rf"checkpoint-{step - 1}, is intact.*train.learning_rate"):
        bt.check_finite(guard.stop_reason, tmp_path / "checkpoints", tmp_path)
    # notebook 04 reads the same verdict from the TensorBoard files
    [verdict] = diagnose_runs(load_scalars(tmp_path), DiagnosticsParams())
    assert verdict.status == "diverged" and verdict.step == step
