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
# used in training), trained with GRPO (100 steps by default; optionally after a short warm start on
# scripted demonstrations), and evaluated again on the same seeds. Curves come from the run's TensorBoard
# files; checkpoints and the final model are under the run directory. It uses the env server at `env.url`,
# or starts an embedded one.

# %% tags=["parameters"]
# Headless, `bgwork run 03 -f params/full.yaml` (or learn.yaml, lora.yaml) injects that file's values after this
# cell. Interactively (JupyterLab) the values below run; to use a file, replace the next cell's `load_params(...)`
# with `params = load_params("../params/full.yaml")`.
name = "full"
env = {}
model = {}
rollout = {}
train = {}
lora = {}
warmstart = {}
evaluation = {"episodes_per_task": 10}
guard = {}
diagnostics = {}
export = {}  # export.after_training: true writes and verifies GGUF files of the final model (as notebook 06)
run_dir = None

# %%
import matplotlib.pyplot as plt
import pandas as pd

from bgwork import training
from bgwork.embedded import env_server
from bgwork.envclient import EnvClient
from bgwork.evaluation import evaluate
from bgwork.models import resolve_model
from bgwork.params import load_params
from bgwork.runs import record_metrics, use_run_dir

params = load_params(name=name, env=env, model=model, rollout=rollout, train=train, lora=lora, warmstart=warmstart,
                     evaluation=evaluation, guard=guard, diagnostics=diagnostics, export=export)
training.check_params(params)
run_dir = use_run_dir(run_dir, "03_full_run", params)
device, dtype = training.device_and_dtype(params.model.dtype)
print("run dir:", run_dir, "| device:", device)

# %% [markdown]
# ## Evaluate, train, evaluate
# The untrained model plays the held-out episodes first; training then starts from the same weights. With a
# warm start the same episodes are played again between it and GRPO (`evaluation.after_warmstart`).

# %%
def held_out(model, tokenizer, client):
    if not params.evaluation.episodes_per_task:
        return None
    return evaluate(model, tokenizer, client, params)[1]


with env_server(params.env, log_dir=run_dir) as url, \
        EnvClient(url, token=params.env.token, timeout=params.env.request_timeout) as client:
    base = resolve_model(params.model.name, dtype=dtype, device=device)
    before = held_out(base.model, base.tokenizer, client)
    warm = {}

    def after_warm_start(resolved):  # what GRPO itself adds is "trained" minus "warm-started"
        if params.evaluation.after_warmstart:
            warm["table"] = held_out(resolved.model, resolved.tokenizer, client)

    result = training.train(params, run_dir, url, resolved=base,  # trains base.model in place (LoRA: injected)
                            after_warm_start=after_warm_start)
    after = held_out(base.model, base.tokenizer, client)
print("checkpoints and TensorBoard files in", result.output_dir)

# %% [markdown]
# ## Held-out success rate, before and after

# %%
if before is not None:
    stages = {"untrained": before, "warm-started": warm.get("table"), "trained": after}
    table = pd.concat({k: v for k, v in stages.items() if v is not None}, axis=1)
    display(table.round(3))
    ax = table.xs("success_rate", axis=1, level=1).plot.bar(figsize=(8, 3.5), rot=0)
    ax.set_ylabel("success rate (held-out seeds)")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## Curves per step
# `reward` mean env reward, `reward_std` its spread (0 everywhere = no signal), `entropy` mean token entropy
# (a sudden drop = collapse), `success_rate`, `format_error_rate` (actions that were not a well-formed call).

# %%
frame = training.curves(result.output_dir)
training.plot_curves(frame, title=f"{params.name}: {params.model.name}")
plt.show()
frame[[c for c in training.CURVES + ["grad_norm", "step_time"] if c in frame]].round(4).tail(20)

# %% [markdown]
# ## Figures

# %%
figures = {f"train/{k}": v for k, v in training.summary(result, frame).items()}
if before is not None:
    figures.update({"eval/untrained_success_rate": float(before.loc["all", "success_rate"]),
                    "eval/trained_success_rate": float(after.loc["all", "success_rate"]),
                    **{f"eval/untrained_success_rate/{t}": float(before.loc[t, "success_rate"]) for t in params.rollout.tasks},
                    **{f"eval/trained_success_rate/{t}": float(after.loc[t, "success_rate"]) for t in params.rollout.tasks}})
    if warm.get("table") is not None:
        figures.update({"eval/warmstart_success_rate": float(warm["table"].loc["all", "success_rate"]),
                        **{f"eval/warmstart_success_rate/{t}": float(warm["table"].loc[t, "success_rate"])
                           for t in params.rollout.tasks}})
record_metrics(run_dir, figures)
figures

# %% [markdown]
# ## GGUF export of the final model (only with `export.after_training: true`)
# The same export and llama.cpp verification as notebook 06 (LoRA merged into its base first).

# %%
from bgwork.gguf_export import export_after_training

rows = export_after_training(params, result.final_dir, run_dir, strict=False)  # None unless export.after_training
if rows:
    display(pd.DataFrame(rows).reindex(columns=["quant", "MB", "export_s", "min_cosine", "top_token_same",
                                                "greedy_same", "ok", "path"]))
    record_metrics(run_dir, {"export/files": {r["quant"]: r for r in rows},
                             "export/all_ok": all(r.get("ok", True) for r in rows)})
    failed = [r["quant"] for r in rows if not r.get("ok", True)]
    if failed:
        raise AssertionError(f"llama.cpp disagrees with the HF model for {failed}; see the table above")
