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
import matplotlib.pyplot as plt
import pandas as pd

from bgwork import smoke as smoke_checks
from bgwork.embedded import env_server
from bgwork.envclient import EnvClient
from bgwork.params import load_params
from bgwork.progress import progress
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
report = smoke_checks.SmokeReport()
with env_server(params.env, log_dir=run_dir) as url:
    client = EnvClient(url, token=params.env.token, timeout=params.env.request_timeout)
    health = smoke_checks.check_server(client, params.smoke.tasks, report)
    for task in progress(params.smoke.tasks, desc="tasks"):
        smoke_checks.check_task(client, task, params.smoke.seed, report)
    client.shutdown()
print(f"server {url}: envserver {health.get('version')}, {health.get('browser')}, {health.get('task_count')} tasks")

# %% [markdown]
# ## Checks

# %%
checks = pd.DataFrame(report.checks)
checks

# %% [markdown]
# ## Latency per call
# Seconds per HTTP call as the client sees it (server work plus the browser's post-action delay);
# calls that raised are left out.

# %%
calls = pd.DataFrame(report.calls).query("ok")
latency = calls.groupby("call")["seconds"].describe()[["count", "mean", "min", "max"]]
latency.round(3)

# %%
per_task = calls[calls.task != "-"].pivot_table(index="task", columns="call", values="seconds", aggfunc="mean")
if per_task.empty:  # every task call failed: nothing to draw, the verdict below says why
    print("no successful task calls to chart")
else:
    ax = per_task.plot.bar(figsize=(9, 4), rot=0)
    ax.set_ylabel("seconds per call (mean)")
    ax.set_title("env server latency by task and call")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## Verdict

# %%
passed = bool(checks.passed.all())
skipped = int(checks.skipped.sum())  # e.g. solving a task that has no scripted solver
record_metrics(run_dir, {
    "smoke/passed": passed,
    "smoke/checks_passed": int((checks.passed & ~checks.skipped).sum()),
    "smoke/checks_skipped": skipped,
    "smoke/checks_total": len(checks),
    "smoke/tasks": len(params.smoke.tasks),
    "smoke/env_url": url,
    "smoke/server_version": health.get("version"),
    "smoke/browser": health.get("browser"),
    **{f"smoke/{call}_seconds_mean": s for call, s in latency["mean"].items()},
})
line = verdict.set(*smoke_checks.verdict(checks, latency))
failed = checks[~checks.passed]
if not passed:
    raise AssertionError(f"smoke test FAILED {len(failed)} of {len(checks)} checks:\n{failed.to_string(index=False)}")
print(line)
