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
# # 03 · Full run
#
# Does the agent get better at the browser tasks? The model is evaluated on held-out task seeds (never
# used in training), trained with GRPO (optionally after a short warm start on scripted demonstrations), and
# evaluated again on the same seeds. Curves come from the run's TensorBoard files; checkpoints and the final
# model are under the run directory. It uses the env server at `env.url`, or starts an embedded one.
#
# Its size comes from the params file: `bgwork run 03 -f params/full.yaml` is the original's 100-step run
# with 10 held-out episodes per task, `-f params/learn.yaml` the ~12-minute CPU experiment. Without a file it
# runs the defaults (the debug run's 3 steps, no held-out evaluation).

# %% tags=["parameters"]
# Headless, `bgwork run 03 -f params/full.yaml` (or learn.yaml, lora.yaml) injects that file's values after this
# cell. Interactively (JupyterLab) the values below run; to use a file, replace the next cell's `load_params(...)`
# with `params = load_params("../params/full.yaml")`.
name = None
seed = None  # the global seed (training, sampling, task seeds); None: the params file's / default
env = {}
model = {}
rollout = {}
train = {}
lora = {}
warmstart = {}
evaluation = {}
guard = {}
diagnostics = {}
export = {}
run_dir = None

# %%
from bgwork import ablation, curves, launch, metrics, trainer
from bgwork import evaluation as ev
from bgwork import gguf_export as gx
from bgwork.embedded import env_server
from bgwork.params import load_params
from bgwork.report import Verdict, figures_table
from bgwork.runs import record_metrics, use_run_dir

params = load_params(name=name, seed=seed, env=env, model=model, rollout=rollout, train=train, lora=lora,
                     warmstart=warmstart, evaluation=evaluation, guard=guard, diagnostics=diagnostics,
                     export=export)
run_dir = use_run_dir(run_dir, "03_full_run", params)
verdict = Verdict("Does training make the agent better on held-out episodes?")
print("run dir:", run_dir)
print(trainer.describe(params))

# %% [markdown]
# ## Evaluate, train, evaluate
# The untrained model plays the held-out episodes first; training then starts from the same weights. With a
# warm start the same episodes are played again between it and GRPO (`evaluation.after_warmstart`), so the
# report shows what GRPO itself added. With `train.num_processes` > 1 all of it runs data-parallel under
# `accelerate launch` (rank 0's log shows here) and the results are read back from the run dir.

# %%
with env_server(params.env, log_dir=run_dir) as url:
    result, stages = launch.train_between_evaluations(params, run_dir, url)
print("checkpoints and TensorBoard files in", result.output_dir)

# %% [markdown]
# ## Held-out success rate, before and after
# Per task and overall ("all"), at each stage, with 95 % intervals; the same tables, plot and paired differences as
# notebook 07's (`bgwork.evaluation`). Nothing here when `evaluation.episodes_per_task` is 0.

# %%
ev.results_table(stages)

# %%
fig = ev.plot_success(stages)

# %% [markdown]
# Each later stage minus the untrained model, on the very same episodes (95 % bootstrap interval over the pairs).

# %%
episodes = ev.load_run_episodes(run_dir) if stages else {}
ev.paired_table(episodes)

# %% [markdown]
# ## Episodes to look at
# Per task and stage: the first episode, a success and a failure (`bgwork.viewer.show(run_dir)` steps through them
# in JupyterLab).

# %%
ev.transcripts_html(episodes)

# %% [markdown]
# ## GRPO's own share
# With a warm start: trained minus warm-started success on the same held-out episodes, with a 95 % bootstrap
# interval over the episodes (`bgwork.ablation`; nothing here without both stages). An interval above 0 means GRPO
# added something the warm start did not. The ablation across runs (base, SFT-only, GRPO-only, SFT+GRPO) is
# `benchmarks/ablation.py`.

# %%
grpo_share = ablation.stage_difference(run_dir)
grpo_share

# %% [markdown]
# ## Curves per step
# `reward` mean env reward, `reward_std` its spread (0 everywhere = no signal), `entropy` mean token entropy
# (a sudden drop = collapse), `success_rate`, `format_error_rate` (actions that were not a well-formed call).

# %%
frame = curves.curves(result.output_dir)
fig = curves.plot_curves(frame, title=f"{params.name}: {params.model.name}")

# %% [markdown]
# Do the groups carry a signal? `frac_reward_zero_std` is the share of trained groups whose rewards were all equal
# (no advantage, nothing learned); `sampling/frac_reward_zero_std_played` the same share among every group played
# (with `train.dynamic_sampling` the extra groups, `sampling/groups_played`, replace those first);
# `curriculum/expected_signal` what `rollout.curriculum` expects from its draws. Below: each task's running success.

# %%
fig = curves.plot_curves(frame, tags=metrics.SIGNAL_CURVES, title="signal in the groups")

# %%
fig = curves.plot_per_task(frame, metrics.CURRICULUM_SUCCESS, title="running success per task (the curriculum)")

# %%
curves.curve_table(frame, last=20)

# %% [markdown]
# ## Figures

# %%
figures = (curves.summary(result, frame) | ev.stage_metrics(stages, params.rollout.tasks)
           | ablation.stage_difference_metrics(grpo_share))
record_metrics(run_dir, figures)
verdict.set(*ev.stages_verdict(stages, ev.paired_table(episodes), result, params.train))
figures_table(figures)

# %% [markdown]
# ## GGUF export of the final model (only with `export.after_training: true`)
# The same export and llama.cpp verification as notebook 06 (LoRA merged into its base first).

# %%
rows = gx.export_after_training(params, result.final_dir, run_dir, strict=False)  # None unless export.after_training
gx.result_table(rows)

# %%
gx.record_export(run_dir, rows)
gx.check_export(rows)  # a file llama.cpp disagrees with fails the run
