"""Rollout generation throughput: one episode at a time (batch 1, the original project) vs bgwork's batched waves,
and (`--levers`, issue 11) transformers' `generate` vs bgwork.decoding with each of its levers.

    .venv/bin/python benchmarks/rollout_generation.py --tiny                  # CPU smoke test, seconds
    .venv/bin/python benchmarks/rollout_generation.py --prepare-carry .bench  # for a GPU box with no network
    python3 benchmarks/rollout_generation.py --tokenizer .bench/tokenizer --site .bench/site --static --no-cudnn-sdp
    python3 benchmarks/rollout_generation.py --tokenizer .bench/tokenizer --site .bench/site --levers \
        --batch-sizes 64 128 256 --group-size 8 --json $OUT/levers.json                # issue 11, one command

Every generation goes through `bgwork.rollout.EpisodePlayer.generate(model, sequences)`, the method the GRPO
rollouts use, at temperature 1. The model has LFM2-350M's shape with random weights (bf16 on CUDA, fp32 on
CPU); `--tiny` swaps in the tiny test LFM2, `--model SPEC` a real bgwork model (e.g. the bundled SmolLM2).
Episodes are synthetic but shaped like MiniWoB ones: a first prompt of 500-700 tokens (bgwork's system prompt,
goal, accessibility tree), `--turns` turns of `--action-tokens` new tokens, and ~150 tokens of environment text
appended between turns, the sequence re-sent whole each turn as bgwork does. Random weights almost never emit
EOS, so every turn generates exactly `--action-tokens` tokens: the work per episode is fixed.

Without `--levers` (transformers' `generate` path, `rollout.fast_generation: false`):
(a) baseline: episodes one after another, each turn a batch-1 generate.
(b) bgwork: a wave of B episodes, each turn one batched generate over every live episode.
`first` is the first wave at a batch size (after a process warm-up), `warm` the median of the next `--reps`.
`--static` repeats (b) with `cache_implementation="static"` (transformers then compiles the decode step) and
checks that the sampled log-probs still match a plain forward pass over each finished episode.
`--no-cudnn-sdp` keeps attention off SDPA's cuDNN backend, which torch 2.11 picks on an H100 and which made
every first encounter of a sequence length slow there (docs/benchmarks.md: batch-1 episodes 2.7x slower).

With `--levers`, in one process: the plain single-turn transformers `generate` with a static cache (B=64,
512-token prompts, 24 new tokens: the reference of issue 11), then for each mode of MODES (`--modes`) waves at
each batch size plus the log-prob check: "before" (transformers' `generate`, dynamic cache), "after"
(bgwork.decoding with all levers), bgwork.decoding with no lever and with each lever alone (KV carried across
turns, prefix shared across a group, decode step captured as CUDA graphs), the old static-cache path, and
"after" with the decode step compiled. `--group-size` makes consecutive episodes share their first prompt, as
a GRPO group of num_generations does. A mode that fails is reported and the others go on; after `--budget-s`
the remaining rows are skipped (and listed as such). The last lines are a markdown table.

A GPU box without network needs the SmolLM2 tokenizer and, because `bgwork.rollout` imports `bgwork.actions`
(BrowserGym -> Playwright, gymnasium), those pure-Python packages: `--prepare-carry DIR` copies them from this
venv (Playwright without its 100 MB browser driver, which importing never touches) and downloads greenlet's
CPython 3.12 wheel; `--site DIR` appends DIR to sys.path, so the box's own packages win. A package that this
venv no longer has (or bgwork no longer imports) is left out of the carry and named.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LFM2_ATTENTION_LAYERS = [2, 5, 8, 10, 12, 14]  # LFM2-350M: the other 10 of 16 layers are short convolutions
CARRY_PACKAGES = ["browsergym", "playwright", "pyee", "trio", "outcome", "sortedcontainers", "attr", "attrs",
                  "gymnasium", "farama_notifications", "cloudpickle", "sniffio", "idna",
                  "pyparsing"]  # browsergym.core.action.parsers imports it; a bare torch image need not have it
GREENLET_PIN = "greenlet==3.0.3"  # playwright 1.44 pins it; compiled, so fetched for the GPU box's CPython 3.12
WORDS = ("submit cancel search name email address city country date phone next previous ok yes no login "
         "password remember forgot home about contact products price cart checkout help settings profile").split()


# --- what travels to a GPU box -----------------------------------------------------------------------

def prepare_carry(dest: Path) -> None:
    """Tokenizer files + the pure-Python import closure of bgwork.rollout that a bare torch box lacks."""
    from bgwork.models import BUNDLED_SMOLLM2, model_path

    tok_dir = dest / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    for f in Path(model_path(BUNDLED_SMOLLM2)).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(f, tok_dir / f.name)
    site = dest / "site"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    missing = []
    for name in CARRY_PACKAGES:
        try:
            src = Path(__import__(name).__path__[0])
        except ImportError:
            missing.append(name)
            continue
        shutil.copytree(src, site / name, ignore=shutil.ignore_patterns("__pycache__", "driver", "miniwob"))
    if missing:
        print(f"not in this venv, left out of the carry: {missing}")
    wheels = dest / "wheels"
    wheels.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
                    "--platform", "manylinux2014_x86_64", "-d", str(wheels), GREENLET_PIN], check=True)
    for whl in wheels.glob("greenlet-*.whl"):
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(site)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file() and wheels not in f.parents)
    print(f"carry folder {dest}: tokenizer + {len(CARRY_PACKAGES) - len(missing)} packages + greenlet cp312, "
          f"{size / 2**20:.1f} MiB (wheels/ need not travel)")


# --- model and synthetic episodes --------------------------------------------------------------------

def build_model(tiny: bool, vocab_size: int, device: str):
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    if tiny:  # same sizes as bgwork.models' tiny-random-lfm2
        config = Lfm2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            layer_types=["conv", "full_attention"], num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=8192, block_auto_adjust_ff_dim=False)
    else:  # LFM2-350M's public config.json
        config = Lfm2Config(vocab_size=65536, hidden_size=1024, intermediate_size=6656, num_hidden_layers=16,
                            layer_types=["full_attention" if i in LFM2_ATTENTION_LAYERS else "conv" for i in range(16)],
                            num_attention_heads=16, num_key_value_heads=8, block_auto_adjust_ff_dim=True,
                            block_multiple_of=256, block_ffn_dim_multiplier=1.0, conv_L_cache=3, norm_eps=1e-5,
                            tie_word_embeddings=True, max_position_embeddings=128000,
                            bos_token_id=1, eos_token_id=7, pad_token_id=0)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = Lfm2ForCausalLM(config).to(dtype)
    return model.eval()


def _axtree(rng: random.Random, lines: int) -> str:
    """An accessibility tree in BrowserGym's text format, with bids, roles and names."""
    roles = ["button", "textbox", "link", "checkbox", "StaticText", "option", "combobox", "heading"]
    out = ["RootWebArea 'Task', focused"]
    for i in range(lines):
        role, words = rng.choice(roles), " ".join(rng.choices(WORDS, k=rng.randint(1, 4)))
        out.append(f"{'  ' * rng.randint(1, 3)}[{13 + i}] {role} '{words.title()}'"
                   + (", clickable" if role in ("button", "link") else ""))
    return "\n".join(out)


