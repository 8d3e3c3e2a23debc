"""A checkpoint -> GGUF files (F16, Q8_0, Q5_K_M, Q4_K_M) for llama.cpp, each verified in a llama.cpp runtime.

    rows = export_checkpoint("outputs/.../checkpoint-100", "outputs/.../gguf")   # one dict per file

Pipeline, all from installable packages (nothing compiled here):
1. LoRA checkpoints are merged into their base model with peft (`merge_and_unload`) first.
2. F16: llama.cpp's own `convert_hf_to_gguf.py` (+ its `conversion/` package and `gguf-py`), taken from the
   llama-cpp-python source distribution, which vendors llama.cpp (fetched once with pip, cached).
3. Q8_0 / Q5_K_M / Q4_K_M: from the F16 file, as `llama-quantize` does. Per-tensor types follow
   `llama_tensor_get_type` of the vendored `src/llama-quant.cpp` (transcribed in `tensor_types`); rows are
   quantized by libgguf's native reference kernels, which are bit-identical to llama.cpp's
   `ggml_quantize_chunk` (checked per tensor against the copy inside the xllamacpp library).
4. Verification: each file is loaded by xllamacpp (a prebuilt llama.cpp), generates greedily, and its
   next-token distribution on fixed prompts is compared with the HF model's logits.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bgwork.models import _build_lock, cache_dir

QUANTS = ("F16", "Q8_0", "Q5_K_M", "Q4_K_M")
LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"  # vendors llama.cpp 0c1e5709 (its converter and quantizer source)
_VENDORED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "src/llama-quant.cpp", "LICENSE")
EXACT_QUANTS = ("F16", "Q8_0")  # verification demands the same greedy output as the HF model


class ExportError(RuntimeError):
    """A checkpoint that cannot be exported, or a file that failed verification; the message says which."""


# --- 1. the llama.cpp converter, fetched once -------------------------------------------------------------

def llama_cpp_dir() -> Path:
    """Folder holding llama.cpp's convert_hf_to_gguf.py, conversion/, gguf-py/ and src/llama-quant.cpp."""
    target = cache_dir() / "llama.cpp" / LLAMA_CPP_SDIST.replace("==", "-")
    if (target / "convert_hf_to_gguf.py").exists():
        return target
    with _build_lock("llama-cpp-sdist"):
        if (target / "convert_hf_to_gguf.py").exists():
            return target
        sdist = _download_sdist()
        target.parent.mkdir(parents=True, exist_ok=True)  # a fresh machine has no cache folder yet
        tmp = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=target.parent))
        try:
            with tarfile.open(sdist) as tf:
                for m in tf.getmembers():
                    rel = m.name.split("/vendor/llama.cpp/", 1)[-1] if "/vendor/llama.cpp/" in m.name else None
                    if rel and (m.isfile() or m.isdir()) and any(rel == v or rel.startswith(v) for v in _VENDORED):
                        m.name = rel
                        tf.extract(m, tmp, filter="data")
            if not (tmp / "convert_hf_to_gguf.py").exists():
                raise ExportError(f"{sdist}: has no vendor/llama.cpp/convert_hf_to_gguf.py")
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _download_sdist() -> Path:
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name = LLAMA_CPP_SDIST.replace("-", "_").replace("==", "-")  # llama_cpp_python-0.3.36
    found = sorted(wheels.glob(f"{name}.tar.gz"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
           LLAMA_CPP_SDIST, "-d", str(wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob(f"{name}.tar.gz"))
    if not found:
        raise ExportError(f"`{' '.join(cmd)}` failed (is PyPI reachable, or the sdist in {wheels}?):\n"
                          f"{proc.stderr[-2000:]}")
    return found[0]


# --- 2. checkpoint -> plain HF dir -> F16 GGUF -------------------------------------------------------------

HF_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
            "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")


def hf_dir_for(checkpoint: str | Path, work: Path) -> Path:
    """A plain HF model dir for the converter: the checkpoint's weights (LoRA merged into its base) + tokenizer.

    Optimizer/trainer files are left behind; the tokenizer comes from the checkpoint, else from the base model.
    """
    from bgwork.models import model_path

    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        ckpt = Path(model_path(str(checkpoint)))  # a model spec such as tiny-random-lfm2
    out = work / "hf"
    out.mkdir(parents=True, exist_ok=True)
    if (ckpt / "adapter_config.json").exists():
        base = _merge_lora(ckpt, out)
    else:
        if not (ckpt / "config.json").exists():
            raise ExportError(f"{ckpt}: neither a full checkpoint (config.json) nor a LoRA one (adapter_config.json)")
        weights = sorted(ckpt.glob("model*.safetensors")) + sorted(ckpt.glob("model.safetensors.index.json"))
        if not weights:
            raise ExportError(f"{ckpt}: no model*.safetensors weights")
        for f in weights + [ckpt / n for n in HF_FILES if (ckpt / n).exists()]:
            os.symlink(f.resolve(), out / f.name)
        base = None
    if not (out / "tokenizer.json").exists() and not (out / "tokenizer.model").exists():
        src = base or _base_of(ckpt)
        if src is None:
            raise ExportError(f"{ckpt}: no tokenizer files, and no base model recorded to take them from")
        from bgwork.models import load_tokenizer

        load_tokenizer(src).save_pretrained(out)
    return out


def _base_of(ckpt: Path) -> str | None:
    from bgwork.models import model_path

    cfg = json.loads((ckpt / "config.json").read_text())
    name = cfg.get("_name_or_path")
    try:
        return model_path(name) if name else None
    except Exception:
        return None


def _merge_lora(ckpt: Path, out: Path) -> str:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from bgwork.models import model_path

    adapter = json.loads((ckpt / "adapter_config.json").read_text())
    base_spec = adapter.get("base_model_name_or_path")
    if not base_spec:
        raise ExportError(f"{ckpt}/adapter_config.json: no base_model_name_or_path; cannot merge the LoRA")
    base = model_path(base_spec)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(ckpt)).merge_and_unload()
    merged.save_pretrained(out)
    for name in HF_FILES[1:]:
        if (ckpt / name).exists():
            shutil.copy2(ckpt / name, out / name)
    return base


