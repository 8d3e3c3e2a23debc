"""Step 1 of the export: a checkpoint (LoRA merged into its base) -> a plain HF dir -> F16 GGUF, with llama.cpp's
own `convert_hf_to_gguf.py` (+ its `conversion/` package and `gguf-py`), taken from the llama-cpp-python source
distribution, which vendors llama.cpp; fetched at set-up (`python -m bgwork.gguf_export.convert`, run by
scripts/setup.sh) into the bgwork cache, never during a run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from bgwork.gguf_export.cache import build_once, cache_dir, pip_download
from bgwork.gguf_export.errors import ExportError

LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"  # vendors llama.cpp 0c1e5709 (its converter and quantizer source)
_VENDORED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "src/llama-quant.cpp", "LICENSE")


def llama_cpp_dir() -> Path:
    """Folder holding llama.cpp's convert_hf_to_gguf.py, conversion/, gguf-py/ and src/llama-quant.cpp, put into
    the bgwork cache at set-up (`scripts/setup.sh` runs `fetch_llama_cpp`). Nothing is downloaded here: an export
    must not stop halfway through a run to fetch 76 MB, nor fail when the package index is out of reach."""
    target = _llama_cpp_target()
    if not (target / "convert_hf_to_gguf.py").exists():
        raise ExportError(f"llama.cpp's converter is not installed ({target} is missing): run `bash scripts/setup.sh` "
                          f"(or `{sys.executable} -m bgwork.gguf_export.convert`) once, with the package index "
                          f"reachable")
    return target


def fetch_llama_cpp() -> Path:
    """Set-up: llama.cpp's converter and quantizer source out of the llama-cpp-python sdist (pip download, once)."""
    def extract(tmp: Path) -> None:
        sdist = pip_download(LLAMA_CPP_SDIST, LLAMA_CPP_SDIST.replace("-", "_").replace("==", "-") + ".tar.gz",
                             source=True)
        with tarfile.open(sdist) as tf:
            for m in tf.getmembers():
                rel = m.name.split("/vendor/llama.cpp/", 1)[-1] if "/vendor/llama.cpp/" in m.name else None
                if rel and (m.isfile() or m.isdir()) and any(rel == v or rel.startswith(v) for v in _VENDORED):
                    m.name = rel
                    tf.extract(m, tmp, filter="data")
        if not (tmp / "convert_hf_to_gguf.py").exists():
            raise ExportError(f"{sdist}: has no vendor/llama.cpp/convert_hf_to_gguf.py")

    return build_once(_llama_cpp_target(), extract, marker="convert_hf_to_gguf.py")


def _llama_cpp_target() -> Path:
    return cache_dir() / "llama.cpp" / LLAMA_CPP_SDIST.replace("==", "-")


# --- checkpoint -> plain HF dir -> F16 GGUF ------------------------------------------------------------------

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


if __name__ == "__main__":  # scripts/setup.sh
    print(f"llama.cpp converter: {fetch_llama_cpp()}")
