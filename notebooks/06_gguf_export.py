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
name = "export"
export = {}  # bgwork.config.ExportParams: checkpoint, out_dir, quants, verify, prompts, gen_tokens, min_cosine
run_dir = None

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from bgwork import gguf_export as gx
from bgwork.checkpoints import latest_checkpoint
from bgwork.params import load_params
from bgwork.runs import record_metrics, use_run_dir

params = load_params(name=name, export=export)
p = params.export
run_dir = use_run_dir(run_dir, "06_gguf_export", params)
checkpoint = p.checkpoint or latest_checkpoint()
if checkpoint is None:
    raise ValueError("export.checkpoint is not set and outputs/ holds no checkpoint: pass -p export.checkpoint=DIR")
out_dir = Path(p.out_dir or Path(run_dir) / "gguf")
pd.set_option("display.max_colwidth", None)
print(f"run dir: {run_dir}\ncheckpoint: {checkpoint}\nfiles go to: {out_dir}")

# %% [markdown]
# ## Export and verify
# F16/Q8_0 must reproduce the HF model's greedy tokens; the K-quants must keep the same top token with a
# cosine similarity of the (mean-centred) next-token logits of at least `export.min_cosine`. The logits come
# from llama.cpp as log-softmax over the whole vocabulary; centring removes the constant that separates them.

# %%
rows = gx.export_checkpoint(checkpoint, out_dir, p.quants, verify=p.verify, prompts=p.prompts,
                            gen_tokens=p.gen_tokens, min_cosine=p.min_cosine, check_reference=p.check_reference,
                            strict=False)
cols = ["quant", "MB", "export_s", "load_s", "min_cosine", "top_token_same", "greedy_same", "bit_identical_to_ggml",
        "ok", "sample"]
table = pd.DataFrame(rows).reindex(columns=cols)
table

# %%
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3))
table.plot.bar(x="quant", y="MB", ax=a, legend=False, title="file size (MB)")
if p.verify:
    table.plot.bar(x="quant", y="min_cosine", ax=b, legend=False, title="least logits cosine vs HF")
    b.axhline(p.min_cosine, color="red", linestyle="--")
    b.set_ylim(min(0.95, table["min_cosine"].min() - 0.005), 1.0)
plt.tight_layout()

# %% [markdown]
# ## Per-tensor types, read back from the files
# `tensor_types` transcribes llama.cpp's `llama_tensor_get_type` (vendored `src/llama-quant.cpp`) for these
# ftypes: tied token embeddings/output get Q6_K (Q8_0 when a row is not a multiple of 256), `attn_v` and
# `ffn_down` get Q6_K on the layers `use_more_bits` picks, rows that are not a multiple of 256 fall back
# (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0), norms and short-conv kernels stay F32. The table is read from the
# written files, and each must equal the rule's choice.

# %%
types = pd.DataFrame({r["quant"]: gx.gguf_tensor_types(r["path"]) for r in rows})
f16_path = next((r["path"] for r in rows if r["quant"] == "F16"), None)
if f16_path:
    f16 = gx.read_gguf(f16_path)
    arch = f16.kv["general.architecture"]
    for q in [q for q in types.columns if q != "F16"]:
        want = gx.tensor_types([(t.name, t.ne, t.type) for t in f16.tensors], q, int(f16.kv[f"{arch}.block_count"]), arch)
        assert types[q].to_dict() == want, f"{q}: tensor types in the file differ from llama.cpp's rules"
    types.insert(0, "shape", [next(t.ne for t in f16.tensors if t.name == n) for n in types.index])
types

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
record_metrics(run_dir, {
    "export/checkpoint": str(checkpoint),
    "export/files": {r["quant"]: {k: r.get(k) for k in cols if k != "quant"} | {"path": r["path"]} for r in rows},
    "export/all_ok": all(r.get("ok", True) for r in rows),
    "export/lfm2_350m_size_check_max_abs_diff_mib": float(size_check["difference MiB"].abs().max()),
})
failed = [r["quant"] for r in rows if not r.get("ok", True)]
if failed:
    raise AssertionError(f"llama.cpp disagrees with the HF model for {failed}; see the table above")
