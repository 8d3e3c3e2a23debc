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
# # 04 · Entropy diagnostics: did a GRPO run collapse or deadlock?
#
# Reads the TensorBoard scalars of one or more training runs and answers, per run: **healthy**,
# **collapsed at step N** (policy entropy fell to ~0 and the model stopped exploring), **deadlocked from step N**
# (every rollout of every group scored alike, so GRPO's advantages were 0 and nothing was learned),
# **diverged at step N** (loss or grad_norm NaN/inf: the weights are no longer finite), or **plateau**. The
# original project found its collapse (LR 5e-6: grad_norm 10.7 at step 20, entropy 2 → 0.04 at step 21) by
# reading logs after 52 wasted steps; the same detectors run live during training as
# `bgwork.guard.CollapseGuard`. Needs: run directories with TensorBoard event files (training's output), named
# by `diagnostics.runs` (dirs or globs, relative to the project root), e.g.
# `bgwork run 04 -p 'diagnostics.runs=[outputs/runs/*__02_train__*]'`; `diagnostics.runs=[]` diagnoses the
# notebook's own run dir (chained after training: `bgwork run 02 04 -p diagnostics.runs=[]`).

# %% tags=["parameters"]
# Headless, `bgwork run 04` uses no params file: these defaults plus `-p diagnostics.KEY=VALUE` overrides (or a file
# with a `diagnostics:` section, `-f FILE`). Interactively (JupyterLab), set values here, e.g. `diagnostics =
# {"runs": ["outputs/runs/RUN_DIR"]}` (paths from the project root), or replace the next cell's `load_params(...)`
# with `params = load_params("../params/X.yaml")`.
name = None
diagnostics = {}  # bgwork.config.DiagnosticsParams: runs (dirs or globs), write_back, detector thresholds
run_dir = None

# %%
import pandas as pd

from bgwork import diagnostics as dx
from bgwork.params import load_params
from bgwork.report import Verdict
from bgwork.runs import PROJECT_ROOT, use_run_dir
from bgwork.tbscalars import load_scalars

params = load_params(name=name, diagnostics=diagnostics)
p = params.diagnostics
run_dir = use_run_dir(run_dir, "04_entropy_diagnostics", params)
verdict = Verdict("Did a GRPO run collapse or deadlock, and where?")
pd.set_option("display.max_colwidth", None)
print(f"run dir: {run_dir}\nruns: {p.runs}\nthresholds: {p}")

# %% [markdown]
# ## The runs
# Every scalar point of every event file below each run (no sampling). Runs may differ in length and in which
# metrics they logged; a missing metric only skips the detectors that need it.

# %%
scalars = load_scalars(p.runs or [run_dir], base=PROJECT_ROOT)
dx.coverage_table(scalars)

# %% [markdown]
# ## Verdicts
# Collapse: entropy below an absolute floor or a fraction of its early median. Deadlock: `frac_reward_zero_std`
# near 1 or `reward_std` ≈ 0 for several consecutive steps, split by the reward level into "all solved" /
# "all failed". A grad_norm spike just before a collapse is named as its likely trigger.

# %%
verdicts = dx.diagnose_runs(scalars, p)
verdict.set(*dx.runs_verdict(verdicts))
dx.verdict_table(verdicts)

# %%
fig = dx.plot_runs(scalars, verdicts)

# %% [markdown]
# ## Every detected event

# %%
dx.events_frame(verdicts)

# %% [markdown]
# ## What to change
# Each recommendation names the finding it answers and the bgwork param to change, as `bgwork run -p` takes it
# (`train.entropy_coef=0.001`); most map one to one onto TRL's GRPOConfig.

# %%
recommendations = dx.recommend(verdicts, dx.peak_learning_rates(scalars))
recommendations

# %% [markdown]
# ## Env outages
# Steps whose rollout waited for an env server that went away (`env/outage_s`, also the dotted lines above): the
# lost episodes were re-run once it answered again, none was scored 0. Empty when the server never left.

# %%
dx.outage_table(scalars)

# %% [markdown]
# ## What the live guard said during training (if it ran)

# %%
dx.guard_table(scalars.attrs["run_dirs"])

# %%
dx.record_verdicts(verdicts, run_dir, scalars.attrs["run_dirs"] if p.write_back else None, recommendations)
