"""Step 3 of the export: each file is loaded by xllamacpp (a prebuilt llama.cpp), generates greedily, and its
next-token distribution on fixed prompts is compared with the HF model's logits.

F16/Q8_0 (`EXACT_QUANTS`) must reproduce the HF model's greedy tokens, and every file the same top token; the
cosine similarity of the (mean-centred) next-token logits is reported against an expectation per model
(`export.min_cosine`, or `min_cosine_fallback` where rows are not multiples of 256).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np

from bgwork.gguf_export.errors import ExportError

EXACT_QUANTS = ("F16", "Q8_0")  # verification demands the same greedy output as the HF model


@contextlib.contextmanager
def llama_server(path: Path, n_ctx: int = 1024, threads: int | None = None):
    """xllamacpp's in-process llama.cpp server for one file; its log goes to the run's run.log (in a notebook).

    `threads`: ggml's threads spin while they wait, so more threads than free cores slows it many times over
    (SmolLM2, 2 busy cores: 20 tokens/s with 1 thread, 2.8 with 2)."""
    import xllamacpp as xlc

    from bgwork.runs import native_output_to_run_log

    p = xlc.CommonParams()
    p.model.path = str(path)
    p.n_ctx = n_ctx
    p.n_parallel = 1
    p.cpuparams.n_threads = threads or max(1, min(4, os.cpu_count() or 1))
    p.warmup = False
    with native_output_to_run_log():
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


def verify_gguf(path: Path, refs: list[dict], n_vocab: int, quant: str, min_cosine: float) -> dict:
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
    # The cosine is a figure with an expectation (`min_cosine`: the caller's, per model), not a verdict: what a
    # quantized agent must keep is its success (notebook 06's agent check). What must hold is the top token, and
    # for F16/Q8_0 the HF model's greedy tokens.
    ok = all(top_same) and (all(greedy_same) if quant in EXACT_QUANTS else True)
    return {"load_s": load_s, "min_cosine": min(cosines), "cosines": cosines, "top_token_same": all(top_same),
            "greedy_same": all(greedy_same), "generated_ids": texts, "cosine_expected": min_cosine,
            "cosine_as_expected": min(cosines) >= min_cosine, "ok": ok}
