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
# # 01 · Env smoke test
#
# Does the browser environment work end to end? For each task in `smoke.tasks` this notebook opens a
# session, sends a malformed action (`click(13)`: the bid must be a quoted string, so the server must
# answer with `last_action_error` and reward 0), plays the scripted solution (the episode must end with a
# reward), closes the session and checks the closed session is refused. It uses the env server at
# `env.url`, or starts an embedded one on a free loopback port and stops it afterwards.
# The run fails if any check fails; solving a task with no scripted solver is skipped and counted, not failed.

# %% tags=["parameters"]
# Headless, `bgwork run 01 -f params/smoke.yaml` injects that file's values after this cell (`bash scripts/main.sh`
# runs these defaults). Interactively (JupyterLab) the values below run; to use a file, replace the next cell's
# `load_params(...)` line with `params = load_params("../params/smoke.yaml")`.
name = None
env = {}
smoke = {}
run_dir = None

# %%
import pandas as pd

from bgwork import smoke as smoke_checks
from bgwork.params import load_params
from bgwork.report import Verdict
from bgwork.runs import record_metrics, use_run_dir

pd.set_option("display.max_colwidth", 120)

params = load_params(name=name, env=env, smoke=smoke)
run_dir = use_run_dir(run_dir, "01_env_smoke_test", params)
verdict = Verdict("Does the browser environment work end to end?")
print("run dir:", run_dir)

# %% [markdown]
# ## Talk to the server
# Every call below is timed; an env error fails that task's checks and the smoke test moves on.

# %%
report, health, url = smoke_checks.run_checks(params, run_dir)
print(f"server {url}: envserver {health.get('version')}, {health.get('browser')}, {health.get('task_count')} tasks")

# %% [markdown]
# ## Checks

# %%
checks = smoke_checks.checks_table(report)
checks

# %% [markdown]
# ## Latency per call
# Seconds per HTTP call as the client sees it (server work plus the browser's post-action delay);
# calls that raised are left out.

# %%
latency = smoke_checks.latency_table(report)
latency.round(3)

# %%
fig = smoke_checks.plot_latency(report)

# %% [markdown]
# ## Verdict

# %%
record_metrics(run_dir, smoke_checks.metrics(checks, latency, params, url, health))
line = verdict.set(*smoke_checks.verdict(checks, latency))
smoke_checks.raise_if_failed(checks)
print(line)
