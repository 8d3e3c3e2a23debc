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
# # 06 · GGUF export: a checkpoint as F16, Q8_0, Q5_K_M and Q4_K_M files for llama.cpp, each verified
#
# Exports one checkpoint (a LoRA is merged into its base model first) with llama.cpp's own converter
# (`convert_hf_to_gguf.py`, from the llama-cpp-python source distribution, which vendors llama.cpp) to F16,
# then quantizes the F16 file the way `llama-quantize` does: llama.cpp's per-tensor type mix and native
# quantization kernels from the `libgguf` package. Every file is then loaded by a prebuilt llama.cpp
# (`xllamacpp`), generates, and its next-token distribution on fixed prompts is compared with the HF model.
# Needs: a checkpoint (`export.checkpoint`: a checkpoint dir, or a model spec such as `tiny-random-lfm2`;
# default: the newest checkpoint under `outputs/`). Nothing is compiled; first use fetches the sdist with pip.

# %% tags=["parameters"]
# Headless, `bgwork run 06` uses no params file: these defaults plus `-p export.KEY=VALUE` overrides (or a file with
# an `export:` section, `-f FILE`). Interactively (JupyterLab), set values here, e.g. `export = {"checkpoint": "..."}`,
# or replace the next cell's `load_params(...)` with `params = load_params("../params/X.yaml")`.
name = None
export = {}
run_dir = None

# %%
import pandas as pd

from bgwork import gguf_export as gx
from bgwork.params import load_params
from bgwork.runs import use_run_dir

params = load_params(name=name, export=export)
run_dir = use_run_dir(run_dir, "06_gguf_export", params)
checkpoint, out_dir = gx.export_target(params.export, run_dir)
pd.set_option("display.max_colwidth", None)
print(f"run dir: {run_dir}\ncheckpoint: {checkpoint}\nfiles go to: {out_dir}")

# %% [markdown]
# ## Export and verify
# F16/Q8_0 must reproduce the HF model's greedy tokens; the K-quants must keep the same top token with a
# cosine similarity of the (mean-centred) next-token logits of at least `export.min_cosine`. The logits come
# from llama.cpp as log-softmax over the whole vocabulary; centring removes the constant that separates them.

# %%
rows = gx.export_checkpoint(checkpoint, out_dir, params.export, strict=False)
gx.result_table(rows)

# %%
fig = gx.plot_results(rows, params.export)

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
gx.check_export(rows)  # a file llama.cpp disagrees with fails the run
