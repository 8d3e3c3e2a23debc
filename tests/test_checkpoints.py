"""Checkpoint cleanup on real checkpoint folders (tiny LFM2 save_pretrained + real AdamW state)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ckpt_fixtures import make_run

from bgwork import metrics as m
from bgwork.checkpoints import Action, CheckpointError, apply_plan, copy_checkpoint, inventory, make_plan
from bgwork.config import CleanupParams
from bgwork.training_lock import LOCK_NAME, AlreadyTraining, training_lock


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def outputs(tmp_path):
    root = tmp_path / "outputs"
    # run A: 4 checkpoints, the best reward at step 20; run B: LoRA, 2 checkpoints
    make_run(root / "runs" / "20261125T000000Z__02__a" / "smol-browsergym-a", [10, 20, 30, 40], [0.2, 0.9, 0.1, 0.3])
    make_run(root / "runs" / "20261125T000001Z__02__b" / "lfm2-browsergym-b", [5, 10], [0.5, 0.4], kind="lora")
    return root


def test_inventory_sizes_kind_step_metrics(outputs):
    runs = inventory(outputs)
    assert [r.name.split("/")[-1] for r in runs] == ["smol-browsergym-a", "lfm2-browsergym-b"]
    a, b = runs
    assert [c.step for c in a.checkpoints] == [10, 20, 30, 40]
    c = a.checkpoints[1]
    assert c.kind == "full" and b.checkpoints[0].kind == "lora"
    files = dict(c.files)
    assert c.model_bytes == files["model.safetensors"]
    assert c.optimizer_bytes == files["optimizer.pt"] + files["scheduler.pt"] + files["rng_state.pth"]
    assert c.optimizer_bytes > c.model_bytes  # AdamW keeps two moments per parameter
    assert c.total_bytes == sum(files.values())
    assert c.metric(m.REWARD) == pytest.approx(0.9) and c.metric(m.SUCCESS_RATE) == pytest.approx(0.45)


def test_dry_run_deletes_nothing_and_plan_follows_policy(outputs):
    before = tree(outputs)
    policy = CleanupParams(keep_last=1, keep_best=1)
    plan = make_plan(inventory(outputs, policy), policy, outputs)
    assert tree(outputs) == before
    kinds = {(Path(a.checkpoint).parent.name, Path(a.checkpoint).name): a.kind for a in plan.actions}
    assert kinds == {
        ("smol-browsergym-a", "checkpoint-10"): "delete",
        ("smol-browsergym-a", "checkpoint-30"): "delete",
        ("smol-browsergym-a", "checkpoint-20"): "slim",  # best, not latest: slimmed
        ("lfm2-browsergym-b", "checkpoint-5"): "slim",  # best; 10 is the latest, kept resumable
    }
    assert plan.freed_bytes == sum(a.bytes for a in plan.actions) > 0


def test_apply_deletes_exactly_the_plan(outputs):
    policy = CleanupParams(keep_last=2, keep_best=1)
    plan = make_plan(inventory(outputs, policy), policy, outputs)
    before = tree(outputs)
    planned = {os.path.relpath(Path(a.checkpoint) / rel, outputs) for a in plan.actions for rel, _ in a.files}
    removed = apply_plan(plan)
    after = tree(outputs)
    assert set(before) - set(after) == planned
    assert all(after[k] == before[k] for k in after)
    assert len(removed) >= len(plan.actions)
    # a deleted checkpoint leaves no empty folder behind
    for a in plan.actions:
        assert Path(a.checkpoint).exists() == (a.kind == "slim")
    # the result is what the policy asked for: applying again plans nothing
    assert make_plan(inventory(outputs, policy), policy, outputs).actions == ()


def test_pinned_and_training_runs_are_untouched(outputs):
    run_a = outputs / "runs" / "20261125T000000Z__02__a" / "smol-browsergym-a"
    policy = CleanupParams(keep_last=1, keep_best=0, pinned=["20261125T000000Z__02__a"])
    with training_lock(outputs / "runs" / "20261125T000001Z__02__b"):
        plan = make_plan(inventory(outputs, policy), policy, outputs)
        assert plan.actions == ()
        reasons = dict(plan.untouched_runs)
        assert reasons["runs/20261125T000000Z__02__a/smol-browsergym-a"].startswith("pinned")
        assert reasons["runs/20261125T000001Z__02__b/lfm2-browsergym-b"].startswith("training")
        before = tree(outputs)
        # a plan forged to delete inside them is refused, and nothing is deleted
        for ckpt in (run_a / "checkpoint-10", outputs / "runs/20261125T000001Z__02__b/lfm2-browsergym-b/checkpoint-5"):
            forged = dataclasses.replace(plan, actions=(Action("delete", str(ckpt), (("config.json", 1),), "forged"),))
            with pytest.raises(CheckpointError, match="pinned|training"):
                apply_plan(forged)
        assert tree(outputs) == before
    assert not (outputs / "runs" / "20261125T000001Z__02__b" / LOCK_NAME).exists()


def test_outside_paths_and_symlinks_refused(outputs, tmp_path):
    elsewhere = make_run(tmp_path / "elsewhere", [1])
    policy = CleanupParams(keep_last=1)
    plan = make_plan(inventory(outputs, policy), policy, outputs)
    before, before_else = tree(outputs), tree(elsewhere)
    for target in (elsewhere / "checkpoint-1", outputs / ".." / "elsewhere" / "checkpoint-1"):
        forged = dataclasses.replace(plan, actions=(Action("delete", str(target), (("config.json", 1),), "forged"),))
        with pytest.raises(CheckpointError, match="outside"):
            apply_plan(forged)
    # a symlinked checkpoint inside outputs: its run is refused, never followed
    link_run = outputs / "runs" / "linked"
    link_run.mkdir()
    (link_run / "checkpoint-7").symlink_to(elsewhere / "checkpoint-1")
    runs = {r.name: r for r in inventory(outputs, policy)}
    plan = make_plan(list(runs.values()), policy, outputs)
    assert dict(plan.untouched_runs)["runs/linked"].startswith("refused")
    forged = dataclasses.replace(plan, actions=(Action("delete", str(link_run / "checkpoint-7"), (), "forged"),))
    with pytest.raises(CheckpointError, match="symlink"):
        apply_plan(forged)
    with pytest.raises(CheckpointError, match="symlink"):
        copy_checkpoint(link_run / "checkpoint-7", tmp_path / "copy", root=outputs)
    with pytest.raises(CheckpointError, match="outside"):
        copy_checkpoint(elsewhere / "checkpoint-1", tmp_path / "copy", root=outputs)
    assert tree(elsewhere) == before_else
    assert {k: v for k, v in tree(outputs).items() if not k.startswith("runs/linked")} == before


def test_stale_plan_deletes_nothing(outputs):
    policy = CleanupParams(keep_last=1, keep_best=0)
    plan = make_plan(inventory(outputs, policy), policy, outputs)
    make_run(outputs / "runs" / "20261125T000000Z__02__a" / "smol-browsergym-a", [50])
    before = tree(outputs)
    with pytest.raises(CheckpointError, match="stale"):
        apply_plan(plan)
    assert tree(outputs) == before


def test_training_lock_live_stale_and_other_process(tmp_path):
    run = tmp_path / "outputs" / "r"
    with training_lock(run) as lock:
        info = json.loads(lock.read_text())
        assert info["pid"] == os.getpid()
        with pytest.raises(AlreadyTraining, match="already training"):
            with training_lock(run):
                pass
    assert not lock.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    (run / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    make_run(run, [1])
    assert inventory(tmp_path / "outputs")[0].lock is None  # stale: ignored
    with training_lock(run):  # and replaced
        assert inventory(tmp_path / "outputs")[0].lock is not None
    # a lock held by another live process
    code = ("import sys, time; from bgwork.training_lock import training_lock\n"
            "with training_lock(sys.argv[1]):\n print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert dict(inventory(tmp_path / "outputs")[0].lock)["pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_copy_checkpoint_slim(outputs, tmp_path):
    ckpt = outputs / "runs" / "20261125T000000Z__02__a" / "smol-browsergym-a" / "checkpoint-20"
    dest = copy_checkpoint(ckpt, tmp_path / "export" / "best", root=outputs)
    copied = tree(dest)
    assert "model.safetensors" in copied and "trainer_state.json" in copied
    assert not {"optimizer.pt", "scheduler.pt", "rng_state.pth"} & set(copied)
    assert (dest / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already exists"):
        copy_checkpoint(ckpt, dest, root=outputs)
    with pytest.raises(CheckpointError, match="inside the checkpoint"):
        copy_checkpoint(ckpt, ckpt / "sub", root=outputs)
