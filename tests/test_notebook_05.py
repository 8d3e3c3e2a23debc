"""Notebook 05 executed by the runner (papermill, `bgwork` kernel) on real tiny checkpoints: dry run, then apply.
Run `a` also holds what interrupted saves leave: a checkpoint-4 without trainer_state.json (transformers writing in
place) and a .saving-checkpoint-5 (bgwork's staging folder); both are offered for deletion, never kept."""

from __future__ import annotations

import shutil

import yaml
from ckpt_fixtures import make_run

from bgwork import notebook_run
from bgwork.runs import read_metrics
from bgwork.training_lock import training_lock


def _files(root):
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_notebook_05_dry_run_then_apply(tmp_path, monkeypatch):
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("BGWORK_OUTPUTS_DIR", str(outputs))
    a = make_run(outputs / "train" / "a", [1, 2, 3], [0.1, 0.8, 0.2])
    shutil.copytree(a / "checkpoint-3", a / "checkpoint-4")
    (a / "checkpoint-4" / "trainer_state.json").unlink()  # killed before the last file of the save
    (a / ".saving-checkpoint-5" / "checkpoint-5").mkdir(parents=True)
    shutil.copy2(a / "checkpoint-3" / "model.safetensors", a / ".saving-checkpoint-5" / "checkpoint-5")
    make_run(outputs / "train" / "pinned", [1, 2])
    make_run(outputs / "train" / "busy", [1, 2])
    params = tmp_path / "cleanup.yaml"
    policy = {"keep_last": 1, "keep_best": 1, "pinned": ["pinned"],
              "copy_checkpoint": str(outputs / "train" / "a" / "checkpoint-2"), "copy_to": str(tmp_path / "best")}
    params.write_text(yaml.safe_dump({"name": "cleanup", "cleanup": policy}))
    before = _files(outputs)

    with training_lock(outputs / "train" / "busy"):
        dry = notebook_run.run(["05"], params_file=str(params), root=tmp_path / "runs")
        assert dry.ok, dry.notebooks[0].error
        assert (dry.run_dir / "05_checkpoint_cleanup.html").is_file()
        m = read_metrics(dry.run_dir)
        assert _files(outputs) - {"train/busy/TRAINING.lock"} == before  # dry run: nothing deleted
        assert m["cleanup/removed"] == [] and m["cleanup/would_free_bytes"] > 0
        assert {(a["kind"], a["checkpoint"].split("train/")[1]) for a in m["cleanup/actions"]} == {
            ("delete", "a/checkpoint-1"), ("slim", "a/checkpoint-2"),  # 3 is the latest complete one: kept
            ("delete", "a/checkpoint-4"), ("delete", "a/.saving-checkpoint-5")}  # incomplete: offered for deletion
        assert "incomplete: no trainer_state.json" in (dry.run_dir / "05_checkpoint_cleanup.html").read_text()
        assert m["cleanup/untouched_runs"]["train/pinned"].startswith("pinned")
        assert m["cleanup/untouched_runs"]["train/busy"].startswith("training")
        assert (tmp_path / "best" / "model.safetensors").is_file()
        assert not (tmp_path / "best" / "optimizer.pt").exists()

        (tmp_path / "best").rename(tmp_path / "best-1")  # the copy refuses to overwrite
        done = notebook_run.run(["05"], params_file=str(params), overrides=["cleanup.apply=true"],
                                root=tmp_path / "runs")
        assert done.ok, done.notebooks[0].error
    planned = {f"{a['checkpoint'].split(str(outputs) + '/')[1]}/{f}" for a in m["cleanup/actions"] for f in a["files"]}
    assert before - _files(outputs) == planned
    assert read_metrics(done.run_dir)["cleanup/freed_bytes"] == m["cleanup/would_free_bytes"]
