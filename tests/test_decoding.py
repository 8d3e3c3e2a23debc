"""bgwork.decoding against transformers: same greedy tokens as plain `generate`, same log-probs as a plain forward.

Episodes are played the way the player plays them: a batch of sequences (two of them identical, like a GRPO
group's first prompt), then per turn the generated action plus some "env" tokens appended, with episodes
dropping out between turns (one mid-batch) and one row stopping early at an EOS token.
"""

from __future__ import annotations

import random

import pytest
import torch

from bgwork import models
from bgwork.config import RolloutParams
from bgwork.decoding import Decoder, batch_bucket, supports
from bgwork.envclient import EnvClient
from bgwork.rollout import EpisodePlayer


@pytest.fixture(scope="module")
def tiny():
    return models.resolve_model(models.TINY_RANDOM_LFM2)


@pytest.fixture(scope="module")
def smollm2():
    return models.resolve_model(models.BUNDLED_SMOLLM2)


def hf_greedy(model, seq, max_new, eos):
    """Plain transformers greedy generation of one unpadded sequence, cut after the first EOS."""
    out = model.generate(input_ids=torch.tensor([seq]), attention_mask=torch.ones(1, len(seq), dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new, eos_token_id=sorted(eos), pad_token_id=min(eos))
    ids = out[0, len(seq):].tolist()
    return ids[:next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))]


def first_sequences(vocab: int, rng: random.Random, n=5, shared=40):
    """n sequences sharing a `shared`-token prefix (system prompt), the first two identical (a group)."""
    prefix = [rng.randrange(3, vocab) for _ in range(shared)]
    seqs = [prefix + [rng.randrange(3, vocab) for _ in range(rng.randint(5, 30))] for _ in range(n - 1)]
    return [list(seqs[0])] + seqs


def play(decoder, model, seqs, rng, turns=3, check=None):
    """Turns of decoder.generate over the live sequences; env tokens appended; live set shrinks each turn."""
    vocab = model.config.vocab_size
    live = list(range(len(seqs)))
    outputs = {i: [] for i in live}
    for turn in range(turns):
        out = decoder.generate(model, [seqs[i] for i in live])
        if check:
            check(turn, [seqs[i] for i in live], out)
        for i, (ids, lps) in zip(live, out):
            outputs[i].append((len(seqs[i]), ids, lps))
            seqs[i] = seqs[i] + ids + [rng.randrange(3, vocab) for _ in range(rng.randint(3, 20))]
        live = [i for k, i in enumerate(live) if k != 1]  # the 2nd live episode finishes after each turn
    return outputs


@pytest.mark.heavy
@pytest.mark.parametrize("which, static_shapes", [("tiny", False), ("tiny", True), ("smollm2", False)])
def test_greedy_matches_plain_generate_across_turns(which, static_shapes, request):
    """static_shapes: the bucketed batch (padding rows) and cache windows (masked slots) that CUDA graphs
    replay, run eagerly on CPU."""
    model = request.getfixturevalue(which).model.eval()
    rng = random.Random(0)
    small = which == "smollm2"  # 135M parameters on 2 cores: keep the reference generations few and short
    seqs = first_sequences(model.config.vocab_size, rng, n=4 if small else 5, shared=24 if small else 40)
    max_new = 4 if small else 6
    # an "EOS" that the third sequence emits as its 3rd token, so that row stops early in the first turn
    eos = {hf_greedy(model, seqs[2], max_new, {model.config.vocab_size - 1})[2]}
    decoder = Decoder(eos_ids=eos, pad_id=0, temperature=1.0, greedy=True, max_new_tokens=max_new)
    decoder.static_shapes_on_cpu = static_shapes
    stopped_early = []

    def check(turn, batch, out):
        for seq, (ids, lps) in zip(batch, out):
            assert ids == hf_greedy(model, seq, max_new, eos), f"turn {turn}"
            assert len(lps) == len(ids) and all(lp <= 0 for lp in lps)
            stopped_early.append(len(ids) < max_new)

    play(decoder, model, seqs, rng, check=check)
    assert any(stopped_early)
    assert decoder.stats["carried_tokens"] > 0, "later turns must reuse the cache"
    assert decoder.stats["shared_prefix_tokens"] >= 24
    if static_shapes:  # 5 sequences -> 6 rows, windows in steps of 256 slots
        assert decoder.arena.rows == 6 and decoder.arena.slots % 256 == 0


