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
# # 02 · Debug run
#
# Does GRPO training run end to end, and do its signals look sane? A few GRPO steps (TRL `GRPOTrainer`)
# where every sample is one multi-turn browser episode: the model reads the goal and the page's
# accessibility tree, writes one action per turn, and the env server's reward reaches GRPO through a
# reward function. The curves below come from the run's TensorBoard files; the checkpoint and the final
# model are written under the run directory. It uses the env server at `env.url`, or starts an embedded one.
# With the defaults (`bgwork params` prints them: bundled SmolLM2-135M, LoRA, 3 steps) it takes about 3 minutes
# on a 2-core CPU.

# %% tags=["parameters"]
# Headless, `bash scripts/main.sh` (`bgwork run 01 02`) runs these defaults (`bgwork params` prints them);
# `bgwork run 02 -f params/X.yaml` injects that file's values after this cell. Interactively (JupyterLab) the
# values below run; to use a file, replace the next cell's `load_params(...)` with
# `params = load_params("../params/lora.yaml")`.
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
run_dir = None

# %%
from bgwork import curves, launch, trainer
from bgwork.embedded import env_server
from bgwork.params import load_params
from bgwork.report import Verdict, figures_table
from bgwork.runs import record_metrics, use_run_dir

params = load_params(name=name, seed=seed, env=env, model=model, rollout=rollout, train=train, lora=lora,
                     warmstart=warmstart, evaluation=evaluation, guard=guard, diagnostics=diagnostics)
run_dir = use_run_dir(run_dir, "02_debug_run", params)
verdict = Verdict("Does GRPO training run end to end: did rewards flow, was there a signal, any format errors?")
print("run dir:", run_dir)
print(trainer.describe(params))

# %% [markdown]
# ## Train
# All episodes of a step play together: one batched `generate` per turn, env steps in parallel sessions. With
# `train.num_processes` > 1 training runs in that many processes under `accelerate launch` (rank 0's log shows here).

# %%
with env_server(params.env, log_dir=run_dir) as url:
    result = launch.train(params, run_dir, url)
print("checkpoints and TensorBoard files in", result.output_dir)

# %% [markdown]
# ## Curves per step
# `reward` is the mean env reward, `reward_std` its spread (0 in every group = no learning signal),
# `entropy` the policy's mean token entropy (a sudden drop = collapse), `success_rate` the share of solved
# episodes, `format_error_rate` the share of actions that were not a well-formed call.

# %%
frame = curves.curves(result.output_dir)
fig = curves.plot_curves(frame, title=f"{params.name}: {params.model.name}")

# %%
curves.curve_table(frame)

# %% [markdown]
# ## Figures

# %%
figures = curves.summary(result, frame)
record_metrics(run_dir, figures)
verdict.set(*curves.training_verdict(result, frame, params.train))
trainer.check_completed(result, params.train)  # ended early without the guard stopping it: the run fails
figures_table(figures)