def _fit(make_ids, target: int) -> list[int]:
    """The token ids of make_ids(lines) with the smallest number of axtree lines reaching `target` tokens."""
    lo, hi = 0, 1
    while len(make_ids(hi)) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if len(make_ids(mid)) < target else (lo, mid)
    return make_ids(hi)


@dataclass
class SyntheticEpisode:
    prompt_ids: list[int]
    next_turns: list[str]  # user text of the observations after each action
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    action_mask: list[int] = field(default_factory=list)  # 1 = generated by the model (bgwork's env_mask)


def make_episodes(turns_api, n: int, seed: int, turns: int, prompt_range=(500, 700), turn_tokens=150, group=1):
    """n episodes; consecutive runs of `group` share their first prompt (a GRPO group: one task seed,
    num_generations episodes), each with its own later pages."""
    from bgwork.prompting import user_message

    tok = turns_api.tokenizer
    episodes, firsts = [], {}
    for k in range(n):
        g = k // group
        rng = random.Random(seed * 100_003 + g)  # group=1: g == k, the same episodes as before groups existed
        goal = f"Click on the \"{rng.choice(WORDS).title()}\" button, then submit the form."
        tree = _axtree(rng, 400)
        if g not in firsts:
            firsts[g] = _fit(lambda m: turns_api.first_prompt(user_message(
                {"goal": goal, "axtree_txt": "\n".join(tree.splitlines()[:m])}, tok, 10_000)),
                rng.randint(*prompt_range))
        else:
            rng.randint(*prompt_range)
        first = list(firsts[g])
        if group > 1:
            rng = random.Random(f"{seed}:{k}")
        nexts = []
        for t in range(turns - 1):
            small = _axtree(rng, 60)
            def user(m):
                return user_message({"goal": goal, "axtree_txt": "\n".join(small.splitlines()[:m])}, tok, 10_000,
                                    f"click('{13 + t}')", None)
            lo, hi = 0, 60  # the fewest lines reaching turn_tokens (token count grows with lines), else 60
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if len(turns_api.next_turn(user(mid), True)) < turn_tokens else (lo, mid)
            nexts.append(user(hi))
        episodes.append(SyntheticEpisode(first, nexts))
    return episodes


