"""Data-parallel scaling: whole-step episodes/s of notebook 03's training at 1 GPU and at N GPUs, same per-GPU batch.

    python3 benchmarks/dp_scaling.py --gpus 2          # a 2-GPU node (goal: >= 1.8x); --gpus 2 4: 1, 2, 4 GPUs
                                                       # (goal at 4: >= 3.4x)
    .venv/bin/python benchmarks/dp_scaling.py --cpu --gpus 2 -p model.name=tiny-random-lfm2 \\
        -p train.per_device_train_batch_size=4 -p train.gradient_accumulation_steps=1 -p train.num_generations=2 \\
        -p env.max_sessions=8 --steps 3                # the plumbing on a CPU box (gloo), no figure worth keeping

Both runs go through the same path, in this one call: `bgwork.launch.launch` starts `accelerate launch
--num_processes n` (n = 1, then N) of bgwork's training entry (what notebook 03's `launch.train_between_evaluations`
runs, without the held-out evaluations), from `--params` (default params/lfm2_350m_replay.yaml: random LFM2-350M,
bf16, full fine-tune, 64 episodes per GPU per step, 3 turns x 32 tokens) against `env.replicas` = n x
`--replicas-per-gpu` embedded replay servers (no browser). Each GPU plays the same per-GPU batch, so the global
batch is n x 64 episodes. A step's time is the wall time between rank 0's consecutive step-end lines (generation,
env, scoring, forward/backward, all-reduce, optimizer); the first step is a warm-up and left out, the figure is
the median of the others. NCCL's NVLink multicast stays off (NCCL_NVLS_ENABLE=0, set by bgwork.launch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOALS = {2: 1.8, 4: 3.4}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=[2], help="N: the data-parallel runs' processes (each "
                   "measured against 1 GPU, in the same call)")
    p.add_argument("--params", default=str(ROOT / "params/lfm2_350m_replay.yaml"))
    p.add_argument("-p", dest="overrides", action="append", default=[], help="params override, e.g. lora.enabled=true")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per run (the first is a warm-up)")
    p.add_argument("--replicas-per-gpu", type=int, default=1, help="replay servers per process")
    p.add_argument("--cpu", action="store_true", help="allow a machine without CUDA (plumbing check only)")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu:
        raise SystemExit("no CUDA device: this measures GPUs (--cpu runs the plumbing on CPU)")
    if cuda and torch.cuda.device_count() < max(args.gpus):
        raise SystemExit(f"--gpus {args.gpus}: only {torch.cuda.device_count()} CUDA devices here")
    info = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "gpus": args.gpus, "torch": torch.__version__,
            "params": args.params, "overrides": args.overrides}
    print(json.dumps(info), flush=True)
    rows = [measure(n, args) for n in (1, *args.gpus)]
    print(f"\n{info['device']} x {max(args.gpus)}, {rows[0]['model']} ({rows[0]['kind']}), {rows[0]['per_gpu_batch']} "
          f"episodes per GPU per step, replay env ({args.replicas_per_gpu} replica(s) per GPU)")
    print("| GPUs | global batch | step s (median) | steps timed | episodes/s | logged episodes/step | grad_norm |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['gpus']} | {r['global_batch']} | {r['step_s']:.2f} | {r['steps_timed']} | "
              f"{r['episodes_per_s']:.1f} | {r['logged_episodes']} | {r['grad_norms']} |")
    ratios = {}
    for r in rows[1:]:
        ratios[r["gpus"]] = ratio = r["episodes_per_s"] / rows[0]["episodes_per_s"]
        goal = GOALS.get(r["gpus"])
        verdict = f" (goal >= {goal}x: {'met' if ratio >= goal else 'NOT met'})" if goal else ""
        print(f"scaling {r['gpus']} GPUs / 1 GPU: {ratio:.2f}x{verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows, "ratios": ratios}, indent=1))
    return 0


def measure(n: int, args) -> dict:
    from bgwork.config import global_generation_batch_size
    from bgwork.embedded import env_server
    from bgwork.launch import launch, read_result
    from bgwork.params import load_params

    params = load_params(args.params, [*args.overrides, f"train.num_processes={n}", f"train.max_steps={args.steps}",
                                       f"train.save_steps={10**6}", f"env.replicas={n * args.replicas_per_gpu}",
                                       "evaluation.episodes_per_task=0", "warmstart.episodes_per_task=0"])
    batch = global_generation_batch_size(params.train)
    with tempfile.TemporaryDirectory() as tmp, env_server(params.env, log_dir=tmp) as urls:
        started = time.time()
        launched = launch(params, tmp, urls, "train")
        total_s = time.time() - started
        result = read_result(tmp)
    times = [t for _, t in sorted(launched.step_times)]  # step 0 (train begin), 1, 2, ...
    durations = [b - a for a, b in zip(times, times[1:])]
    timed = durations[1:] or durations
    step_s = statistics.median(timed)
    logged = [h["episodes"] for h in result.log_history if "episodes" in h]
    row = {"gpus": n, "model": params.model.name, "kind": "LoRA" if params.lora.enabled else "full fine-tune",
           "per_gpu_batch": batch // n, "global_batch": batch, "steps_timed": len(timed),
           "step_s": round(step_s, 3), "episodes_per_s": round(batch / step_s, 2),
           "step_durations_s": [round(d, 3) for d in durations], "launch_total_s": round(total_s, 1),
           "logged_episodes": sorted(set(logged)),
           # a throughput figure of a run whose weights went NaN would mean nothing: say so beside it
           "grad_norms": [h["grad_norm"] for h in result.log_history if "grad_norm" in h]}
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())
