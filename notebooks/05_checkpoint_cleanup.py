# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (bgwork)
#     language: python
#     name: bgwork
# ---

# %% [markdown]
# # 05 · Checkpoint cleanup: what is on disk, what to keep, and the space it frees
#
# Full fine-tune checkpoints carry the AdamW state (two moments per parameter: about twice the model's size);
# the original project's 350M runs took ~21 GB each and its authors pruned 105.8 GB to 21.2 GB by hand. This
# notebook lists every run and checkpoint under `outputs/` (size split into model / optimizer / other, step,
# full or LoRA, the reward and success rate logged at that step), then applies a keep policy from params:
# keep the last N and the best N by a metric per run, never touch pinned runs or runs still training (they
# hold a `TRAINING.lock`), and slim kept checkpoints by dropping optimizer/scheduler/RNG state. Incomplete
# checkpoints — what a kill or a full disk left mid-save: no readable `trainer_state.json`, weights missing or cut
# off, or a hidden `.saving-checkpoint-N` folder — count for nothing (`latest` skips them too) and are offered
# for deletion.
#
# **The default is a dry run**: it shows the plan and the space it would free. `-p cleanup.apply=true`
# deletes exactly what the plan lists, after re-checking it against the disk. `cleanup.copy_checkpoint` +
# `cleanup.copy_to` copy a chosen checkpoint out first (without optimizer state).

# %% tags=["parameters"]
# Headless, `bgwork run 05` uses no params file: these defaults plus `-p cleanup.KEY=VALUE` overrides (or a file with
# a `cleanup:` section, `-f FILE`). Interactively (JupyterLab), set values here, e.g. `cleanup = {"apply": True}`, or
# replace the next cell's `load_params(...)` with `params = load_params("../params/X.yaml")`.
name = None
cleanup = {}  # bgwork.config.CleanupParams: apply, keep_last, keep_best, metric, pinned, slim, copy_checkpoint, ...
run_dir = None

# %%
import pandas as pd

from bgwork import checkpoints as ck
from bgwork.params import load_params
from bgwork.report import Verdict
from bgwork.runs import record_metrics, use_run_dir

params = load_params(name=name, cleanup=cleanup)
p = params.cleanup
run_dir = use_run_dir(run_dir, "05_checkpoint_cleanup", params)
verdict = Verdict("What do the checkpoints cost on disk, and what can go?")
root = ck.cleanup_root(p.root)
pd.set_option("display.max_colwidth", None)
print(f"run dir: {run_dir}\ncleaning: {root}\npolicy: {p}")

# %% [markdown]
# ## Inventory
# One row per checkpoint. `reward` and the success rate are the latest values logged at or before the
# checkpoint's step in its `trainer_state.json`; `training` marks runs holding a live `TRAINING.lock`;
# `incomplete` says what an incomplete checkpoint lacks.

# %%
runs = ck.inventory(root, p)
inventory = ck.inventory_with_refusals(runs, p)
inventory

# %%
ck.plot_disk_use(inventory, root)

# %% [markdown]
# ## Copy a checkpoint out (optional)
# Done before the cleanup, so the copy survives whatever the plan deletes.

# %%
copied = ck.copy_out(p, root)

# %% [markdown]
# ## The plan
# `delete` removes a whole checkpoint folder, `slim` only its optimizer/scheduler/RNG files (the latest
# checkpoint of each run stays resumable unless `slim_latest`). Pinned and training runs appear as untouched.

# %%
plan = ck.make_plan(runs, p, root)
ck.show_plan(plan, inventory)

# %% [markdown]
# ## Apply (only with `cleanup.apply=true`)

# %%
removed = ck.apply_or_preview(plan, p, root)

# %%
record_metrics(run_dir, ck.cleanup_metrics(plan, inventory, p, removed))
verdict.set(*ck.cleanup_verdict(plan, inventory, p.apply, removed))
