"""A GGUF file played as an agent: llama.cpp (xllamacpp) writes the actions, everything else is the HF path's.

    with GGUFPolicy(path, threads=1) as policy:                 # tokenizer: the GGUF's own (or pass the HF one)
        episodes = EpisodePlayer(client, policy.tokenizer, ...).play(policy, specs)

`rollout.EpisodePlayer` builds the same token sequences as for an HF model (the tokenizer's chat template,
`prompting.Turns`) and parses the output with the same `actions.parse_model_output`; only the token generation
goes through llama.cpp, from token ids to token ids, so no second chat template or tokenizer is involved. The
tokenizer is rebuilt by transformers from the file's own metadata (the one the converter copied from the HF
checkpoint: the same ids, checked in tests/test_evaluate.py). llama.cpp's log goes to the run's log
(`runs.native_output_to_run_log`), not the report.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


class GGUFPolicy:
    """A loaded GGUF model answering `generate_actions` (what EpisodePlayer calls for a non-torch model)."""

    def __init__(self, path: str | Path, tokenizer=None, threads: int = 1, n_ctx: int = 4096):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{path}: no such GGUF file")
        self.tokenizer = tokenizer if tokenizer is not None else gguf_tokenizer(self.path)
        self.threads, self.n_ctx = threads, n_ctx
        self._stack = contextlib.ExitStack()
        self.server = None

    def __enter__(self) -> "GGUFPolicy":
        from bgwork.gguf_export.verify import llama_server
        from bgwork.runs import native_output_to_run_log

        self._stack.enter_context(native_output_to_run_log())
        self.server = self._stack.enter_context(llama_server(self.path, n_ctx=self.n_ctx, threads=self.threads))
        return self

    def __exit__(self, *exc) -> None:
        self.server = None
        self._stack.close()

    def generate_actions(self, sequences: list[list[int]], max_tokens: int, eos_ids: set[int], greedy: bool,
                         temperature: float) -> list[tuple[list[int], list[float]]]:
        """One action per token sequence: (token ids up to and including the first EOS, their log-probs).

        llama.cpp stops at its end-of-generation tokens and returns that token last, as HF's generate does."""
        if self.server is None:
            raise RuntimeError("GGUFPolicy is not loaded: use it as `with GGUFPolicy(path) as policy:`")
        out = []
        for ids in sequences:
            request = {"prompt": ids, "n_predict": max_tokens, "n_probs": 1, "cache_prompt": True,
                       "temperature": 0.0 if greedy else temperature}
            if not greedy:
                request.update(top_k=0, top_p=1.0, min_p=0.0)  # plain sampling at the temperature, as in training
            r = self.server.handle_completions(request)
            if not isinstance(r, dict) or "choices" not in r:
                raise RuntimeError(f"llama.cpp completion failed for {self.path.name}: {str(r)[:500]}")
            content = r["choices"][0]["logprobs"]["content"]
            tokens, logps = [c["id"] for c in content], [float(c["logprob"]) for c in content]
            n = next((i + 1 for i, t in enumerate(tokens) if t in eos_ids), len(tokens))
            out.append((tokens[:n], logps[:n]))
        return out


def gguf_tokenizer(path: str | Path):
    """The HF tokenizer stored in a GGUF file's metadata (vocabulary, merges, special tokens, chat template),
    padding on the left like every tokenizer bgwork uses."""
    from transformers import AutoTokenizer

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
