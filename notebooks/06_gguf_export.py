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
# # 06 · GGUF export: a checkpoint as F16, Q8_0, Q5_K_M and Q4_K_M files for llama.cpp, each checked as an agent
#
# Exports one checkpoint (a LoRA is merged into its base model first) with llama.cpp's own converter
# (`convert_hf_to_gguf.py`, from the llama-cpp-python source distribution, which vendors llama.cpp; installed by
# `scripts/setup.sh`), then quantizes the F16 file the way `llama-quantize` does: llama.cpp's per-tensor type mix
# and native quantization kernels from the `libgguf` package. Every file is then loaded by a prebuilt llama.cpp
# (`xllamacpp`) and compared with the HF model, and finally **plays held-out browser episodes as an agent** beside
# the HF model: what a quantized agent must keep is its success rate. Needs: a checkpoint (`export.checkpoint`: a
# checkpoint dir relative to the project root, or a model spec such as `tiny-random-lfm2`; default: the newest
# checkpoint under `outputs/`) and, for the agent check, the env server at `env.url` or an embedded one.
# Nothing is compiled or downloaded during the run.

# %% tags=["parameters"]
# Headless, `bgwork run 06` uses no params file: these defaults plus `-p export.KEY=VALUE` overrides (or a file with
# an `export:` section, `-f FILE`). Interactively (JupyterLab), set values here, e.g. `export = {"checkpoint": "..."}`,
# or replace the next cell's `load_params(...)` with `params = load_params("../params/X.yaml")`.
name = None
seed = None  # the global seed (training, sampling, task seeds); None: the params file's / default
env = {}
rollout = {}
train = {}
evaluation = {}
export = {}
run_dir = None

# %%
import pandas as pd

from bgwork import evaluation as ev
from bgwork import gguf_export as gx
from bgwork.params import load_params
from bgwork.report import Verdict
from bgwork.runs import use_run_dir

params = load_params(name=name, seed=seed, env=env, rollout=rollout, train=train, evaluation=evaluation, export=export)
run_dir = use_run_dir(run_dir, "06_gguf_export", params)
verdict = Verdict("Are the GGUF files sound, and do they act as well as the model they came from?")
checkpoint, out_dir = gx.export_target(params.export, run_dir)
pd.set_option("display.max_colwidth", None)
print(f"run dir: {run_dir}\ncheckpoint: {checkpoint}\nfiles go to: {out_dir}")

# %% [markdown]
# ## Export and verify
# F16/Q8_0 must reproduce the HF model's greedy tokens and every file its top next token. The cosine similarity of
# the (mean-centred) next-token logits is reported against an expectation per model (`cosine_expected`:
# `export.min_cosine`, or `export.min_cosine_fallback` where the rows are not multiples of 256 and K-quants fall back
# to Q5_0/Q5_1, as for SmolLM2); it is a figure, not the verdict. llama.cpp's log is in the run's `run.log`.

# %%
rows = gx.export_checkpoint(checkpoint, out_dir, params.export, strict=False)
gx.result_table(rows)

# %%
fig = gx.plot_results(rows, params.export)

# %% [markdown]
# ## Each file as an agent
# The HF model and every file play the same held-out episodes (`export.agent_tasks` × `export.agent_episodes_per_task`,
# greedy, the same prompt and action parser; llama.cpp generates for the files). A file passes when its success rate
# is at most `export.agent_tolerance` below its reference's: the HF model's for F16, F16's for the quants.

# %%
agent = gx.agent_check(params, checkpoint, rows, run_dir)  # None when export.agent_episodes_per_task is 0
gx.agent_table(rows)

# %%
fig = ev.plot_success(agent.tables if agent else {}, title="agent success per file (95 % interval)")

# %%
ev.paired_table(agent.records if agent else {})

# %% [markdown]
# ## Per-tensor types, read back from the files
# `tensor_types` transcribes llama.cpp's `llama_tensor_get_type` (vendored `src/llama-quant.cpp`) for these
# ftypes: tied token embeddings/output get Q6_K (Q8_0 when a row is not a multiple of 256), `attn_v` and
# `ffn_down` get Q6_K on the layers `use_more_bits` picks, rows that are not a multiple of 256 fall back
# (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0), norms and short-conv kernels stay F32. The export reads every
# written file back and stops if a tensor's type differs from the rule's choice; the table shows the files.

# %%
gx.tensor_type_table(rows)

# %% [markdown]
# ## How the mix was checked against llama.cpp
# 1. **Bytes**: with `check_reference`, every quantized tensor is quantized a second time by llama.cpp's own
#    `ggml_quantize_chunk` (exported by the prebuilt xllamacpp library) and the bytes must be identical.
# 2. **Types**: the table above, read from the files, equals the transcribed rules; the rules in turn reproduce
#    the file sizes llama.cpp's `llama-quantize` wrote for LFM2-350M in the original project (below: predicted
#    from LFM2-350M's published shapes; one wrong `ffn_down` choice would move a K-quant file by ~1.2 MiB, one
#    `attn_v` by ~0.13 MiB). llama.cpp itself cannot run `llama-quantize` here: no prebuilt wheel exposes it on
#    this glibc, and building llama.cpp is out of scope.

# %%
size_check = gx.lfm2_350m_size_check()
size_check

# %%
gx.record_export(run_dir, rows, checkpoint, size_check)
verdict.set(*gx.export_verdict(rows, params.export))
gx.check_export(rows)  # a file llama.cpp disagrees with, or one that acts worse than its reference, fails the run
