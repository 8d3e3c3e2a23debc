"""Step 2 of the export: Q8_0 / Q5_K_M / Q4_K_M from the F16 file, as `llama-quantize` does.

Per-tensor types follow `llama_tensor_get_type` of the vendored `src/llama-quant.cpp` (transcribed in
`tensor_types`); rows are quantized by libgguf's native reference kernels, which are bit-identical to
llama.cpp's `ggml_quantize_chunk` (checked per tensor against the copy inside the xllamacpp library).
`lfm2_350m_size_check` shows the rules reproduce the file sizes llama.cpp wrote for LFM2-350M.
"""

from __future__ import annotations

import ctypes
import math
import struct
from pathlib import Path

import numpy as np

from bgwork.gguf_export.errors import ExportError
from bgwork.gguf_export.gguffile import ALIGNMENT, GGUFLayout, f32_rows, read_gguf, tensor_info, with_u32

# --- llama.cpp's per-tensor type choice (transcribed from llama-quant.cpp) ---------------------------------------

# ftype -> (GGUF general.file_type, default ggml type)
FTYPES = {"Q8_0": (7, "Q8_0"), "Q4_K_M": (15, "Q4_K"), "Q5_K_M": (17, "Q5_K")}
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # tensor_type_fallback, for rows not a multiple of 256
_NO_QUANT_SUBSTR = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
                    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
                    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
                    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
                    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
                    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
                    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
                    "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd")
_CATEGORIES = (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
               ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
               ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down"))
UNSUPPORTED_ARCHS = ("falcon", "glm5-next")  # they have extra branches in llama_tensor_get_type not transcribed


def block_size(qtype: str) -> int:
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]


def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    return next((cat for key, cat in _CATEGORIES if key in name), "other")


def allows_quantization(name: str, n_dims: int) -> bool:
    """tensor_allows_quantization: 2D+ tensors named *weight, minus norms, routers, tiny and positional tensors."""
    return (n_dims >= 2 and name.endswith("weight") and name not in ("position_embd.weight", "token_types.weight")
            and not any(s in name for s in _NO_QUANT_SUBSTR))


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def weight_order(names: list[str]) -> list[str]:
    """llama_model_loader's weights_map order (by layer number, then name): the order the counters see."""
    def key(n):
        layer = int(n.split(".")[1]) if n.startswith("blk.") and n.split(".")[1].isdigit() else -1
        return (layer, n)
    return sorted(names, key=key)


def tensor_types(tensors: list[tuple[str, list[int], str]], ftype: str, n_layer: int, arch: str = "",
                 n_expert: int = 0) -> dict[str, str]:
    """llama_tensor_get_type for ftype Q8_0 / Q4_K_M / Q5_K_M (no imatrix, no overrides, dense models).

    tensors: (name, ne (GGUF shape, fastest dim first), current type name). Returns name -> ggml type name.
    """
    if ftype not in FTYPES:
        raise ExportError(f"quant {ftype!r}: expected one of {sorted(FTYPES)}")
    if arch in UNSUPPORTED_ARCHS or n_expert > 1:
        raise ExportError(f"arch {arch!r} (experts: {n_expert}): its special cases in llama_tensor_get_type "
                          "are not transcribed here; quantize it with llama.cpp's llama-quantize")
    default = FTYPES[ftype][1]
    by_name = {n: (ne, cur) for n, ne, cur in tensors}
    order = weight_order(list(by_name))
    cats = {n: category(n) for n in order}
    tied = "output" not in cats.values()
    n_wv = sum(c in ("attn_v", "attn_qkv", "attn_kv_b") for c in cats.values())
    i_wv = i_down = 0
    out = {}
    for name in order:
        ne, cur = by_name[name]
        n_dims = max((i + 1 for i, d in enumerate(ne) if d != 1), default=1)
        if not allows_quantization(name, n_dims):
            out[name] = cur
            continue
        new, cat = default, cats[name]
        if cat == "output" or (tied and cat == "token_embd"):
            if ne[0] % block_size(new) != 0:
                new = "Q8_0"
            elif new != "Q8_0":
                new = "Q6_K"
        elif cat in ("attn_v", "attn_qkv", "attn_kv_b"):  # category_is_attn_v (its later QKV branch is unreachable)
            if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_wv, n_wv):
                new = "Q6_K"
            i_wv += 1
        elif cat == "ffn_down":
            if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_down, n_layer):
                new = "Q6_K"
            i_down += 1
        out[name] = _fallback(new, ne[0])
    return out