def plain_logprobs(model, seq, start, ids, temperature):
    """Log-probs of `ids` at positions start.. of one unpadded forward over seq + ids (the trainer's recompute)."""
    full = torch.tensor([seq[:start] + ids])
    with torch.no_grad():
        logits = model(input_ids=full).logits[0, start - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]


@pytest.mark.parametrize("levers", [{}, {"carry_cache": False, "share_prefix": False}])
def test_sampled_logprobs_match_a_plain_forward(tiny, levers):
    model = tiny.model.eval()
    rng = random.Random(1)
    seqs = first_sequences(model.config.vocab_size, rng, n=6)
    torch.manual_seed(0)
    decoder = Decoder(eos_ids={2}, pad_id=0, temperature=0.7, greedy=False, max_new_tokens=8, **levers)
    outputs = play(decoder, model, seqs, rng)
    diffs = []
    for i, turns in outputs.items():
        for start, ids, lps in turns:
            diffs.append((plain_logprobs(model, seqs[i], start, ids, 0.7) - torch.tensor(lps)).abs().max().item())
    assert len(diffs) >= 10
    assert max(diffs) <= 1e-4, f"max |logp difference| {max(diffs):.2e}"
    # the two identical first prompts were sampled independently
    assert outputs[0][0][1] != outputs[1][0][1]


def test_cache_is_dropped_when_the_weights_change(tiny):
    model = tiny.model.eval()
    rng = random.Random(2)
    seqs = first_sequences(model.config.vocab_size, rng, n=3, shared=0)
    no_eos = {model.config.vocab_size - 1}
    decoder = Decoder(eos_ids=no_eos, pad_id=0, temperature=1.0, greedy=True, max_new_tokens=4)
    first = decoder.generate(model, seqs)
    seqs = [s + ids + [5, 6, 7] for s, (ids, _) in zip(seqs, first)]
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        with torch.no_grad():
            model.model.layers[1].feed_forward.w2.weight.mul_(3.0)  # what an optimizer step does: in place
        carried = decoder.stats["carried_tokens"]
        out = decoder.generate(model, seqs)
        assert decoder.stats["carried_tokens"] == carried, "K/V computed with the old weights were reused"
        assert [ids for ids, _ in out] == [hf_greedy(model, s, 4, no_eos) for s in seqs]
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])


def test_player_paths_agree(tiny):
    """EpisodePlayer.generate through bgwork.decoding and through transformers' generate: same greedy actions."""
    model = tiny.model.eval()
    seqs = first_sequences(model.config.vocab_size, random.Random(3), n=4)
    actions = {}
    for fast in (True, False):
        params = RolloutParams(max_action_tokens=6, fast_generation=fast)
        player = EpisodePlayer(EnvClient("http://127.0.0.1:9"), tiny.tokenizer, params, greedy=True,  # never called
                               temperature=1.0, max_completion_length=64, max_parallel=4)
        try:
            actions[fast] = player.generate(model, seqs)
            assert (player.decoder is not None) == fast
        finally:
            player.close()
    assert [a for a, _ in actions[True]] == [a for a, _ in actions[False]]
    for (_, fast_lps), (_, hf_lps) in zip(actions[True], actions[False]):
        assert max(abs(a - b) for a, b in zip(fast_lps, hf_lps)) <= 1e-4


def test_supported_models_and_buckets(tiny, smollm2):
    assert supports(tiny.model) and supports(smollm2.model)
    from transformers import GPT2Config, GPT2LMHeadModel

    assert not supports(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32)))
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 33, 64, 65, 100, 200)] == [1, 2, 3, 6, 48, 64, 96, 128, 256]


def test_lora_adapters_are_applied(tiny):
    """A peft LoRA model (what GRPO trains): the engine runs the adapters inside transformers' modules."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(
        r=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"],
        init_lora_weights=False)).eval()  # random A and B: the adapters change the output
    rng = random.Random(4)
    seqs = first_sequences(lora.config.vocab_size, rng, n=3)
    no_eos = {lora.config.vocab_size - 1}
    decoder = Decoder(eos_ids=no_eos, pad_id=0, temperature=1.0, greedy=True, max_new_tokens=5)

    def check(turn, batch, out):
        assert [ids for ids, _ in out] == [hf_greedy(lora, s, 5, no_eos) for s in batch], f"turn {turn}"

    play(decoder, lora, seqs, rng, turns=2, check=check)
    with lora.disable_adapter():
        base = [hf_greedy(lora, s, 5, no_eos) for s in seqs]
    assert base != [hf_greedy(lora, s, 5, no_eos) for s in seqs], "the adapters should change the greedy tokens"
