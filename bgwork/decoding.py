"""bgwork's own batched generation for multi-turn rollouts: a cache carried across turns, a shared prefix
prefilled once, and (on CUDA) the decode step replayed as captured CUDA graphs.

`Decoder.generate(model, sequences)` keeps `EpisodePlayer.generate`'s contract: one action per sequence, as
(new token ids up to and including EOS, their log-probs under the temperature-scaled distribution they were
drawn from). What it adds:

- **Carried cache.** After a call, each row's cache (attention K/V and, for LFM2, the short-conv state) is kept
  with the tokens it holds. A later sequence that extends those tokens (the next turn of the same episode)
  prefills only what was appended. Rows that do not come back (finished episodes) are dropped at the next
  call; `reset()` drops all (the player calls it at the end of each wave: the weights change between waves).
- **Shared prefix.** Identical sequences (a GRPO group's first prompt) are prefilled once; the longest prefix
  that all new sequences share (system prompt and worked examples) is prefilled once for all of them.
- **Captured decode.** On CUDA the one-token decode step runs as a CUDA graph per (batch bucket, cache-window
  bucket): a shrinking wave reuses a larger bucket instead of capturing anew; graphs live as long as this
  object (the player's), i.e. they are captured once per process and batch/window bucket.

Layout: all rows of a call share one slot axis (an "arena" of `[rows, kv_heads, slots, head_dim]` per
attention layer). A call right-aligns each row's carried tokens at the same slot T0, then prefills the
appended tokens left-padded in the slots [T0, T0+S), then decodes one slot per step. Which slots hold a row's
tokens is a boolean `valid` mask; RoPE gets each token's true position, and the conv layers see each row's
own token order (the carried state is placed right before that row's first new token), so padding and holes
never reach the arithmetic. The arithmetic is transformers' own modules (norms, projections, MLPs, rotary
embedding, LoRA layers when present): only the cache handling and the attention call are written here.

Supported: LFM2 (`model_type` "lfm2") and Llama (SmolLM2). Others use transformers' `generate` (the player's
fallback), as does `rollout.fast_generation: false`.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SUPPORTED = ("lfm2", "llama")
MIN_SHARED_PREFIX = 16  # tokens; below this a separate prefill costs more than it saves
PREFILL_TOKENS = 32_768  # rows per prefill chunk = this // chunk width: bounds activation memory
GRAPH_SLOT_STEP = 256  # cache windows of captured decode steps are multiples of this


def _causal_lm(model):
    """The transformers CausalLM inside a peft wrapper (its LoRA layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model) -> bool:
    m = _causal_lm(model)
    return getattr(getattr(m, "config", None), "model_type", None) in SUPPORTED and hasattr(m, "model") \
        and hasattr(m.model, "layers") and hasattr(m, "lm_head")


def batch_bucket(n: int) -> int:
    """Captured batch sizes: powers of two and their 1.5x, so a shrinking wave reuses a few graphs."""
    b = 1
    while True:
        for c in (b, b * 3 // 2):
            if c >= n:
                return c
        b *= 2


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


# --- the model, walked through its own modules -------------------------------------------------------

class _Arch:
    """Where a model family keeps its parts. LFM2: attention or short-conv layers; Llama: attention only."""

    def __init__(self, model):
        m = _causal_lm(model)
        cfg, inner = m.config, m.model
        self.lfm2 = cfg.model_type == "lfm2"
        self.embed, self.lm_head, self.layers = inner.embed_tokens, m.lm_head, list(inner.layers)
        self.final_norm = inner.embedding_norm if self.lfm2 else inner.norm
        self.rotary = getattr(inner, "rotary_emb", None) or inner.pos_emb  # pos_emb: LFM2 in transformers < 5
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.attn_index, self.conv_index = {}, {}  # layer -> its cache slot
        for i, layer in enumerate(self.layers):
            if self.is_conv(layer):
                self.conv_index[i] = len(self.conv_index)
            else:
                self.attn_index[i] = len(self.attn_index)
        first_attn = next(self.attention(layer) for layer in self.layers if not self.is_conv(layer))
        self.head_dim, self.scaling = first_attn.head_dim, first_attn.scaling
        self.conv_width = cfg.conv_L_cache - 1 if self.lfm2 else 0  # inputs the conv state keeps
        self.hidden = cfg.hidden_size
        self.dtype, self.device = self.embed.weight.dtype, self.embed.weight.device

    def is_conv(self, layer) -> bool:
        return self.lfm2 and not layer.is_attention_layer

    def attention(self, layer):
        return layer.self_attn

    def norms(self, layer):
        return (layer.operator_norm, layer.ffn_norm) if self.lfm2 else (layer.input_layernorm,
                                                                        layer.post_attention_layernorm)

    def mlp(self, layer):
        return layer.feed_forward if self.lfm2 else layer.mlp

    def qk_norms(self, attn):
        return (attn.q_layernorm, attn.k_layernorm) if self.lfm2 else (None, None)

    def out_proj(self, attn):
        return attn.out_proj if self.lfm2 else attn.o_proj


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _repeat_kv(x, n: int):
    if n == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n, s, d).reshape(b, h * n, s, d)