def convert_f16(hf_dir: Path, out_path: Path) -> Path:
    """llama.cpp's convert_hf_to_gguf.py --outtype f16, run with this Python (torch, transformers installed)."""
    script = llama_cpp_dir() / "convert_hf_to_gguf.py"
    cmd = [sys.executable, str(script), str(hf_dir), "--outtype", "f16", "--outfile", str(out_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out_path.exists():
        raise ExportError(f"convert_hf_to_gguf.py failed on {hf_dir} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return out_path


# --- 3. llama.cpp's per-tensor type choice (transcribed from llama-quant.cpp) -------------------------------------

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


# --- 3b. GGUF files: a small reader/writer (gguf.GGUFReader parses every vocab string through numpy: too slow) ---

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT; files with general.alignment set are refused


@dataclass
class GGUFTensor:
    name: str
    ne: list[int]  # GGUF shape: fastest-varying dimension first
    type: str  # ggml type name
    offset: int  # from the start of the data section
    nbytes: int


@dataclass
class GGUFLayout:
    path: Path
    version: int
    n_kv: int
    kv_raw: bytes  # the KV section as stored
    kv: dict  # scalar and string values (arrays are skipped)
    kv_offsets: dict  # key -> (value offset within kv_raw, value type)
    tensors: list[GGUFTensor]
    data_start: int

    def tensor_data(self, t: GGUFTensor) -> np.ndarray:
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.data_start + t.offset, shape=(t.nbytes,))


def read_gguf(path: str | Path) -> GGUFLayout:
    """Header, metadata and tensor table of a GGUF v3 file; tensor bytes stay on disk (memmap)."""
    import gguf

    path = Path(path)
    with open(path, "rb") as fh:
        buf = fh.read(min(path.stat().st_size, 64 << 20))
    if buf[:4] != b"GGUF":
        raise ExportError(f"{path}: not a GGUF file")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    pos = kv_start = 24
    kv, kv_offsets = {}, {}
    for _ in range(n_kv):
        key, pos = _read_str(buf, pos)
        (vtype,), pos = struct.unpack_from("<I", buf, pos), pos + 4
        kv_offsets[key] = (pos - kv_start, vtype)
        if vtype == 9:
            (etype, count), pos = struct.unpack_from("<IQ", buf, pos), pos + 12
            for _ in range(count):
                pos = _skip_value(buf, pos, etype)
        else:
            kv[key], pos = _read_value(buf, pos, vtype)
    if "general.alignment" in kv and kv["general.alignment"] != ALIGNMENT:
        raise ExportError(f"{path}: general.alignment {kv['general.alignment']} is not supported")
    kv_raw = buf[kv_start:pos]
    tensors = []
    for _ in range(n_tensors):
        name, pos = _read_str(buf, pos)
        (n_dims,), pos = struct.unpack_from("<I", buf, pos), pos + 4
        ne = list(struct.unpack_from(f"<{n_dims}Q", buf, pos))
        pos += 8 * n_dims
        ttype, offset = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        qtype = gguf.GGMLQuantizationType(ttype)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        tensors.append(GGUFTensor(name, ne, qtype.name, offset, math.prod(ne) // block * size))
    data_start = -(-pos // ALIGNMENT) * ALIGNMENT
    return GGUFLayout(path, version, n_kv, kv_raw, kv, kv_offsets, tensors, data_start)


def _read_str(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    return buf[pos + 8:pos + 8 + n].decode("utf-8", errors="replace"), pos + 8 + n


def _read_value(buf: bytes, pos: int, vtype: int):
    if vtype == 8:
        return _read_str(buf, pos)
    fmt = _GGUF_SCALARS[vtype]
    return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)


def _skip_value(buf: bytes, pos: int, vtype: int) -> int:
    if vtype == 8:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    if vtype == 9:
        etype, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        for _ in range(count):
            pos = _skip_value(buf, pos, etype)
        return pos
    return pos + struct.calcsize(_GGUF_SCALARS[vtype])


def f32_rows(layout: GGUFLayout, t: GGUFTensor) -> np.ndarray:
    """A F16/BF16/F32 tensor as float32 rows of ne[0] values."""
    raw = layout.tensor_data(t)
    if t.type == "F32":
        return np.asarray(raw.view(np.float32)).reshape(-1, t.ne[0])
    if t.type == "F16":
        return raw.view(np.float16).astype(np.float32).reshape(-1, t.ne[0])
    if t.type == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(-1, t.ne[0])
    raise ExportError(f"{layout.path}: {t.name} is {t.type}; expected an F16/BF16/F32 source file")


def quantize_gguf(f16: GGUFLayout, out_path: Path, ftype: str, check_reference: bool = True) -> dict[str, str]:
    """Write `out_path` from the F16 file as llama-quantize would; returns the per-tensor types used.

    Metadata is copied byte for byte with general.file_type set to the ftype, tensors in llama.cpp's order.
    With check_reference, every quantized tensor is also quantized by llama.cpp's own ggml_quantize_chunk
    and must be bit-identical.
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
        infos.append(_tensor_info(name, t.ne, gguf.GGMLQuantizationType[new].value, offset))
        blobs.append((data, offset))
        offset += -(-data.size // ALIGNMENT) * ALIGNMENT
    kv_raw = _with_u32(f16, "general.file_type", FTYPES[ftype][0])
    header = b"GGUF" + struct.pack("<IQQ", 3, len(infos), f16.n_kv) + kv_raw + b"".join(infos)
    tmp = out_path.with_suffix(".gguf.partial")
    with open(tmp, "wb") as fh:
        fh.write(header + bytes(-len(header) % ALIGNMENT))
        for data, off in blobs:
            fh.write(memoryview(np.ascontiguousarray(data)).cast("B"))
            fh.write(bytes(-data.size % ALIGNMENT))
    tmp.replace(out_path)
    return types


def _tensor_info(name: str, ne: list[int], ttype: int, offset: int) -> bytes:
    raw = name.encode()
    return struct.pack("<Q", len(raw)) + raw + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, ttype, offset)


def _with_u32(layout: GGUFLayout, key: str, value: int) -> bytes:
    if key not in layout.kv_offsets or layout.kv_offsets[key][1] != 4:
        raise ExportError(f"{layout.path}: no uint32 {key} to set")
    pos = layout.kv_offsets[key][0]
    return layout.kv_raw[:pos] + struct.pack("<I", value) + layout.kv_raw[pos + 4:]


def gguf_tensor_types(path: str | Path) -> dict[str, str]:
    return {t.name: t.type for t in read_gguf(path).tensors}


# --- 3c. llama.cpp's own quantizer (ggml_quantize_chunk, exported by the xllamacpp library) as the reference ---

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


# --- 4. verification in llama.cpp (xllamacpp) -------------------------------------------------------------------

@contextlib.contextmanager
def llama_server(path: Path, n_ctx: int = 1024, threads: int | None = None):
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = str(path)
    p.n_ctx = n_ctx
    p.n_parallel = 1
    p.cpuparams.n_threads = threads or max(1, min(4, os.cpu_count() or 1))
    p.warmup = False
    server = xlc.Server(p)
    try:
        yield server
    finally:
        del server


def llama_next_logprobs(server, ids: list[int], n_vocab: int) -> np.ndarray:
    """llama.cpp's log-softmax over the whole vocabulary for the token after `ids`."""
    r = _completion(server, {"prompt": ids, "n_predict": 1, "n_probs": n_vocab, "temperature": 0,
                             "post_sampling_probs": False, "cache_prompt": False})
    out = np.full(n_vocab, -np.inf, dtype=np.float64)
    for entry in r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]:
        out[entry["id"]] = entry["logprob"]
    return out


def llama_greedy(server, ids: list[int], n: int) -> list[int]:
    r = _completion(server, {"prompt": ids, "n_predict": n, "n_probs": 1, "temperature": 0, "ignore_eos": True,
                             "cache_prompt": False})
    return [c["id"] for c in r["choices"][0]["logprobs"]["content"]]


def _completion(server, request: dict) -> dict:
    r = server.handle_completions(request)
    if not isinstance(r, dict) or "choices" not in r:
        raise ExportError(f"llama.cpp completion failed: {str(r)[:500]}")
    return r


def hf_reference(model, tokenizer, prompts: list[str], n: int) -> list[dict]:
    """Per prompt: token ids, next-token logits and n greedy tokens (no EOS stop), from the HF model in float32."""
    import torch

    refs = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        seq, greedy, first = list(ids), [], None
        with torch.no_grad():
            for _ in range(n):
                logits = model(input_ids=torch.tensor([seq])).logits[0, -1].double()
                first = logits.numpy() if first is None else first
                seq.append(int(logits.argmax()))
                greedy.append(seq[-1])
        refs.append({"prompt": prompt, "ids": ids, "logits": first, "greedy": greedy})
    return refs


def centered_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of mean-centred vectors: log-softmax and logits differ by a constant, which centring removes."""
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def verify_gguf(path: Path, refs: list[dict], n_vocab: int, quant: str, min_cosine: float = 0.99) -> dict:
    """Load `path` in llama.cpp, compare with the HF references; `ok` per the rules of `quant`."""
    t0 = time.time()
    cosines, top_same, greedy_same, texts = [], [], [], []
    with llama_server(path) as server:
        load_s = time.time() - t0
        for ref in refs:
            lp = llama_next_logprobs(server, ref["ids"], n_vocab)
            cosines.append(centered_cosine(lp, ref["logits"]))
            top_same.append(int(np.argmax(lp)) == int(np.argmax(ref["logits"])))
            greedy = llama_greedy(server, ref["ids"], len(ref["greedy"]))
            greedy_same.append(greedy == ref["greedy"])
            texts.append(greedy)
    ok = all(top_same) and (all(greedy_same) if quant in EXACT_QUANTS else min(cosines) >= min_cosine)
    return {"load_s": load_s, "min_cosine": min(cosines), "cosines": cosines, "top_token_same": all(top_same),
            "greedy_same": all(greedy_same), "generated_ids": texts, "ok": ok}


# --- the whole export ------------------------------------------------------------------------------------------

def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, quants=QUANTS, *, verify: bool = True,
                      prompts: list[str] | None = None, gen_tokens: int = 8, min_cosine: float = 0.99,
                      check_reference: bool = True, strict: bool = True) -> list[dict]:
    """Export `checkpoint` (dir or model spec) to `out_dir/<name>-<QUANT>.gguf`; one result dict per file.

    With verify, each row gets llama.cpp's agreement with the HF model and `ok`; strict raises ExportError
    naming the failing files (they stay for inspection). Safe to call at the end of training
    (see `export_after_training`).
    """
    from bgwork.config import ExportParams

    unknown = [q for q in quants if q not in QUANTS]
    if unknown:
        raise ExportError(f"quants {unknown}: expected some of {list(QUANTS)}")
    prompts = prompts or ExportParams().prompts
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = _export_name(checkpoint)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bgwork-export-") as work:
        t0 = time.time()
        hf = hf_dir_for(checkpoint, Path(work))
        merge_s = time.time() - t0
        t0 = time.time()
        f16 = convert_f16(hf, out_dir / f"{name}-F16.gguf")
        rows.append(_row("F16", f16, time.time() - t0 + merge_s, {}))
        layout = read_gguf(f16)
        for q in [q for q in quants if q != "F16"]:
            t0 = time.time()
            path = out_dir / f"{name}-{q}.gguf"
            types = quantize_gguf(layout, path, q, check_reference)
            rows.append(_row(q, path, time.time() - t0, types))
            rows[-1]["bit_identical_to_ggml"] = check_reference or None
        if "F16" not in quants:
            f16.unlink()
            rows = rows[1:]
        if verify:
            _verify_rows(rows, hf, prompts, gen_tokens, min_cosine)
    failed = [f"{r['quant']} (min cosine {r['min_cosine']:.4f}, top token same {r['top_token_same']}, greedy same "
              f"{r['greedy_same']})" for r in rows if verify and not r["ok"]]
    if strict and failed:
        raise ExportError(f"llama.cpp disagrees with the HF model for: {', '.join(failed)}; files in {out_dir}")
    return rows


def _export_name(checkpoint) -> str:
    p = Path(str(checkpoint))
    parts = [x for x in (p.parent.name if p.name.startswith("checkpoint-") else "", p.name) if x]
    return "-".join(parts).replace(":", "-") or "model"


def _row(quant: str, path: Path, seconds: float, types: dict) -> dict:
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    return {"quant": quant, "path": str(path), "MB": path.stat().st_size / 1e6, "export_s": seconds,
            "tensor_types": dict(sorted(counts.items()))}


def _verify_rows(rows: list[dict], hf: Path, prompts: list[str], gen_tokens: int, min_cosine: float) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from bgwork.models import load_tokenizer

    tok = load_tokenizer(str(hf))
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    refs = hf_reference(model, tok, prompts, gen_tokens)
    n_vocab = model.config.vocab_size
    del model
    for row in rows:
        row.update(verify_gguf(Path(row["path"]), refs, n_vocab, row["quant"], min_cosine))
        row["sample"] = tok.decode(row["generated_ids"][0])


def export_after_training(params, model_dir: str | Path, run_dir: str | Path, strict: bool = True) -> list[dict] | None:
    """For the training code: export the final model when `params.export.after_training` is set."""
    ep = params.export
    if not ep.after_training:
        return None
    return export_checkpoint(model_dir, ep.out_dir or Path(run_dir) / "gguf", ep.quants, verify=ep.verify,
                             prompts=ep.prompts, gen_tokens=ep.gen_tokens, min_cosine=ep.min_cosine,
                             check_reference=ep.check_reference, strict=strict)


# --- how the K-quant mix was checked -------------------------------------------------------------------------

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
