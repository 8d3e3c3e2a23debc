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
# # 07 · Evaluate: how well does each model act, and is one really better than another?
#
# Plays every model under test (`evaluate.models`: a model spec, a checkpoint dir, a LoRA adapter dir or a GGUF
# file, which llama.cpp plays with the same prompt and action parser) on the same held-out episodes: each task
# of `evaluate.tasks` × `evaluate.episodes_per_task` seeds from `rollout.eval_seeds`, never used in training,
# greedy. It reports per-task success with 95 % intervals, mean steps and the format-error rate; with several
# models, each one's paired difference from the first. Per task, the first episode, a success and a failure keep
# their transcript (with a screenshot per page from a live env server). E.g. `bgwork run 07
# -p 'evaluate.models=[tiny-random-lfm2, outputs/runs/RUN/MODEL/checkpoint-2]' -p 'evaluate.tasks=[click-test]'`.

# %% tags=["parameters"]
# Headless, `bgwork run 07 -p 'evaluate.models=[...]'` injects the values after this cell. Interactively (JupyterLab),
# set them here, e.g. `evaluate = {"models": ["bundled:smollm2-135m-instruct", "outputs/runs/RUN/MODEL/final"]}`
# (paths from the project root), or replace the next cell's `load_params(...)` with
# `params = load_params("../params/X.yaml")`.
name = None
seed = None  # the global seed (training, sampling, task seeds); None: the params file's / default
env = {}
model = {}
rollout = {}
train = {}
evaluation = {}
evaluate = {}
run_dir = None

# %%
from bgwork import evaluation as ev
from bgwork import viewer
from bgwork.embedded import env_server
from bgwork.params import load_params
from bgwork.report import Verdict, figures_table
from bgwork.runs import record_metrics, use_run_dir

params = load_params(name=name, seed=seed, env=env, model=model, rollout=rollout, train=train, evaluation=evaluation,
                     evaluate=evaluate)
run_dir = use_run_dir(run_dir, "07_evaluate", params)
verdict = Verdict("How well does each model act on held-out episodes, and how does it differ from the first?")
models = ev.models_under_test(params)  # checked before any browser starts
print("run dir:", run_dir)
for m in models:
    print(f"{m.label}: {m.kind} {m.path}")

# %% [markdown]
# ## Play the held-out episodes
# One model at a time, all on the same (task, seed) episodes.

# %%
with env_server(params.env, log_dir=run_dir) as url:
    result = ev.evaluate_models(params, run_dir, url, models)

# %% [markdown]
# ## Success per task
# `ci_low`/`ci_high`: the 95 % Wilson interval of the success rate; `mean_steps`: browser actions per episode;
# `format_error_rate`: the share of actions that were not a well-formed call.

# %%
table = ev.results_table(result.tables)
table

# %%
fig = ev.plot_success(result.tables)

# %% [markdown]
# ## Paired difference from the first model
# Success of each model minus the first's on the very same episodes, with a 95 % bootstrap interval over the
# pairs; an interval that excludes 0 is a clear difference. Nothing here with one model.

# %%
diffs = ev.paired_table(result.records)
diffs

# %% [markdown]
# ## Episodes to look at
# Per task and model: the first episode, a success and a failure. Click one to open it.

# %%
ev.transcripts_html(result.records)

# %% [markdown]
# In JupyterLab, the viewer below steps through the same episodes page by page; `viewer.show(RUN_DIR)` opens the
# saved episodes of any run.

# %%
viewer.show(run_dir)

# %% [markdown]
# ## Figures

# %%
figures = ev.evaluation_metrics(result.tables, diffs)
record_metrics(run_dir, figures)
verdict.set(*ev.evaluation_verdict(result.tables, diffs))
figures_table(figures)
