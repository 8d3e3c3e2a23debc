"""The whole GRPO step, timed where it runs: generate / env / train, peak GPU memory, episodes/s per batch size.

    python3 benchmarks/grpo_step.py --batch-sizes 8 64 128                  # GPU: LFM2-350M shape vs the replay
    .venv/bin/python benchmarks/grpo_step.py --tiny --batch-sizes 4 8 --steps 2   # CPU smoke test

Each batch size B gets a fresh trainer built exactly as notebook 03 builds it (bgwork.training.build_trainer,
TRL GRPOTrainer, bgwork's multi-turn rollout_func) from `--params` (default params/lfm2_350m_replay.yaml), with
B episodes per optimizer step (generation batch B, micro-batches of `--micro-batch`), against an embedded
replay server (`env.replay`), so env time is the HTTP round trips alone. Per step: `generate` is the model's
action sampling, `env` the reset/step calls, `train` the rest of the step (TRL's scoring, forward, backward,
optimizer). The first step of each size is a warm-up (allocation, kernel selection); figures are the median
of the others. Baseline in the same process: the original project's way, 2 episodes per step played one at a
time (batch-1 generation); the ratio column is episodes/s over it. For scale, the original's own figure was
0.11 episodes/s (100 steps x 2 episodes in 31 min, vLLM colocate, its GPU and a remote env).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL_EPISODES_PER_S = 200 / (31 * 60)  # seed-digest.md: 100 steps of 2 episodes in 31 min


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default=str(ROOT / "params/lfm2_350m_replay.yaml"))
    p.add_argument("-p", dest="overrides", action="append", default=[], help="params override, e.g. lora.enabled=true")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64, 128])
    p.add_argument("--micro-batch", type=int, default=16, help="episodes per forward/backward micro-batch")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per batch size (the first is a warm-up)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: the tiny random LFM2")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    import torch

    from bgwork.embedded import env_server
    from bgwork.envclient import EnvClient
    from bgwork.params import load_params

    args.overrides += ["model.name=tiny-random-lfm2"] if args.tiny else []
    base = load_params(args.params, args.overrides)
    cuda = torch.cuda.is_available()
    info = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "model": base.model.name,
            "lora": base.lora.enabled, "torch": torch.__version__, "turns": base.rollout.max_episode_steps,
            "max_action_tokens": base.rollout.max_action_tokens, "replay": base.env.replay}
    print(json.dumps(info), flush=True)
    rows = []
    with env_server(base.env) as url, EnvClient(url, timeout=base.env.request_timeout) as client:
        for b in ["baseline", *args.batch_sizes]:
            try:
                rows.append(measure(base, b, args, client))
            except Exception as e:  # report and go on with the next size
                rows.append({"batch": b, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            print(json.dumps(rows[-1]), flush=True)
            if cuda:
                torch.cuda.empty_cache()
    print_table(info, rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


def measure(base, b: int, args, client) -> dict:
    import torch
    from transformers import TrainerCallback

    from bgwork.models import resolve_model
    from bgwork.params import load_params
    from bgwork.trainer import build_trainer, device_and_dtype

    baseline = b == "baseline"
    b = 2 if baseline else b
    micro = min(args.micro_batch, b)
    params = load_params(args.params, [*args.overrides, *(
                 f"train.per_device_train_batch_size={micro}", f"train.gradient_accumulation_steps={b // micro}",
                 f"train.generation_batch_size={b}", f"train.max_steps={args.steps}", f"train.save_steps={10**6}",
                 f"train.num_generations={min(base.train.num_generations, b)}",
                 # the baseline plays one episode at a time: build_trainer's wave is min(batch, max_sessions)
                 f"env.max_sessions={1 if baseline else max(base.env.max_sessions, b)}")])
    device, dtype = device_and_dtype(params.model.dtype)
    resolved = resolve_model(params.model.name, dtype=dtype)
    cuda = device == "cuda"
    steps: list[dict] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            _sync(cuda)
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            _sync(cuda)
            total = time.perf_counter() - self.t0
            g, e = player.timings["generate_s"], player.timings["env_s"]
            steps.append({"step_s": total, "generate_s": g, "env_s": e, "train_s": total - g - e})

    with tempfile.TemporaryDirectory() as tmp:
        trainer, player = build_trainer(params, Path(tmp) / f"b{b}", client, resolved, callbacks=[Timer()])
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            trainer.train()
        finally:
            player.close()
    timed = steps[1:] or steps
    med = {k: statistics.median(s[k] for s in timed) for k in ("step_s", "generate_s", "env_s", "train_s")}
    row = {"batch": "2 (one at a time)" if baseline else b, "micro_batch": micro, "steps_timed": len(timed),
           **{k: round(v, 3) for k, v in med.items()},
           "episodes_per_s": round(b / med["step_s"], 2), "warmup_step_s": round(steps[0]["step_s"], 2),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None}
    del trainer, resolved
    return row


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def print_table(info: dict, rows: list[dict]) -> None:
    print(f"\n{info['device']}, {info['model']} ({'LoRA' if info['lora'] else 'full fine-tune'}), "
          f"{info['turns']} turns x {info['max_action_tokens']} tokens, replay env")
    base = next((r["episodes_per_s"] for r in rows if "error" not in r), None)
    print("| B | step s | generate s | env s | train s | episodes/s | vs baseline | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['batch']} | {r['error']} |")
            continue
        print(f"| {r['batch']} | {r['step_s']:.2f} | {r['generate_s']:.2f} | {r['env_s']:.2f} | {r['train_s']:.2f} "
              f"| {r['episodes_per_s']:.2f} | {r['episodes_per_s'] / base:.1f}x | {r['peak_gib']} |")
    print(f"(the original project: {ORIGINAL_EPISODES_PER_S:.2f} episodes/s on its GPU)")


if __name__ == "__main__":
    sys.exit(main())
