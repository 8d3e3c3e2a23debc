"""bgwork.models: every spec kind resolves (or fails clearly); cached conversions are reused."""

import pytest

from bgwork import models


def test_tiny_random_lfm2_is_real_lfm2_and_deterministic():
    a = models.resolve_model(models.TINY_RANDOM_LFM2)
    b = models.resolve_model(models.TINY_RANDOM_LFM2)
    cfg = a.model.config
    assert cfg.model_type == "lfm2" and cfg.hidden_size == 64 and cfg.num_hidden_layers == 2
    assert list(cfg.layer_types) == ["conv", "full_attention"]
    names = {n.rsplit(".", 1)[-1] for n, _ in a.model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "out_proj", "w1", "w2", "w3", "in_proj"} <= names
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert (p == q).all(), n
    assert a.tokenizer.padding_side == "left" and a.tokenizer.pad_token is not None
    assert len(a.tokenizer) == cfg.vocab_size


def test_bundled_smollm2_is_a_float_checkpoint_with_chat_template(tmp_path):
    r = models.resolve_model(models.BUNDLED_SMOLLM2, load_model=False)
    import json
    from pathlib import Path
    cfg = json.loads((Path(r.path) / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    assert list(Path(r.path).glob("*.safetensors"))
    assert r.tokenizer.chat_template and r.tokenizer.eos_token == "<|im_end|>"


def test_local_directory_and_short_name():
    path = models.model_path(models.TINY_RANDOM_LFM2)
    assert models.model_path(path) == path
    assert models.short_name("LiquidAI/LFM2-350M") == "LFM2-350M"
    assert models.short_name(models.BUNDLED_SMOLLM2) == "smollm2-135m-instruct"


def test_bad_specs_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(models.ModelNotFound, match="config.json"):
        models.model_path(str(tmp_path))
    with pytest.raises(models.ModelNotFound, match="unknown built-in model"):
        models.model_path("bundled:nope")
    with pytest.raises(models.ModelNotFound, match="no such directory"):
        models.model_path(str(tmp_path / "missing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(models.ModelNotFound, match="not in the local Hugging Face cache"):
        models.model_path("nobody-here/no-such-model-xyz")


def test_bfloat16_on_a_cpu_without_native_support_warns(caplog):
    """bf16 matmuls without AMX/AVX512-BF16 take a scalar fallback (~38x slower than float32 on an AVX2 EPYC):
    asking for it there warns and names the way out; where the CPU has it, nothing is said."""
    import logging

    import torch

    from bgwork.trainer import cpu_has_native_bf16, device_and_dtype, warn_slow_cpu_bf16

    if torch.cuda.is_available():
        pytest.skip("the warning is about CPU training")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert cpu_has_native_bf16() == native
    warn_slow_cpu_bf16.cache_clear()  # said once per process: an earlier test may have said it already
    with caplog.at_level(logging.WARNING, logger="bgwork.trainer"):
        assert device_and_dtype("bfloat16") == ("cpu", torch.bfloat16)
        assert device_and_dtype("bfloat16") == ("cpu", torch.bfloat16)
        assert device_and_dtype("auto") == ("cpu", torch.float32)
    warned = [r.getMessage() for r in caplog.records if "bfloat16" in r.getMessage()]
    assert len(warned) == (0 if native else 1)
    assert all("model.dtype: auto" in w for w in warned)