_EPISODES: dict[tuple, list[tuple[list[int], list[str]]]] = {}


def cached_episodes(turns_api, n: int, seed: int, turns: int, prompt_range, turn_tokens, group):
    """make_episodes, built once per process (tokenizing them takes seconds per wave); fresh objects each call."""
    key = (id(turns_api.tokenizer), n, seed, turns, tuple(prompt_range), turn_tokens, group)
    if key not in _EPISODES:
        _EPISODES[key] = [(e.prompt_ids, e.next_turns) for e in
                          make_episodes(turns_api, n, seed, turns, prompt_range, turn_tokens, group)]
    return [SyntheticEpisode(list(p), list(t)) for p, t in _EPISODES[key]]


# --- playing ------------------------------------------------------------------------------------------

def play(player, model, episodes: list[SyntheticEpisode], turns: int) -> dict:
    """All episodes as one wave: per turn one player.generate over every episode, then the env text appended."""
    widths, pad_frac, new_tokens = [], [], 0
    t0, c0 = time.perf_counter(), time.process_time()
    for turn in range(turns):
        seqs = [e.prompt_ids + e.completion_ids for e in episodes]
        w = max(map(len, seqs))
        widths.append(w)
        pad_frac.append(1 - sum(map(len, seqs)) / (w * len(seqs)))
        outputs = player.generate(model, seqs)
        for e, (ids, logps) in zip(episodes, outputs):
            e.completion_ids += ids
            e.logprobs += logps
            e.action_mask += [1] * len(ids)
            new_tokens += len(ids)
            if turn < turns - 1:
                env = player.turns.next_turn(e.next_turns[turn], player.turns.ends_with_eos(ids))
                e.completion_ids += env
                e.logprobs += [0.0] * len(env)
                e.action_mask += [0] * len(env)
    _sync()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if getattr(player, "decoder", None) is not None:
        player.decoder.reset()  # end of the wave, as EpisodePlayer does
    return {"seconds": seconds, "cpu_s": cpu, "new_tokens": new_tokens, "episodes": len(episodes),
            "widths": widths, "pad_fraction": [round(p, 3) for p in pad_frac]}


def play_one_at_a_time(player, model, episodes, turns: int) -> list[dict]:
    return [play(player, model, [e], turns) for e in episodes]


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rates(runs: list[dict]) -> dict:
    s = sum(r["seconds"] for r in runs)
    return {"seconds": s, "cpu_s": sum(r["cpu_s"] for r in runs), "episodes": sum(r["episodes"] for r in runs),
            "new_tokens": sum(r["new_tokens"] for r in runs),
            "tok_per_s": sum(r["new_tokens"] for r in runs) / s, "episodes_per_s": sum(r["episodes"] for r in runs) / s}