@dataclass
class _View:
    """The cache of some rows over a window of slots: views into an arena, written in place."""

    k: list
    v: list
    conv: list
    valid: torch.Tensor


class _Arena:
    """Preallocated cache + decode inputs for up to `rows` rows and `slots` slots (static addresses for graphs)."""

    def __init__(self, arch: _Arch, rows: int, slots: int, vocab: int):
        dev, dt = arch.device, arch.dtype
        kv = (rows, arch.kv_heads, slots, arch.head_dim)
        self.rows, self.slots = rows, slots
        self.k = [torch.zeros(kv, dtype=dt, device=dev) for _ in arch.attn_index]
        self.v = [torch.zeros(kv, dtype=dt, device=dev) for _ in arch.attn_index]
        self.conv = [torch.zeros(rows, arch.hidden, arch.conv_width, dtype=dt, device=dev) for _ in arch.conv_index]
        self.valid = torch.zeros(rows, slots, dtype=torch.bool, device=dev)
        # decode-step inputs and output (what a captured graph reads and writes)
        self.ids = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        self.newv = torch.zeros(rows, 1, dtype=torch.bool, device=dev)
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)
        self.logits = torch.zeros(rows, vocab, dtype=torch.float32, device=dev)

    def view(self, r0: int, r1: int, slots: int) -> _View:
        return _View([k[r0:r1, :, :slots] for k in self.k], [v[r0:r1, :, :slots] for v in self.v],
                     [c[r0:r1] for c in self.conv], self.valid[r0:r1, :slots])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.k, *self.v, *self.conv, self.valid, self.logits])


def forward(arch: _Arch, ids, pos, newv, slots, c: _View):
    """Logits (float32) after the last input position of each row; writes the inputs' cache entries.

    ids, pos, newv: [rows, S] token ids, true positions, and which inputs are real (left padding is not);
    slots: [S] arena slots the inputs occupy (all rows alike); c: the rows' cache over a window that holds them.
    """
    S = ids.shape[1]
    x = arch.embed(ids)
    cos, sin = arch.rotary(x, pos)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    c.valid.index_copy_(1, slots, newv)
    L = c.valid.shape[1]
    allowed = c.valid[:, None, None, :]
    if S > 1:  # causal inside the new block; carried slots all lie before it
        allowed = allowed & (torch.arange(L, device=ids.device)[None, None, None, :] <= slots[None, None, :, None])
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    mask = torch.where(allowed, zero, torch.finfo(x.dtype).min)  # additive: a row with nothing valid stays finite
    if arch.conv_index:
        width = arch.conv_width
        # where each row's carried conv inputs go: right before its first real input
        conv_at = (S - newv.sum(1))[:, None] + torch.arange(width, device=ids.device)[None, :]
    for i, layer in enumerate(arch.layers):
        norm1, norm2 = arch.norms(layer)
        h = norm1(x)
        if i in arch.conv_index:
            h = _conv(layer.conv, h, newv, conv_at, c.conv[arch.conv_index[i]])
        else:
            j = arch.attn_index[i]
            h = _attention(arch, arch.attention(layer), h, cos, sin, mask, c.k[j], c.v[j], slots)
        x = x + h
        x = x + arch.mlp(layer)(norm2(x))
    x = arch.final_norm(x[:, -1:])
    return arch.lm_head(x)[:, 0].float()


