#!/usr/bin/env bash
# Wave 2's GPU figures (docs/benchmarks.md), one phase per device call on a 2-GPU node without network or
# browser; each phase fits the 10-minute call limit and sets the node up first (idempotent).
#   python3 scripts/gpu_carry.py .carry                       # here, once: wheels + tokenizer (~32 MiB)
#   bash benchmarks/gpu_session.sh step    # GPU 0: generation levers (issue 11); GPU 1: the GRPO step split at
#                                          # B = 8/64/128 with fast generation, then without it (issues 10, 11)
#   bash benchmarks/gpu_session.sh dp      # 1 vs 2 GPUs (issue 12); notebook 03 on 2 GPUs, then full FT and LoRA
#                                          # on one GPU each, through `bgwork run` (issue 10)
#   bash benchmarks/gpu_session.sh dp4     # a 4-GPU node: 1 vs 2 vs 4 GPUs (issue 12), then the compile_decode
#                                          # lever against "after" at B = 64 on one GPU (issue 11)
# Figures and reports land in $OUT (default outputs/gpu); run dirs in /tmp (checkpoints are GBs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD BGWORK_CACHE=$PWD/.carry/cache HF_HUB_OFFLINE=1 BGWORK_RUNS_DIR=/tmp/runs
bash scripts/gpu_box.sh .carry > "$OUT/setup.txt" 2>&1 || { tail -20 "$OUT/setup.txt"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpus.txt"
TOKENIZER=.carry/cache/tokenizers/smollm2-135m-instruct

keep_reports() {  # what the run dirs say, without their weights, as one archive (a call returns few files)
  (cd /tmp/runs && find . \( -name '*.html' -o -name '*.json' -o -name '*.log' -o -name 'events.out.*' \) \
      -not -path '*/checkpoint-*' -size -8M -print0 | tar --null -czf "$OUT/runs.tgz" -T -)
  find /tmp/runs -maxdepth 4 -type d > "$OUT/run_dirs.txt"
}

case ${1:-} in
step)
  python3 benchmarks/replay_start.py > "$OUT/replay_start.txt" 2>&1
  CUDA_VISIBLE_DEVICES=0 timeout 420 python3 benchmarks/rollout_generation.py --tokenizer $TOKENIZER --levers \
      --batch-sizes 64 128 256 --group-size 8 --reps 3 --budget-s 330 --json "$OUT/levers.json" \
      > "$OUT/levers.txt" 2>&1 &
  CUDA_VISIBLE_DEVICES=1 bash -c "timeout 260 python3 benchmarks/grpo_step.py --batch-sizes 8 64 128 --steps 4 \
      --json $OUT/step_fast.json; timeout 220 python3 benchmarks/grpo_step.py --batch-sizes 64 128 --steps 4 \
      -p rollout.fast_generation=false --json $OUT/step_hf.json" > "$OUT/step.txt" 2>&1 &
  wait
  ;;
dp)
  timeout 300 python3 benchmarks/dp_scaling.py --gpus 2 --steps 5 --json "$OUT/dp.json" > "$OUT/dp.txt" 2>&1
  timeout 150 python3 -m bgwork run 03 -f params/lfm2_350m_replay.yaml -p name=nb03-2gpus \
      -p train.num_processes=2 -p env.replicas=2 > "$OUT/nb03_2gpus.txt" 2>&1
  CUDA_VISIBLE_DEVICES=0 timeout 120 python3 -m bgwork run 03 -f params/lfm2_350m_replay.yaml -p name=nb03-full \
      > "$OUT/nb03_full.txt" 2>&1 &
  CUDA_VISIBLE_DEVICES=1 timeout 120 python3 -m bgwork run 03 -f params/lfm2_350m_replay.yaml -p name=nb03-lora \
      -p lora.enabled=true > "$OUT/nb03_lora.txt" 2>&1 &
  wait
  keep_reports
  ;;
dp4)
  timeout 330 python3 benchmarks/dp_scaling.py --gpus 2 4 --steps 5 --json "$OUT/dp4.json" > "$OUT/dp4.txt" 2>&1
  left=$((570 - SECONDS))  # what the 10-minute call has left; compiling needs START_BUDGET (180 s) of it
  timeout $left python3 benchmarks/rollout_generation.py --tokenizer $TOKENIZER --levers --modes after \
      "after + compile" --batch-sizes 64 --reference-batch-sizes --group-size 8 --reps 3 --budget-s $((left - 30)) \
      --json "$OUT/compile.json" > "$OUT/compile.txt" 2>&1
  ;;
*)
  echo "usage: bash benchmarks/gpu_session.sh step|dp|dp4" >&2
  exit 2
  ;;
esac
ls -R "$OUT" | head -80
