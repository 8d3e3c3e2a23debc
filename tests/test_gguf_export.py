"""GGUF export: llama.cpp's per-tensor type rules, and real exports verified in llama.cpp (xllamacpp).

Exports run llama.cpp's converter on tiny LFM2 checkpoints (hidden 256, so K-quants cover whole rows) trained for
a few steps (a random model's flat logits flip greedy tokens under any quantization), and the bundled SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ckpt_fixtures import cached_export_fixtures

from bgwork import gguf_export as gx
from bgwork import notebook_run
from bgwork.config import ExportParams
from bgwork.runs import PROJECT_ROOT, read_metrics

SHORT = ["Goal: Click the button.\n\nPage observation:\n[13] button 'Click Me!'\n\nAction:"]


# --- the rules (fast) -----------------------------------------------------------------------------------------

def test_rules_reproduce_llama_cpp_sizes_for_lfm2_350m():
    check = gx.lfm2_350m_size_check().set_index("quant")
    assert (check["difference MiB"].abs() < 0.1).all(), check
    # the check can tell mixes apart: without the use_more_bits bumps Q4_K_M would be ~10 MiB smaller
    layout = gx.lfm2_layout()
    types = gx.tensor_types(layout, "Q4_K_M", 16, "lfm2")
    pure = {n: ("Q4_K" if t == "Q6_K" and n != "token_embd.weight" else t) for n, t in types.items()}
    assert gx.tensor_bytes(layout, types) - gx.tensor_bytes(layout, pure) > 9 * 2**20


def test_rules_per_tensor_for_lfm2_350m_q4_k_m():
    types = gx.tensor_types(gx.lfm2_layout(), "Q4_K_M", 16, "lfm2")
    assert types["token_embd.weight"] == "Q6_K"  # tied embeddings are treated as the output tensor
    assert types["token_embd_norm.weight"] == "F32" and types["blk.0.shortconv.conv.weight"] == "F32"
    q6_down = [i for i in range(16) if types[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
    assert q6_down == [0, 1, 4, 7, 10, 13, 14, 15]  # use_more_bits(i, 16)
    attn = [2, 5, 8, 10, 12, 14]
    assert [types[f"blk.{i}.attn_v.weight"] for i in attn] == ["Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K"]
    assert {types[f"blk.{i}.attn_k.weight"] for i in attn} == {"Q4_K"}
    assert gx.tensor_types(gx.lfm2_layout(), "Q5_K_M", 16, "lfm2")["blk.8.attn_v.weight"] == "Q6_K"


def test_rules_fallbacks_for_rows_not_multiple_of_256():
    # SmolLM2: hidden 576 (not a multiple of 256), ffn 1536 (a multiple), 30 layers
    layout = [("token_embd.weight", [576, 49152], "F16"), ("blk.0.attn_v.weight", [576, 192], "F16"),
              ("blk.0.attn_q.weight", [576, 576], "F16"), ("blk.0.ffn_down.weight", [1536, 576], "F16"),
              ("blk.0.ffn_up.weight", [576, 1536], "F16"), ("blk.0.attn_norm.weight", [576], "F32")]
    q4 = gx.tensor_types(layout, "Q4_K_M", 30, "llama")
    assert q4 == {"token_embd.weight": "Q8_0", "blk.0.attn_v.weight": "Q8_0", "blk.0.attn_q.weight": "Q5_0",
                  "blk.0.ffn_down.weight": "Q6_K", "blk.0.ffn_up.weight": "Q5_0", "blk.0.attn_norm.weight": "F32"}
    q5 = gx.tensor_types(layout, "Q5_K_M", 30, "llama")
    assert q5["blk.0.attn_q.weight"] == "Q5_1"
    tiny = gx.tensor_types([("blk.0.ffn_up.weight", [40, 8], "F16")], "Q8_0", 1, "llama")
    assert tiny["blk.0.ffn_up.weight"] == "F16"
    with pytest.raises(gx.ExportError, match="not transcribed"):
        gx.tensor_types(layout, "Q4_K_M", 30, "falcon")
    with pytest.raises(gx.ExportError, match="expected one of"):
        gx.tensor_types(layout, "Q3_K_M", 30, "llama")


# --- real exports, run in llama.cpp (marked llama_cpp: minutes of CPU, out of the fast tier) --------------------

@pytest.fixture(scope="module")
def checkpoints():
    return cached_export_fixtures()


@pytest.mark.llama_cpp
def test_export_full_checkpoint_all_four_verified(checkpoints, tmp_path):
    rows = gx.export_checkpoint(checkpoints["full"], tmp_path / "gguf", prompts=SHORT + ["The capital of France is"])
    assert [r["quant"] for r in rows] == ["F16", "Q8_0", "Q5_K_M", "Q4_K_M"]
    for r in rows:
        assert r["ok"] and r["top_token_same"], r
        assert r["quant"] not in gx.EXACT_QUANTS or r["greedy_same"], r
        assert r["min_cosine"] >= 0.99, r
    assert all(r["bit_identical_to_ggml"] for r in rows[1:])
    # the files hold the converter's tensor table (as lfm2_layout describes it) and the rules' types
    f16 = gx.read_gguf(rows[0]["path"])
    want = gx.lfm2_layout(vocab=49152, hidden=256, n_layer=2, attn_layers=(1,), ff=512, n_kv_heads=2, head_dim=64)
    assert sorted((t.name, t.ne, t.type) for t in f16.tensors) == sorted((n, ne, t) for n, ne, t in want)
    for r in rows[1:]:
        assert gx.gguf_tensor_types(r["path"]) == gx.tensor_types(want, r["quant"], 2, "lfm2")
    q4 = gx.gguf_tensor_types(rows[3]["path"])
    assert q4["blk.1.attn_v.weight"] == "Q6_K" and q4["blk.0.ffn_down.weight"] == "Q4_K"  # real K-quants
    assert rows[3]["MB"] < rows[2]["MB"] < rows[1]["MB"] < rows[0]["MB"]


@pytest.mark.llama_cpp
@pytest.mark.browser
def test_notebook_06_exports_a_lora_merged_into_its_base(checkpoints, tmp_path, monkeypatch):
    """... with the checkpoint given relative to the project root, and each file checked as an agent (one
    click-test episode each, real browser) beside the HF model; the package index is out of reach throughout."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing may be fetched during the run
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    params = tmp_path / "export.yaml"
    relative = os.path.relpath(checkpoints["lora"], PROJECT_ROOT)
    params.write_text(yaml.safe_dump({"name": "export", "export": {
        "checkpoint": relative, "prompts": SHORT, "gen_tokens": 6, "agent_tasks": ["click-test"],
        "agent_episodes_per_task": 1}, "rollout": {"max_episode_steps": 1, "max_action_tokens": 8}}))
    result = notebook_run.run(["06"], params_file=str(params), root=tmp_path / "runs")
    assert result.ok, result.notebooks[0].error
    html = (result.run_dir / "06_gguf_export.html").read_text()
    m = read_metrics(result.run_dir)
    assert m["export/all_ok"] and set(m["export/files"]) == {"F16", "Q8_0", "Q5_K_M", "Q4_K_M"}
    assert m["export/checkpoint"] == str(checkpoints["lora"])
    assert m["export/lfm2_350m_size_check_max_abs_diff_mib"] < 0.1
    for quant, f in m["export/files"].items():
        assert f["agent_ok"] and 0 <= f["agent_success"] <= 1, quant
        assert f["agent_reference"] == ("HF" if quant == "F16" else "F16")
    assert html.index("Are the GGUF files sound") < html.index("run dir:")  # the verdict comes first
    assert "agent success F16" in html and "load_model" not in html  # llama.cpp's log is in run.log, not here
    assert "load_model" in (result.run_dir / "run.log").read_text()
    # independent of the exporter: llama.cpp's F16 logits match the adapter applied by peft, not the bare base
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from bgwork.models import load_tokenizer

    tok = load_tokenizer(str(checkpoints["full"]))
    ids = tok(SHORT[0], add_special_tokens=False)["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(checkpoints["full"], dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(input_ids=torch.tensor([ids])).logits[0, -1].double().numpy()
        peft = PeftModel.from_pretrained(base, str(checkpoints["lora"])).eval()
        lora_logits = peft(input_ids=torch.tensor([ids])).logits[0, -1].double().numpy()
    with gx.llama_server(m["export/files"]["F16"]["path"]) as server:
        got = gx.llama_next_logprobs(server, ids, len(lora_logits))
    assert gx.centered_cosine(got, lora_logits) > 0.9999
    assert gx.centered_cosine(got, base_logits) < gx.centered_cosine(got, lora_logits) - 1e-3


def test_bad_checkpoint_is_refused_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(gx.ExportError, match="neither a full checkpoint"):
        gx.export_checkpoint(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(gx.ExportError, match="quants"):
        gx.export_checkpoint(tmp_path / "empty", tmp_path / "out", quants=["Q3_K"])


@pytest.mark.llama_cpp
def test_export_bundled_smollm2(tmp_path):  # ~1 min on 2 cores: a 135M model converted and verified four times
    # SmolLM2's 576-wide rows fall back to Q5_0/Q5_1 and the model itself is a dequantized Q4_1: its K-quant
    # files measured cosine 0.980-0.993 against the HF model (top token always the same), hence 0.97 here.
    rows = gx.export_checkpoint("bundled:smollm2-135m-instruct", tmp_path, min_cosine=0.97)
    assert [r["quant"] for r in rows] == ["F16", "Q8_0", "Q5_K_M", "Q4_K_M"]
    assert all(r["ok"] for r in rows)
    assert rows[0]["greedy_same"] and rows[1]["greedy_same"]


def test_centered_cosine_ignores_the_log_softmax_shift():
    x = np.random.default_rng(0).normal(size=1000)
    assert gx.centered_cosine(x - np.log(np.exp(x).sum()), x) == pytest.approx(1.0)


def test_export_paths_resolve_from_the_project_root(tmp_path, monkeypatch):
    ckpt = tmp_path / "run" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    monkeypatch.chdir(PROJECT_ROOT / "notebooks")  # where notebook 06's kernel runs
    relative = os.path.relpath(ckpt, PROJECT_ROOT)
    settings = ExportParams(checkpoint=relative, out_dir=os.path.relpath(tmp_path / "g", PROJECT_ROOT))
    got, out = gx.export_target(settings, tmp_path)
    assert (Path(got).resolve(), out.resolve()) == (ckpt.resolve(), (tmp_path / "g").resolve())
    assert gx.export_target(ExportParams(checkpoint="tiny-random-lfm2"), tmp_path) == ("tiny-random-lfm2",
                                                                                       tmp_path / "gguf")
    with pytest.raises(Exception, match=r"export.checkpoint = outputs/runs/x/checkpoint-9: no such directory"):
        gx.export_target(ExportParams(checkpoint="outputs/runs/x/checkpoint-9"), tmp_path)


def test_missing_converter_says_to_run_setup_and_fetches_nothing(tmp_path, monkeypatch):
    from bgwork.gguf_export.convert import llama_cpp_dir

    monkeypatch.setenv("BGWORK_CACHE", str(tmp_path))
    with pytest.raises(gx.ExportError, match="not installed .* run `bash scripts/setup.sh`"):
        llama_cpp_dir()
    assert not (tmp_path / "wheels").exists()


def test_cosine_expectation_follows_the_models_rows():
    s = ExportParams()
    smollm2_q4 = {"quant": "Q4_K_M", "tensor_types": {"F32": 61, "Q5_0": 150, "Q6_K": 30, "Q8_0": 1}}
    lfm2_q4 = {"quant": "Q4_K_M", "tensor_types": {"F32": 10, "Q4_K": 40, "Q6_K": 12}}
    q8 = {"quant": "Q8_0", "tensor_types": {"F32": 61, "Q8_0": 211}}
    assert [gx.export.expected_cosine(r, s) for r in (smollm2_q4, lfm2_q4, q8)] == [0.97, 0.99, 0.99]
