"""A checkpoint -> GGUF files (F16, Q8_0, Q5_K_M, Q4_K_M) for llama.cpp, each verified in a llama.cpp runtime.

    from bgwork import gguf_export as gx
    rows = gx.export_checkpoint("outputs/.../checkpoint-100", "outputs/.../gguf")   # one dict per file

Pipeline, all from installable packages (nothing compiled here):
1. `convert`: LoRA checkpoints are merged into their base model with peft (`merge_and_unload`); F16 comes from
   llama.cpp's own `convert_hf_to_gguf.py`, taken from the llama-cpp-python sdist (fetched once, cached).
2. `quantize`: Q8_0 / Q5_K_M / Q4_K_M from the F16 file, as `llama-quantize` does: llama.cpp's per-tensor type
   rules (transcribed) and libgguf's native kernels, bit-identical to llama.cpp's `ggml_quantize_chunk`.
3. `verify`: each file is loaded by xllamacpp (a prebuilt llama.cpp), generates greedily, and its next-token
   distribution on fixed prompts is compared with the HF model's logits.
`export` runs the three in order; `gguffile` reads and writes GGUF; `cache` does the one-time downloads.
"""

from bgwork.gguf_export.errors import ExportError
from bgwork.gguf_export.export import (
                                       AGENT_COLUMNS,
                                       COLUMNS,
                                       QUANTS,
                                       agent_check,
                                       agent_table,
                                       check_export,
                                       export_after_training,
                                       export_checkpoint,
                                       export_target,
                                       export_verdict,
                                       plot_results,
                                       record_export,
                                       result_table,
                                       tensor_type_table,
)
from bgwork.gguf_export.gguffile import GGUFLayout, GGUFTensor, gguf_tensor_types, read_gguf
from bgwork.gguf_export.quantize import lfm2_350m_size_check, lfm2_layout, quantize_gguf, tensor_bytes, tensor_types
from bgwork.gguf_export.verify import (
                                       EXACT_QUANTS,
                                       centered_cosine,
                                       hf_reference,
                                       llama_greedy,
                                       llama_next_logprobs,
                                       llama_server,
                                       verify_gguf,
)

__all__ = ["AGENT_COLUMNS", "COLUMNS", "agent_check", "agent_table", "export_verdict",
           "EXACT_QUANTS", "QUANTS", "ExportError", "GGUFLayout", "GGUFTensor", "centered_cosine",
           "check_export", "export_after_training", "export_checkpoint", "export_target", "gguf_tensor_types",
           "hf_reference", "lfm2_350m_size_check", "lfm2_layout", "llama_greedy", "llama_next_logprobs",
           "llama_server", "plot_results", "quantize_gguf", "read_gguf", "record_export", "result_table",
           "tensor_bytes", "tensor_type_table", "tensor_types", "verify_gguf"]