def _fallback(qtype: str, ncols: int) -> str:
    if ncols % block_size(qtype) == 0:
        return qtype
    qtype = _FALLBACK.get(qtype, qtype)
    return qtype if ncols % block_size(qtype) == 0 else "F16"


# --- writing the quantized file --------------------------------------------------------------------------------

def quantize_gguf(f16: GGUFLayout, out_path: Path, ftype: str, check_reference: bool) -> dict[str, str]:
    """Write `out_path` from the F16 file as llama-quantize would; returns the per-tensor types used.

    Metadata is copied byte for byte with general.file_type set to the ftype, tensors in llama.cpp's order; the
    written file must read back with exactly the rules' types. With check_reference, every quantized tensor is
    also quantized by llama.cpp's own ggml_quantize_chunk and must be bit-identical.
    """
    import gguf
    import libgguf

    arch = f16.kv["general.architecture"]
    types = tensor_types([(t.name, t.ne, t.type) for t in f16.tensors], ftype, int(f16.kv[f"{arch}.block_count"]),
                         arch, int(f16.kv.get(f"{arch}.expert_count", 0)))
    reference = _ggml_quantize_chunk() if check_reference else None
    by_name = {t.name: t for t in f16.tensors}
    blobs, infos, offset = [], [], 0
    for name in weight_order(list(by_name)):
        t, new = by_name[name], types[name]
        if new == t.type:
            data = f16.tensor_data(t)
        else:
            rows = np.ascontiguousarray(f32_rows(f16, t))
            data = libgguf.quantize_rows(rows, libgguf.GGMLQuantizationType[new]).reshape(-1)
            if reference is not None:
                _check_against_ggml(reference, rows, data, new, name)
        infos.append(tensor_info(name, t.ne, gguf.GGMLQuantizationType[new].value, offset))
        blobs.append((data, offset))
        offset += -(-data.size // ALIGNMENT) * ALIGNMENT
    kv_raw = with_u32(f16, "general.file_type", FTYPES[ftype][0])
    header = b"GGUF" + struct.pack("<IQQ", 3, len(infos), f16.n_kv) + kv_raw + b"".join(infos)
    tmp = out_path.with_suffix(".gguf.partial")
    with open(tmp, "wb") as fh:
        fh.write(header + bytes(-len(header) % ALIGNMENT))
        for data, off in blobs:
            fh.write(memoryview(np.ascontiguousarray(data)).cast("B"))
            fh.write(bytes(-data.size % ALIGNMENT))
    tmp.replace(out_path)
    written = {t.name: t.type for t in read_gguf(out_path).tensors}
    if written != types:
        wrong = sorted(n for n in types if written.get(n) != types[n])
        raise ExportError(f"{out_path}: tensors {wrong[:5]} read back with other types than llama.cpp's rules chose")
    return types


# --- llama.cpp's own quantizer (ggml_quantize_chunk, exported by the xllamacpp library) as the reference ------

def _ggml_quantize_chunk():
    import xllamacpp

    lib = ctypes.CDLL(str(Path(xllamacpp.__file__).parent / "xllamacpp.abi3.so"))
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p]
    return fn