def _attention(arch: _Arch, attn, h, cos, sin, mask, k_cache, v_cache, slots):
    rows, S, _ = h.shape
    D, H, Hkv = arch.head_dim, arch.heads, arch.kv_heads
    q = attn.q_proj(h).view(rows, S, H, D)
    k = attn.k_proj(h).view(rows, S, Hkv, D)
    v = attn.v_proj(h).view(rows, S, Hkv, D)
    q_norm, k_norm = arch.qk_norms(attn)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k_cache.index_copy_(2, slots, k)
    v_cache.index_copy_(2, slots, v)
    if S == 1:
        # grouped-query decode without copying K/V per head: each KV head attends with its group's queries
        o = F.scaled_dot_product_attention(q.reshape(rows, Hkv, H // Hkv, D), k_cache, v_cache, attn_mask=mask,
                                           scale=arch.scaling)
        o = o.reshape(rows, 1, H * D)
    else:
        o = F.scaled_dot_product_attention(q, _repeat_kv(k_cache, H // Hkv), _repeat_kv(v_cache, H // Hkv),
                                           attn_mask=mask, scale=arch.scaling)
        o = o.transpose(1, 2).reshape(rows, S, H * D)
    return arch.out_proj(attn)(o)


def _conv(conv, h, newv, conv_at, state):
    """LFM2's gated short convolution, with each row's carried inputs (`state`) placed before its real inputs."""
    rows, S, _ = h.shape
    b, c, x = conv.in_proj(h).transpose(-1, -2).chunk(3, dim=-2)
    bx = b * x
    width = state.shape[-1]
    seq = torch.cat([bx.new_zeros(rows, bx.shape[1], width), bx], dim=-1)
    seq = seq.scatter(2, conv_at[:, None, :].expand(rows, bx.shape[1], width), state)
    out = F.conv1d(seq, conv.conv.weight, conv.conv.bias, groups=bx.shape[1])
    state.copy_(seq[:, :, S:])  # the last `width` inputs of each row (unchanged for a row with none)
    y = (c * out).transpose(-1, -2).contiguous()
    return conv.out_proj(y)


# --- the engine ---------------------------------------------------------------------------------------

class Decoder:
    """Batched sampling with a carried cache; one per EpisodePlayer (see the module docstring)."""

    def __init__(self, *, eos_ids, pad_id: int | None, temperature: float, greedy: bool, max_new_tokens: int,
                 carry_cache: bool = True, share_prefix: bool = True, cuda_graphs: bool = True,
                 compile_decode: bool = False):
        self.eos_ids = sorted(eos_ids)
        self.pad_id = pad_id if pad_id is not None else self.eos_ids[0]
        self.temperature, self.greedy, self.max_new_tokens = temperature, greedy, max_new_tokens
        self.carry_cache, self.share_prefix = carry_cache, share_prefix
        self.cuda_graphs, self.compile_decode = cuda_graphs, compile_decode
        self.arch: _Arch | None = None
        self.arena: _Arena | None = None
        self.rows: list[list[int]] = []  # per arena row: the tokens its cache holds (carried rows only)
        self.used = 0  # arena slots in use by those rows
        self._model_key = None  # (model id, parameter addresses): graphs and arena belong to one set of weights
        self._versions = None  # parameters' in-place update counters when the rows were cached
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._pool = None
        self._step = None  # forward, or its torch.compile'd version
        self._rng: torch.Generator | None = None  # sampling's own generator (see _uniform)
        self.static_shapes_on_cpu = False
        self.stats = {"calls": 0, "prefill_tokens": 0, "carried_tokens": 0, "shared_prefix_tokens": 0,
                      "decode_steps": 0, "graphs": 0, "capture_s": 0.0, "compile_s": 0.0}

    @classmethod
    def for_player(cls, player) -> Decoder:
        """Configured from an EpisodePlayer: its EOS ids, sampling settings and `rollout` params."""
        p = player.params
        return cls(eos_ids=player.turns.eos_ids, pad_id=player.tokenizer.pad_token_id,
                   temperature=player.temperature, greedy=player.greedy, max_new_tokens=p.max_action_tokens,
                   carry_cache=p.carry_kv_cache, share_prefix=p.share_prompt_prefill, cuda_graphs=p.cuda_graphs,
                   compile_decode=p.compile_decode)

    # --- lifecycle ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every row's cache (keeps the arena and graphs). Call when the episodes are over."""
        self.rows, self.used = [], 0

    def close(self) -> None:
        self.reset()
        self._drop_graphs()
        self.arena = self.arch = self._model_key = self._step = None

    def _drop_graphs(self) -> None:
        """Forget the captured graphs and their memory pool: a pool whose graphs are all gone must not be captured
        into again (PyTorch 2.11 then fails an allocator assert, and the failed capture leaves the CUDA RNG
        unusable), so the next capture starts a fresh one."""
        self._graphs.clear()
        self._pool = None

    def _bind(self, model) -> None:
        """(Re)build what depends on the model; drop graphs if the weights moved, rows if they changed."""
        params = list(model.parameters())
        key = (id(model), hash(tuple(p.data_ptr() for p in params)))
        if key != self._model_key:
            self.close()
            self.arch, self._model_key = _Arch(model), key
            self._step = forward
        versions = sum(p._version for p in params)
        if versions != self._versions:  # an optimizer step happened in between: cached K/V are stale
            self.reset()
            self._versions = versions

    def _on_cuda(self) -> bool:
        return self.arch.device.type == "cuda"

    def _static_shapes(self) -> bool:
        """Bucketed rows and windows: what captured graphs need (tests set `static_shapes_on_cpu` to run
        those same shapes eagerly on CPU)."""
        return self.cuda_graphs and (self._on_cuda() or self.static_shapes_on_cpu)

    # --- generate ----------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, model, sequences: list[list[int]]) -> list[tuple[list[int], list[float]]]:
        if not sequences:
            return []
        if any(not s for s in sequences):
            raise ValueError("generate: every sequence needs at least one token")
        was_training = model.training
        model.eval()
        try:
            self._bind(model)
            self.stats["calls"] += 1
            return self._generate(model, [list(s) for s in sequences])
        finally:
            model.train(was_training)

    def _generate(self, model, sequences):
        vocab = self.arch.lm_head.weight.shape[0]
        # 1. identical sequences (a group's first prompt) are prefilled once
        if self.share_prefix:
            first: dict[tuple, int] = {}
            rep = [first.setdefault(tuple(s), len(first)) for s in sequences]
            uniq = [None] * len(first)
            for s, u in zip(sequences, rep):
                uniq[u] = s
        else:
            rep, uniq = list(range(len(sequences))), sequences
        # 2. which carried row each one extends
        src = self._match(uniq) if self.carry_cache else [-1] * len(uniq)
        carried = [len(self.rows[r]) if r >= 0 else 0 for r in src]
        # 3. the prefix every new sequence shares, prefilled once
        new = [u for u, r in enumerate(src) if r < 0]
        shared = self._shared_prefix([uniq[u] for u in new]) if self.share_prefix and len(new) > 1 else []
        for u in new:
            carried[u] = len(shared)
        U, B = len(uniq), len(sequences)
        T0 = max(carried)
        S = max(len(s) - n for s, n in zip(uniq, carried))
        self._fit(max(U, B), T0 + S + self.max_new_tokens, vocab)
        self._place(src, carried, T0, shared, new)
        # 4. prefill what each row appends
        logits = self._prefill(uniq, carried, T0, S)
        self.stats["carried_tokens"] += sum(n for n, r in zip(carried, src) if r >= 0)
        # 5. copies for duplicates, then decode
        pos = torch.tensor([len(s) for s in uniq], device=self.arch.device)
        if U < B or rep != list(range(B)):
            idx = torch.tensor(rep, device=self.arch.device)
            self._copy_rows(idx, U, T0 + S)
            logits, pos = logits[idx], pos[idx]
        tokens, logps, steps = self._decode(logits, pos, B, T0 + S)
        # 6. results, and what each row's cache now holds
        results, rows = [], []
        for s, row_ids, row_lps in zip(sequences, tokens.tolist(), logps.tolist()):
            n = next((i + 1 for i, t in enumerate(row_ids[:steps]) if t in self.eos_ids), steps)
            results.append((row_ids[:n], row_lps[:n]))
            rows.append(s + row_ids[:n - 1])  # the last token was sampled, not fed back
        if self.carry_cache:
            self.rows, self.used = rows, T0 + S + steps - 1
        else:
            self.reset()
        return results

    def _match(self, seqs) -> list[int]:
        """Per sequence, the carried row whose tokens it strictly extends, or -1. Rows keep the player's order,
        so a forward scan finds each in O(1) comparisons; a full scan covers any other order."""
        rows, out, p = self.rows, [], 0
        for s in seqs:
            found = -1
            for r in itertools.chain(range(p, len(rows)), range(p)):
                n = len(rows[r])
                if n < len(s) and s[n - 1] == rows[r][-1] and s[:n] == rows[r]:
                    found, p = r, r + 1
                    break
            out.append(found)
        return out

    @staticmethod
    def _shared_prefix(seqs) -> list[int]:
        if not seqs:
            return []
        prefix = os.path.commonprefix(seqs)[: min(map(len, seqs)) - 1]  # every row keeps >= 1 token to prefill
        return prefix if len(prefix) >= MIN_SHARED_PREFIX else []

    # --- the arena ---------------------------------------------------------------------------------

    def _fit(self, rows: int, slots: int, vocab: int) -> None:
        """Make the arena hold `rows` x `slots`; a larger one keeps the carried rows (copied) and drops graphs."""
        a = self.arena
        graphs = self._static_shapes()
        if a is not None and a.rows >= rows and a.slots >= slots:
            return
        need_rows = batch_bucket(rows) if graphs else rows
        need_slots = _round_up(slots + slots // 2, GRAPH_SLOT_STEP) if graphs else slots
        if a is not None:
            need_rows, need_slots = max(need_rows, a.rows), max(need_slots, a.slots)
        new = _Arena(self.arch, need_rows, need_slots, vocab)
        if a is not None and self.rows:
            n, t = len(self.rows), self.used
            for dst, src in zip([*new.k, *new.v, *new.conv, new.valid], [*a.k, *a.v, *a.conv, a.valid]):
                if src.dim() == 4:
                    dst[:n, :, :t] = src[:n, :, :t]
                elif src is a.valid:
                    dst[:n, :t] = src[:n, :t]
                else:
                    dst[:n] = src[:n]
        self._drop_graphs()
        self.arena = new
        log.info("decoding arena: %d rows x %d slots, %.0f MiB", need_rows, need_slots, new.nbytes() / 2**20)

    def _place(self, src, carried, T0, shared, new) -> None:
        """Arena rows 0..U-1 := the sequences' carried caches right-aligned at slot T0 (new rows: the shared
        prefix, or nothing)."""
        a, dev, U = self.arena, self.arch.device, len(src)
        old = [r for r in src if r >= 0]
        if old:
            q = torch.tensor([max(r, 0) for r in src], device=dev)
            has = torch.tensor([r >= 0 for r in src], device=dev)
            t_old = self.used
            v_old = a.valid.index_select(0, q)[:, :t_old] & has[:, None]
            n = torch.tensor(carried, device=dev) * has
            # the i-th valid slot of a row goes to T0 - n + i; invalid ones to a dump column
            dest = torch.where(v_old, T0 - n[:, None] + v_old.cumsum(1) - 1, T0)
            gather = torch.zeros(U, T0 + 1, dtype=torch.long, device=dev)
            gather.scatter_(1, dest, torch.arange(t_old, device=dev).expand(U, t_old).contiguous())
            gather = gather[:, :T0]
            for k in [*a.k, *a.v]:
                moved = torch.gather(k[:, :, :t_old].index_select(0, q), 2,
                                     gather[:, None, :, None].expand(U, k.shape[1], T0, k.shape[3]))
                k[:U, :, :T0] = moved
            for c in a.conv:
                c[:U] = c.index_select(0, q) * has[:, None, None].to(c.dtype)
            a.valid[:U] = False
            a.valid[:U, :T0] = torch.arange(T0, device=dev)[None, :] >= (T0 - n)[:, None]
        else:
            a.valid[:U] = False
            for c in a.conv:
                c[:U] = 0
        if shared:
            self._place_shared(shared, new, T0)

    def _place_shared(self, shared, new, T0) -> None:
        """Prefill the shared prefix once (its own small cache), then copy it into every new row."""
        a, dev, p = self.arena, self.arch.device, len(shared)
        one = _Arena(self.arch, 1, p, 1)
        ids = torch.tensor([shared], device=dev)
        forward(self.arch, ids, torch.arange(p, device=dev)[None], torch.ones(1, p, dtype=torch.bool, device=dev),
                torch.arange(p, device=dev), one.view(0, 1, p))
        rows = torch.tensor(new, device=dev)
        for dst, src in zip([*a.k, *a.v], [*one.k, *one.v]):
            dst[rows, :, T0 - p:T0] = src[0]
        for dst, src in zip(a.conv, one.conv):
            dst[rows] = src[0]
        a.valid[rows, T0 - p:T0] = True
        self.stats["shared_prefix_tokens"] += p
        self.stats["prefill_tokens"] += p

    def _copy_rows(self, idx, U, slots) -> None:
        a = self.arena
        B = idx.numel()
        for t in [*a.k, *a.v]:
            t[:B, :, :slots] = t[:U, :, :slots].index_select(0, idx)
        for t in a.conv:
            t[:B] = t[:U].index_select(0, idx)
        a.valid[:B] = a.valid[:U].index_select(0, idx)

    # --- prefill and decode ------------------------------------------------------------------------

    def _prefill(self, uniq, carried, T0, S):
        """Each row's appended tokens, left-padded into slots [T0, T0+S); logits after each row's last token."""
        dev = self.arch.device
        U = len(uniq)
        ids = torch.full((U, S), self.pad_id, dtype=torch.long)
        pos = torch.zeros(U, S, dtype=torch.long)
        newv = torch.zeros(U, S, dtype=torch.bool)
        for u, (s, n) in enumerate(zip(uniq, carried)):
            m = len(s) - n
            ids[u, S - m:] = torch.tensor(s[n:])
            pos[u, S - m:] = torch.arange(n, len(s))
            newv[u, S - m:] = True
        ids, pos, newv = ids.to(dev), pos.to(dev), newv.to(dev)
        slots = torch.arange(T0, T0 + S, device=dev)
        chunk = max(1, PREFILL_TOKENS // max(S, 1))
        out = [forward(self.arch, ids[r:r + chunk], pos[r:r + chunk], newv[r:r + chunk], slots,
                       self.arena.view(r, min(r + chunk, U), T0 + S)) for r in range(0, U, chunk)]
        self.stats["prefill_tokens"] += int(sum(len(s) - n for s, n in zip(uniq, carried)))
        return torch.cat(out)

    def _sample(self, logits):
        """(token, its log-prob) per row, from softmax(logits / temperature). Sampling inverts the CDF with one
        uniform number per row: torch.multinomial draws one exponential per vocabulary entry, which on CPU
        cost more than the tiny model's whole decode step."""
        scaled = logits if self.temperature == 1.0 else logits / self.temperature
        lse = torch.logsumexp(scaled, dim=-1, keepdim=True)
        if self.greedy:
            tok = logits.argmax(-1)
        else:
            cdf = torch.exp(scaled - lse).cumsum_(-1)
            u = self._uniform(cdf.shape[0], cdf.device) * cdf[:, -1:]
            tok = torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=cdf.shape[-1] - 1)
        return tok, (scaled.gather(-1, tok[:, None]) - lse)[:, 0]

    def _uniform(self, n: int, device) -> torch.Tensor:
        """n uniform numbers from a generator of the decoder's own, seeded from torch's global one (so
        torch.manual_seed still makes runs repeat): a CUDA graph capture that fails can leave the default CUDA
        generator unusable, and sampling must survive falling back to the eager step."""
        if self._rng is None or self._rng.device != torch.device(device):
            self._rng = torch.Generator(device=device)
            self._rng.manual_seed(int(torch.randint(0, 2**62, (1,))))
        return torch.rand(n, 1, device=device, generator=self._rng)

    def _decode(self, logits, pos, B, start):
        """Up to max_new_tokens per row; a row stops feeding its cache after EOS. Returns (tokens, logps, steps)."""
        a, dev, A = self.arena, self.arch.device, self.max_new_tokens
        tokens = torch.zeros(B, A, dtype=torch.long, device=dev)
        logps = torch.zeros(B, A, dtype=torch.float32, device=dev)
        eos = torch.tensor(self.eos_ids, device=dev)
        graphs = self._static_shapes()
        rows = batch_bucket(B) if graphs else B
        check_every = 4 if self._on_cuda() else 1  # on CUDA, `alive.any()` waits for the GPU
        tok, lp = self._sample(logits)
        tokens[:, 0], logps[:, 0] = tok, lp
        alive = ~torch.isin(tok, eos)
        a.pos[:B, 0] = pos
        a.newv[B:rows] = False
        steps = 1
        for step in range(1, A):
            if step % check_every == 0 and not bool(alive.any()):
                break
            slot = start + step - 1
            a.ids[:B, 0] = tok
            a.newv[:B, 0] = alive
            a.slot.fill_(slot)
            window = min(_round_up(slot + 1, GRAPH_SLOT_STEP), a.slots) if graphs else slot + 1
            logits = self._decode_step(rows, window, graphs)[:B]
            a.pos[:B] += 1
            tok, lp = self._sample(logits)
            tokens[:, step], logps[:, step] = tok, lp
            alive &= ~torch.isin(tok, eos)
            steps += 1
        self.stats["decode_steps"] += steps - 1
        return tokens, logps, steps

    def _decode_step(self, rows: int, window: int, graphs: bool):
        a = self.arena
        if not graphs or not self.cuda_graphs:
            return forward(self.arch, a.ids[:rows], a.pos[:rows], a.newv[:rows], a.slot, a.view(0, rows, window))
        if not self._on_cuda():
            self._step_body(rows, window)
            return a.logits[:rows]
        g = self._graphs.get((rows, window))
        if g is None:
            try:
                g = self._capture(rows, window)
            except Exception as e:  # noqa: BLE001  (never lose a rollout to an optimisation: say so, go on without it)
                what = "torch.compile" if self._step is not forward else "CUDA graph capture"
                log.warning("decode step: %s failed (%s: %s); continuing without it", what, type(e).__name__, e)
                self.stats["fallback"] = f"{what}: {type(e).__name__}: {e}"
                self._step, self.compile_decode = forward, False
                self._drop_graphs()
                if what == "CUDA graph capture":
                    self.cuda_graphs = False
                return self._decode_step(rows, window, graphs)
        g.replay()
        return a.logits[:rows]

    def _step_body(self, rows: int, window: int) -> None:
        a = self.arena
        a.logits[:rows].copy_(self._step(self.arch, a.ids[:rows], a.pos[:rows], a.newv[:rows], a.slot,
                                          a.view(0, rows, window)))

    def _capture(self, rows: int, window: int):
        """Record one decode step. The warm-up run writes no cache entry (all inputs marked padding), so the
        rows' caches are intact; the replay that follows overwrites the slot it touched."""
        t0 = time.perf_counter()
        a = self.arena
        if self.compile_decode and self._step is forward:
            self._step = torch.compile(forward, dynamic=True)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        newv = a.newv[:rows].clone()
        a.newv[:rows] = False
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                tc = time.perf_counter()
                self._step_body(rows, window)
                torch.cuda.synchronize()
                if self._step is not forward and self.stats["compile_s"] == 0.0:
                    self.stats["compile_s"] = time.perf_counter() - tc
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self._pool):
                self._step_body(rows, window)
        finally:
            a.newv[:rows] = newv
        self._graphs[(rows, window)] = g
        self.stats["graphs"] += 1
        self.stats["capture_s"] += time.perf_counter() - t0
        return g