@dataclass
class Workload:
    """The synthetic episodes' shape: first-prompt length range, env tokens per later turn, group size."""

    prompt_range: tuple[int, int] = (500, 700)
    turn_tokens: int = 150
    group: int = 1

    def episodes(self, turns_api, n: int, seed: int, turns: int) -> list[SyntheticEpisode]:
        return cached_episodes(turns_api, n, seed, turns, self.prompt_range, self.turn_tokens, self.group)


def measure_batched(player, model, tag, sizes, reps, turns, seed, log, work: Workload | None = None) -> list[dict]:
    work = work or Workload()
    rows = []
    for b in sizes:
        first = rates([play(player, model, work.episodes(player.turns, b, seed + 1000 * b, turns), turns)])
        warm_runs = [play(player, model, work.episodes(player.turns, b, seed + 1000 * b + r + 1, turns), turns)
                     for r in range(reps)]
        warm = rates([sorted(warm_runs, key=lambda r: r["seconds"])[len(warm_runs) // 2]])  # median wave
        rows.append({"mode": tag, "batch": b, "first": first, "warm": warm,
                     "widths": warm_runs[0]["widths"], "pad_fraction": warm_runs[0]["pad_fraction"]})
        log(rows[-1])
    return rows


# --- log-prob check -----------------------------------------------------------------------------------

def logprob_check(model, episodes: list[SyntheticEpisode], temperature: float, pad_id: int) -> dict:
    """Sampling log-probs vs a plain unpadded forward over each finished episode (what the trainer recomputes).

    Control: the same forward with 64 pad tokens in front that are NOT masked out, i.e. what a padding-mask bug
    would do, to show how large a real error looks next to bf16 noise. (A uniform position shift is no
    control: RoPE only sees relative positions.)
    """
    import torch

    device = next(model.parameters()).device
    diffs, control = [], []
    with torch.no_grad():
        for e in episodes:
            ids = torch.tensor([e.prompt_ids + e.completion_ids], device=device)
            mask = torch.tensor(e.action_mask, device=device, dtype=torch.bool)
            targets = ids[0, len(e.prompt_ids):]
            sampled = torch.tensor(e.logprobs, device=device)[mask]
            for pads, sink in ((0, diffs), (64, control)):
                x = torch.cat([torch.full((1, pads), pad_id, device=device), ids], 1)
                logits = model(input_ids=x).logits[0, pads + len(e.prompt_ids) - 1:-1].float()
                lp = torch.log_softmax(logits / temperature, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                sink.append((lp[mask] - sampled).abs())
    d, c = torch.cat(diffs), torch.cat(control)
    return {"tokens": int(d.numel()), "max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "control_unmasked_pads_mean_abs": float(c.mean()), "control_unmasked_pads_max_abs": float(c.max())}


# --- levers of bgwork.decoding (issue 11) --------------------------------------------------------------

# name -> (rollout params, static cache). "before" is EpisodePlayer's transformers path; each lever row is
# bgwork.decoding with that one lever on; "after" has all three.
NO_LEVER = {"carry_kv_cache": False, "share_prompt_prefill": False, "cuda_graphs": False}
MODES = {
    "before": ({"fast_generation": False}, False),
    "after": ({}, False),
    "+ captured decode": ({**NO_LEVER, "cuda_graphs": True}, False),
    "+ KV carry": ({**NO_LEVER, "carry_kv_cache": True}, False),
    "+ prefix sharing": ({**NO_LEVER, "share_prompt_prefill": True}, False),
    "engine, no lever": (NO_LEVER, False),
    "before, static cache": ({"fast_generation": False}, True),
    "after + compile": ({"compile_decode": True}, False),
}
DEFAULT_MODES = list(MODES)
# seconds of budget a mode needs to start: its first wave compiles (transformers' static cache: ~25 s per batch
# size on an H100; torch.compile of the decode step: unmeasured, allow minutes)
START_BUDGET = {"before, static cache": 90, "after + compile": 180}


def reference_generate(model, pad_id: int, batch: int, prompt: int, new: int, reps: int, static: bool) -> dict:
    """Plain transformers `generate`, one turn: `batch` random prompts of `prompt` tokens, `new` sampled tokens."""
    import torch

    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(16, model.config.vocab_size, (batch, prompt), generator=g).to(device)
    saved = model.generation_config.cache_implementation
    model.generation_config.cache_implementation = "static" if static else None
    try:
        times = []
        for _ in range(1 + reps):
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                               top_k=0, top_p=1.0, max_new_tokens=new, pad_token_id=pad_id)
            _sync()
            times.append(time.perf_counter() - t0)
    finally:
        model.generation_config.cache_implementation = saved
    warm = statistics.median(times[1:]) if reps else times[0]
    return {"first_s": times[0], "warm_s": warm, "tok_per_s": batch * new / warm}


def run_levers(args, model, tokenizer, results: dict, log, make_player) -> None:
    """In one process: the reference, then per mode (MODES) waves at each batch size and a log-prob check."""
    import traceback

    import torch

    work = Workload(tuple(args.prompt_range), args.turn_tokens, args.group_size)
    t_start = time.perf_counter()

    def budget_left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    results["reference"], results["modes"], results["logprob_check"] = [], {}, {}
    for b in args.reference_batch_sizes:
        try:
            ref = {"batch": b, **reference_generate(model, tokenizer.pad_token_id, b, 512, 24, 3, static=True)}
        except Exception as e:  # noqa: BLE001  (reported in the table; the modes still run)
            ref = {"batch": b, "error": f"{type(e).__name__}: {e}"}
        results["reference"].append(ref)
        print("reference (HF generate, 1 turn, 512 + 24 tokens, static cache):", ref, flush=True)
    for name in args.modes:
        params, static = MODES[name]
        info = results["modes"][name] = {"params": params, "static": static, "done": [], "skipped": []}
        player = None
        try:
            player = make_player(params)
            if static:
                model.generation_config.cache_implementation = "static"
                if hasattr(type(model.generation_config)(), "max_cache_len"):
                    model.generation_config.max_cache_len = args.prompt_range[1] + args.turns * (
                        args.action_tokens + args.turn_tokens + 50)
            for b in args.batch_sizes:
                if budget_left() <= (START_BUDGET.get(name, 0) if not info["done"] else 0):
                    info["skipped"].append(b)
                    print(f"{name} B={b}: skipped, time budget spent", flush=True)
                    continue
                measure_batched(player, model, name, [b], args.reps, args.turns, 10, log, work)
                info["done"].append(b)
            if info["done"]:  # even past the budget: a timing without its exactness check is no result
                check_b = min(args.check_batch, min(info["done"]))
                eps = work.episodes(player.turns, check_b, 99, args.turns)
                play(player, model, eps, args.turns)
                results["logprob_check"][name] = {"batch": check_b, **logprob_check(
                    model, eps, player.temperature, tokenizer.pad_token_id)}
                print(f"logprob check, {name}:", results["logprob_check"][name], flush=True)
            if player.decoder is not None:
                info["decoder_stats"] = dict(player.decoder.stats)
                print(f"{name} decoder stats:", info["decoder_stats"], flush=True)
        except Exception as e:  # noqa: BLE001  (report it and go on with the other modes)
            info["error"] = f"{type(e).__name__}: {e}"
            info["traceback"] = traceback.format_exc()[-3000:]
            print(f"{name} FAILED: {info['error']}\n{info['traceback']}", flush=True)
        finally:
            model.generation_config.cache_implementation = None
            if player is not None:
                player.close()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
    print_levers_table(results, args)


def print_levers_table(results: dict, args) -> None:
    info = results["info"]
    print(f"\n{info['device']}, torch {info['torch']}, transformers {info['transformers']}, {info['dtype']}; "
          f"{args.turns} turns x {args.action_tokens} new tokens, first prompt {args.prompt_range[0]}-"
          f"{args.prompt_range[1]} tokens, ~{args.turn_tokens} env tokens per later turn, "
          f"groups of {args.group_size}\n")
    on_cpu = info["device"] in ("cpu", platform.processor())  # a shared CPU: process CPU seconds are steadier
    cpu_col = " warm wave CPU s |" if on_cpu else ""
    print(f"| path | B | first wave s | warm wave s |{cpu_col} warm new tok/s | vs before | log-prob mean / max abs "
          f"diff (nats) |")
    print("|---|---|---|---|---|---|---|" + ("---|" if on_cpu else ""))
    for ref in results.get("reference", []):
        if "error" in ref:
            print(f"| HF generate, 1 turn, 512+24, static (reference) | {ref['batch']} | "
                  f"failed: {ref['error'][:80]} ||||")
        else:
            print(f"| HF generate, 1 turn, 512+24, static (reference) | {ref['batch']} | {ref['first_s']:.2f} | "
                  f"{ref['warm_s']:.3f} |{' |' if on_cpu else ''} {ref['tok_per_s']:.0f} | | |")
    before = {r["batch"]: r["warm"]["tok_per_s"] for r in results["rows"] if r["mode"] == "before"}
    for name, m in results.get("modes", {}).items():
        chk = results["logprob_check"].get(name)
        lp = (f"{chk['mean_abs']:.2g} / {chk['max_abs']:.2g}" + (" FAILS <= 0.02" if chk["mean_abs"] > 0.02 else "")
              if chk else "not checked")
        for r in (r for r in results["rows"] if r["mode"] == name):
            w, b = r["warm"], r["batch"]
            vs = f"{w['tok_per_s'] / before[b]:.2f}x" if b in before else ""
            cpu = f" {w['cpu_s']:.2f} |" if on_cpu else ""
            print(f"| {name} | {b} | {r['first']['seconds']:.2f} | {w['seconds']:.3f} |{cpu} "
                  f"{w['tok_per_s']:.0f} | {vs} "
                  f"| {lp} |")
        if "error" in m:
            print(f"| {name} | | failed: {m['error'][:120]} |||||")
        for b in m["skipped"]:
            print(f"| {name} | {b} | skipped (time budget) |||||")
    for name, m in results.get("modes", {}).items():
        st = m.get("decoder_stats")
        if st and st.get("graphs"):
            print(f"{name}: {st['graphs']} CUDA graphs captured in {st['capture_s']:.1f} s"
                  + (f" (torch.compile {st['compile_s']:.1f} s)" if st.get("compile_s") else ""))


# --- main ---------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny LFM2 (CPU smoke test) instead of LFM2-350M's shape")
    p.add_argument("--model", help="a bgwork model spec (e.g. bundled:smollm2-135m-instruct, real weights) instead "
                                   "of LFM2-350M's shape")
    p.add_argument("--tokenizer", help="tokenizer dir (default: bgwork's bundled SmolLM2, built here if needed)")
    p.add_argument("--site", help="extra package dir appended to sys.path (see --prepare-carry)")
    p.add_argument("--prepare-carry", metavar="DIR", help="write tokenizer + packages for a GPU box, then exit")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--baseline-episodes", type=int, default=8)
    p.add_argument("--reps", type=int, default=3, help="warm waves per batch size (median reported)")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--action-tokens", type=int, default=32, help="max_action_tokens (bgwork's default)")
    p.add_argument("--prompt-range", type=int, nargs=2, default=[500, 700], help="first-prompt tokens, min max")
    p.add_argument("--turn-tokens", type=int, default=150, help="env tokens appended between turns")
    p.add_argument("--static", action="store_true", help="also time cache_implementation='static'")
    p.add_argument("--static-budget-s", type=float, default=240, help="skip further static sizes after this long")
    p.add_argument("--no-cudnn-sdp", action="store_true", help="keep SDPA off its cuDNN backend (see main)")
    p.add_argument("--levers", action="store_true", help="issue 11: the reference, before, after and each lever of "
                                                         "bgwork.decoding alone (see MODES), instead of (a)/(b)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=DEFAULT_MODES, help="--levers: which, in order")
    p.add_argument("--group-size", type=int, default=1, help="episodes sharing a first prompt (GRPO num_generations)")
    p.add_argument("--reference-batch-sizes", type=int, nargs="*", default=[64],
                   help="--levers: batch sizes of the plain single-turn HF static reference ([] = none)")
    p.add_argument("--check-batch", type=int, default=64, help="--levers: episodes in each mode's log-prob check")
    p.add_argument("--budget-s", type=float, default=480, help="--levers: skip the remaining rows after this long")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (a shared CPU box: 1 keeps process CPU seconds honest)")
    p.add_argument("--json", help="write all figures here")
    args = p.parse_args()

    sys.path.insert(0, str(ROOT))
    if args.prepare_carry:
        prepare_carry(Path(args.prepare_carry))
        return
    if args.site:
        sys.path.append(str(Path(args.site).resolve()))

    import torch
    import transformers

    from bgwork.config import RolloutParams
    from bgwork.envclient import EnvClient
    from bgwork.models import BUNDLED_SMOLLM2, load_tokenizer, model_path
    from bgwork.rollout import EpisodePlayer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_cudnn_sdp:
        # torch picks cuDNN attention on Hopper, which builds an execution plan per new shape; a dynamic-cache
        # decode meets a new key length every step, and on an H100 these builds outweighed the math (2.7x at B=1).
        torch.backends.cuda.enable_cudnn_sdp(False)
    if device == "cpu" and not (args.tiny or args.model):
        print("no GPU: LFM2-350M's shape on CPU takes minutes; pass --tiny for a smoke test", file=sys.stderr)
    if args.model:
        from bgwork.models import resolve_model

        resolved = resolve_model(args.model, device=device)
        model, tokenizer = resolved.model.eval(), resolved.tokenizer
    else:
        tokenizer = load_tokenizer(args.tokenizer or model_path(BUNDLED_SMOLLM2))
        model = build_model(args.tiny, len(tokenizer), device)
    max_b = max(args.batch_sizes)

    def make_player(overrides: dict):
        # The player's env client is never called here: generation is measured alone.
        params = RolloutParams(max_action_tokens=args.action_tokens, max_episode_steps=args.turns, **overrides)
        return EpisodePlayer(EnvClient("http://127.0.0.1:9"), tokenizer, params, temperature=1.0,
                             max_completion_length=4096, max_parallel=max_b)

    info = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": str(next(model.parameters()).dtype),
            "cudnn_sdp": torch.backends.cuda.cudnn_sdp_enabled(), "model": args.model or ("tiny" if args.tiny else
                                                                                         "LFM2-350M shape"),
            "tiny": args.tiny, "turns": args.turns, "action_tokens": args.action_tokens,
            "prompt_range": args.prompt_range, "turn_tokens": args.turn_tokens, "group_size": args.group_size,
            "cpu_threads": torch.get_num_threads(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    print(json.dumps(info))
    results = {"info": info, "rows": []}

    def log(row):
        results["rows"].append(row)
        f, w = row["first"], row["warm"]
        print(f"{row['mode']:>8} B={row['batch']:<3} first {f['seconds']:7.2f}s {f['tok_per_s']:8.0f} tok/s | warm "
              f"{w['seconds']:7.2f}s {w['tok_per_s']:8.0f} tok/s {w['episodes_per_s']:7.2f} ep/s  "
              f"widths {row['widths']}",
              flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))

    t_start = time.perf_counter()
    # process warm-up: CUDA context, kernels (through transformers' path, which every mode's process shares)
    warm_player = make_player({"fast_generation": False})
    play(warm_player, model, make_episodes(warm_player.turns, 2, 7, 1, (64, 96), 40), 1)
    warm_player.close()
    if args.levers:
        run_levers(args, model, tokenizer, results, log, make_player)
        results["total_s"] = time.perf_counter() - t_start
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"total {results['total_s']:.0f} s")
        return

    # The figures of docs/benchmarks.md "Rollout generation (GPU)": EpisodePlayer's transformers path.
    player = make_player({"fast_generation": False})

    # (a) the original: one episode at a time, batch 1.
    episodes = make_episodes(player.turns, args.baseline_episodes, 1, args.turns)
    runs = play_one_at_a_time(player, model, episodes, args.turns)
    log({"mode": "batch1", "batch": 1, "first": rates(runs[:1]), "warm": rates(runs[1:] or runs),
         "widths": runs[-1]["widths"], "pad_fraction": runs[-1]["pad_fraction"]})
    base = results["rows"][-1]["warm"]["episodes_per_s"]

    # (b) bgwork: one batched generate per turn over the whole wave.
    measure_batched(player, model, "dynamic", args.batch_sizes, args.reps, args.turns, 10, log)
    check_eps = make_episodes(player.turns, max_b, 99, args.turns)
    play(player, model, check_eps, args.turns)
    results["logprob_check"] = {"dynamic": {"batch": max_b, **logprob_check(model, check_eps, player.temperature,
                                                                          tokenizer.pad_token_id)}}
    print("logprob check, dynamic:", results["logprob_check"]["dynamic"], flush=True)

    if args.static:
        # transformers >= 5.2x: size the static cache once for the longest episode, so later turns and waves
        # reuse it instead of re-allocating (and recompiling); older versions grow it as needed.
        model.generation_config.cache_implementation = "static"
        if hasattr(transformers.GenerationConfig(), "max_cache_len"):
            model.generation_config.max_cache_len = 700 + args.turns * (args.action_tokens + 200)
        info["static_max_cache_len"] = getattr(model.generation_config, "max_cache_len", None)
        t0, done = time.perf_counter(), []
        for b in args.batch_sizes:
            if time.perf_counter() - t0 > args.static_budget_s:
                print(f"static: budget spent, skipping B={b}", flush=True)
                continue
            try:
                measure_batched(player, model, "static", [b], args.reps, args.turns, 10, log)
                done.append(b)
            except Exception as e:  # report and keep the dynamic figures
                print(f"static B={b} failed: {type(e).__name__}: {e}", flush=True)
                results.setdefault("errors", []).append(f"static B={b}: {type(e).__name__}: {e}")
        try:
            # at a batch size already compiled: a skipped one would spend the budget on a new compilation
            check_b = max(done, default=min(args.batch_sizes))
            check_eps = make_episodes(player.turns, check_b, 99, args.turns)
            play(player, model, check_eps, args.turns)
            results["logprob_check"]["static"] = {"batch": check_b, **logprob_check(
                model, check_eps, player.temperature, tokenizer.pad_token_id)}
            print("logprob check, static:", results["logprob_check"]["static"], flush=True)
        except Exception as e:
            print(f"static check failed: {type(e).__name__}: {e}", flush=True)
            results.setdefault("errors", []).append(f"static check: {type(e).__name__}: {e}")
        model.generation_config.cache_implementation = None
    player.close()

    print("\n| mode | B | first wave s | warm wave s | warm new tok/s | warm episodes/s | speed-up vs batch 1 |")
    print("|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        w = r["warm"]
        per = "per episode" if r["batch"] == 1 else "per wave"
        warm_s = w["seconds"] / (w["episodes"] if r["batch"] == 1 else 1)
        print(f"| {r['mode']} | {r['batch']} | {r['first']['seconds']:.2f} | {warm_s:.2f} ({per}) "
              f"| {w['tok_per_s']:.0f} | {w['episodes_per_s']:.2f} | {w['episodes_per_s'] / base:.1f}x |")
    results["total_s"] = time.perf_counter() - t_start
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"total {results['total_s']:.0f} s")


if __name__ == "__main__":
    main()