def _check_against_ggml(fn, rows: np.ndarray, data: np.ndarray, qtype: str, name: str) -> None:
    import gguf

    want = np.zeros(data.size, dtype=np.uint8)
    n = fn(gguf.GGMLQuantizationType[qtype].value, rows.ctypes.data, want.ctypes.data, 0, rows.shape[0],
           rows.shape[1], None)
    if n != data.size or not np.array_equal(want, data):
        raise ExportError(f"{name}: libgguf's {qtype} bytes differ from llama.cpp's ggml_quantize_chunk")


# --- how the K-quant mix was checked -----------------------------------------------------------------------------

# What llama.cpp's llama-quantize wrote for LFM2-350M in the original project (MiB, as llama.cpp reports sizes).
LFM2_350M_LLAMA_CPP_MIB = {"F16": 678.5, "Q8_0": 361.7, "Q5_K_M": 248.3, "Q4_K_M": 218.7}


def lfm2_layout(vocab: int = 65536, hidden: int = 1024, n_layer: int = 16, attn_layers=(2, 5, 8, 10, 12, 14),
                ff: int = 4608, n_kv_heads: int = 8, head_dim: int = 64, conv_l: int = 3) -> list[tuple]:
    """The (name, ne, type) table convert_hf_to_gguf writes in an LFM2 F16 file (defaults: LFM2-350M's config)."""
    t = [("token_embd.weight", [hidden, vocab], "F16"), ("token_embd_norm.weight", [hidden], "F32")]
    for i in range(n_layer):
        b = f"blk.{i}."
        t += [(b + "ffn_gate.weight", [hidden, ff], "F16"), (b + "ffn_up.weight", [hidden, ff], "F16"),
              (b + "ffn_down.weight", [ff, hidden], "F16"), (b + "ffn_norm.weight", [hidden], "F32"),
              (b + "attn_norm.weight", [hidden], "F32")]
        if i in attn_layers:
            kv = n_kv_heads * head_dim
            t += [(b + "attn_q.weight", [hidden, hidden], "F16"), (b + "attn_k.weight", [hidden, kv], "F16"),
                  (b + "attn_v.weight", [hidden, kv], "F16"), (b + "attn_output.weight", [hidden, hidden], "F16"),
                  (b + "attn_q_norm.weight", [head_dim], "F32"), (b + "attn_k_norm.weight", [head_dim], "F32")]
        else:
            t += [(b + "shortconv.conv.weight", [conv_l, hidden], "F32"),
                  (b + "shortconv.in_proj.weight", [hidden, 3 * hidden], "F16"),
                  (b + "shortconv.out_proj.weight", [hidden, hidden], "F16")]
    return t


def tensor_bytes(tensors: list[tuple], types: dict[str, str] | None = None) -> int:
    """Data-section size of a GGUF holding these tensors (each padded to the alignment)."""
    import gguf

    total = 0
    for name, ne, cur in tensors:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[(types or {}).get(name, cur)]]
        total += -(-(math.prod(ne) // block * size) // ALIGNMENT) * ALIGNMENT
    return total


def lfm2_350m_size_check():
    """Predicted file sizes for LFM2-350M from `tensor_types` vs what llama.cpp wrote in the original project.

    The metadata size (tokenizer etc.) is taken from the F16 file; a wrong choice for one ffn_down tensor
    moves a K-quant file by ~1.2 MiB, for one attn_v tensor by ~0.13 MiB.
    """
    import pandas as pd

    layout = lfm2_layout()
    meta = LFM2_350M_LLAMA_CPP_MIB["F16"] * 2**20 - tensor_bytes(layout)
    rows = []
    for quant, want in LFM2_350M_LLAMA_CPP_MIB.items():
        types = tensor_types(layout, quant, 16, "lfm2") if quant != "F16" else {}
        got = (tensor_bytes(layout, types) + meta) / 2**20
        counts = pd.Series(list(types.values())).value_counts().to_dict() if types else {}
        rows.append({"quant": quant, "llama.cpp MiB (original project)": want, "predicted MiB": round(got, 2),
                     "difference MiB": round(got - want, 2), "tensor types": counts})
    return pd.DataFrame(rows)
