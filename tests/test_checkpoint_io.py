"""Checkpoint completeness: what counts as complete, and a real transformers Trainer killed in the middle of a
save (SIGKILL from inside its own save, after the weights and optimizer are written, before trainer_state.json).

Without bgwork's AtomicCheckpoints the kill leaves a `checkpoint-2` holding weights and optimizer state; with it,
only a hidden `.saving-checkpoint-2`. Either way `latest` resumes from checkpoint-1 and notebook 05's plan
offers the fragment for deletion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ckpt_fixtures import make_run

from bgwork.checkpoint_io import checkpoint_problem, rotate
from bgwork.checkpoints import apply_plan, inventory, latest_checkpoint, make_plan
from bgwork.config import CleanupParams, TrainParams
from bgwork.trainer import TrainingSetupError, newest_run_checkpoint, resolve_resume

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = "tiny-browsergym-20260101T000000Z"  # named like bgwork's output dirs, so `latest` looks inside

# A plain transformers Trainer (the same base class GRPOTrainer saves through) on a tiny LFM2: 3 steps, a
# checkpoint every step, killed by SIGKILL inside the save of step KILL_AT (0: never).
CHILD = r'''
import os, signal, sys
import torch
from transformers import Trainer, TrainingArguments
from ckpt_fixtures import tiny_lfm2
from bgwork.checkpoint_io import AtomicCheckpoints

out, atomic, kill_at, limit = sys.argv[1], sys.argv[2] == "atomic", int(sys.argv[3]), int(sys.argv[4])
base = (AtomicCheckpoints, Trainer) if atomic else (Trainer,)

class Killed(*base):
    def _save_rng_state(self, output_dir):  # runs after model + optimizer, before trainer_state.json
        if self.state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        super()._save_rng_state(output_dir)

ids = torch.tensor([1, 2, 3, 4, 5, 6])
data = [{"input_ids": ids, "labels": ids}] * 8
args = TrainingArguments(output_dir=out, max_steps=3, per_device_train_batch_size=2, save_steps=1,
                         save_total_limit=limit, report_to=[], use_cpu=True, logging_steps=1)
Killed(model=tiny_lfm2(vocab_size=64, hidden=32), args=args, train_dataset=data).train()
print("finished")
'''


def train_child(out: Path, atomic: bool, kill_at: int, limit: int = 5) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.run([sys.executable, "-c", CHILD, str(out), "atomic" if atomic else "plain", str(kill_at),
                           str(limit)], capture_output=True, text=True, env=env, timeout=600)


def latest(run_dir: Path) -> Path | None:
    return resolve_resume(TrainParams(resume_from_checkpoint="latest"), run_dir)


@pytest.mark.parametrize("atomic", [False, True], ids=["transformers alone", "AtomicCheckpoints"])
def test_kill_mid_save_never_leaves_a_checkpoint_that_looks_complete(tmp_path, atomic):
    outputs = tmp_path / "outputs"
    run_dir = outputs / "runs" / "r"
    out = run_dir / OUTPUT
    killed = train_child(out, atomic, kill_at=2)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert checkpoint_problem(out / "checkpoint-1") is None
    fragment = out / ".saving-checkpoint-2" if atomic else out / "checkpoint-2"
    assert (fragment / "checkpoint-2" if atomic else fragment).joinpath("optimizer.pt").is_file()  # real bytes
    if atomic:
        assert not (out / "checkpoint-2").exists()
        assert checkpoint_problem(fragment) == "left by an interrupted save"
    else:
        assert checkpoint_problem(fragment) == "no trainer_state.json (the save did not finish)"
    assert newest_run_checkpoint(run_dir) == latest(run_dir) == out / "checkpoint-1"
    assert latest_checkpoint(outputs) == out / "checkpoint-1"

    policy = CleanupParams(keep_last=5, keep_best=0, slim=False)
    plan = make_plan(inventory(outputs, policy), policy, outputs)
    assert [(a.kind, Path(a.checkpoint).name, a.reason.split(":")[0]) for a in plan.actions] == [
        ("delete", fragment.name, "incomplete")]
    assert [Path(p).name for p, _ in plan.kept] == ["checkpoint-1"]
    apply_plan(plan)
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-1"]


def test_atomic_saves_rotate_like_transformers_and_leave_nothing_behind(tmp_path):
    out = tmp_path / "runs" / "r" / OUTPUT
    done = train_child(out, atomic=True, kill_at=0, limit=2)
    assert done.returncode == 0 and "finished" in done.stdout, done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2", "checkpoint-3"]
    assert all(checkpoint_problem(out / f"checkpoint-{s}") is None for s in (2, 3))
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3


def test_what_counts_as_complete(tmp_path):
    out = make_run(tmp_path / "runs" / "r" / OUTPUT, [1, 2, 3, 4, 5, 6, 7])
    ck = {s: out / f"checkpoint-{s}" for s in range(1, 8)}
    assert all(checkpoint_problem(p) is None for p in ck.values())
    (ck[7] / "trainer_state.json").unlink()
    state = ck[6] / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # cut off mid-write
    weights = ck[5] / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    optimizer = ck[4] / "optimizer.pt"
    os.truncate(optimizer, optimizer.stat().st_size // 2)
    (ck[3] / "model.safetensors").rename(ck[3] / "model-00001-of-00002.safetensors")
    (ck[3] / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):  # slimmed by notebook 05: still complete
        (ck[2] / name).unlink()
    problems = {s: checkpoint_problem(p) for s, p in ck.items()}
    assert problems[7] == "no trainer_state.json (the save did not finish)"
    assert problems[6].startswith("trainer_state.json unreadable (cut off?)")
    assert problems[5].startswith("model.safetensors: ") and problems[5].endswith("(cut off)")
    assert problems[4] == "optimizer.pt: not a whole torch file (cut off)"
    assert problems[3] == "model.safetensors.index.json names missing shard(s) ['model-00002-of-00002.safetensors']"
    assert problems[2] is None and problems[1] is None
    assert latest(out.parent) == ck[2]
    with pytest.raises(TrainingSetupError, match=r"checkpoint-6: not a complete checkpoint \(trainer_state.json "
                                                 r"unreadable"):
        resolve_resume(TrainParams(resume_from_checkpoint=str(ck[6])), out.parent)


def test_latest_names_what_it_skipped_when_nothing_is_complete(tmp_path):
    out = make_run(tmp_path / "r" / OUTPUT, [1])
    (out / "checkpoint-1" / "trainer_state.json").unlink()
    with pytest.raises(TrainingSetupError, match=r"no complete checkpoint-\* under .* \(incomplete, skipped: "
                                                 r"tiny-browsergym-20260101T000000Z/checkpoint-1: no trainer_state"):
        latest(tmp_path / "r")


def test_rotation_removes_oldest_beyond_the_limit_and_never_the_protected(tmp_path):
    out = make_run(tmp_path / OUTPUT, [1, 2, 3, 4])
    for i, s in enumerate([1, 2, 3, 4]):  # modification times in step order
        os.utime(out / f"checkpoint-{s}", (1_000_000 + i, 1_000_000 + i))
    removed = rotate(out, 2, keep=[out / "checkpoint-1"])
    assert [p.name for p in removed] == ["checkpoint-2", "checkpoint-3"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "checkpoint-4"]
