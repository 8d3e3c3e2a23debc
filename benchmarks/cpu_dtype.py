"""Is bfloat16 worth it on this CPU? A LoRA-model-sized matmul in bfloat16 against float32, in one process.

bf16 is fast on a CPU only where oneDNN has hardware for it (AMX or AVX512-BF16); elsewhere PyTorch takes a scalar
fallback. `model.dtype: auto` picks float32 on any CPU, and an explicit bfloat16 on a CPU without that hardware
warns (bgwork.trainer.device_and_dtype). This prints what the choice costs here.

    .venv/bin/python benchmarks/cpu_dtype.py                 # prints the ratio bf16 time / fp32 time
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def seconds_per_matmul(dtype, rows: int, reps: int) -> float:
    import torch

    a, b = torch.randn(rows, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)  # SmolLM2-135M's MLP shape
    a @ b  # warm-up: first-call dispatch and allocation
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return (time.perf_counter() - t0) / reps


def main() -> int:
    import torch

    from bgwork.trainer import cpu_has_native_bf16

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2048, help="tokens in the batch (rows of the activation matrix)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    fp32 = seconds_per_matmul(torch.float32, args.rows, args.reps)
    bf16 = seconds_per_matmul(torch.bfloat16, args.rows, args.reps)
    print(f"cpu {torch.backends.cpu.get_cpu_capability()}, native bf16 (AMX/AVX512-BF16): {cpu_has_native_bf16()}, "
          f"threads {torch.get_num_threads()}")
    print(f"[{args.rows} x 576] @ [576 x 1536]: float32 {fp32 * 1e3:.1f} ms, bfloat16 {bf16 * 1e3:.1f} ms")
    print(f"ratio bfloat16 / float32 time: {bf16 / fp32:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
