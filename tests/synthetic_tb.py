"""Synthetic TensorBoard runs that reproduce the original project's two GRPO runs (seed digest, bug 5).

Written as transformers' TensorBoard callback writes them: `train/<TRL metric>` at the global step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bgwork import metrics as m

TAGS = [m.ENTROPY, m.REWARD, m.REWARD_STD, m.FRAC_REWARD_ZERO_STD, m.GRAD_NORM, m.LEARNING_RATE, m.LOSS]


def write_run(run_dir: Path, scalars: dict[str, dict[int, float]], subdir: str = "tensorboard") -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(Path(run_dir) / subdir))
    for tag, points in scalars.items():
        for step, value in points.items():
            writer.add_scalar(f"train/{tag}", value, step)
    writer.close()
    return Path(run_dir)


def _lr(step: int, peak: float, warmup: int = 10, total: int = 100) -> float:
    return peak * step / warmup if step < warmup else peak * (total - step) / (total - warmup)


def collapsed_run(seed: int = 0) -> dict[str, dict[int, float]]:
    """LR 5e-6, one task: reward -> 1.0, grad_norm 10.7 at step 20, entropy ~2 -> 0.04 at step 21, to step 52."""
    rng = np.random.default_rng(seed)
    s = {k: {} for k in TAGS}
    for step in range(1, 53):
        s[m.LEARNING_RATE][step] = _lr(step, 5e-6)
        s[m.LOSS][step] = float(rng.normal(0, 0.01))
        if step <= 20:
            s[m.ENTROPY][step] = 2.0 + float(rng.normal(0, 0.06))
            s[m.REWARD][step] = min(0.98, 0.3 + 0.045 * step) + float(rng.uniform(-0.02, 0.0))
            s[m.REWARD_STD][step] = max(0.05, 0.45 - 0.02 * step)
            s[m.FRAC_REWARD_ZERO_STD][step] = min(0.875, 0.05 * step)
            s[m.GRAD_NORM][step] = 10.7 if step == 20 else 0.8 + float(rng.uniform(-0.3, 0.4))
        else:  # deterministic policy: identical rollouts, all scoring 1.0, zero advantage, zero gradient
            s[m.ENTROPY][step] = 0.04 if step == 21 else float(rng.uniform(0.02, 0.05))
            s[m.REWARD][step] = 1.0
            s[m.REWARD_STD][step] = 0.0
            s[m.FRAC_REWARD_ZERO_STD][step] = 1.0
            s[m.GRAD_NORM][step] = 0.0
    return s


def healthy_run(seed: int = 1) -> dict[str, dict[int, float]]:
    """LR 1e-6: entropy stays ~2 (2.16 at step 36), reward climbs slowly, groups keep disagreeing."""
    rng = np.random.default_rng(seed)
    s = {k: {} for k in TAGS}
    for step in range(1, 37):
        s[m.LEARNING_RATE][step] = _lr(step, 1e-6)
        s[m.LOSS][step] = float(rng.normal(0, 0.01))
        s[m.ENTROPY][step] = 2.16 if step == 36 else 2.05 + float(rng.normal(0, 0.06))
        s[m.REWARD][step] = 0.2 + 0.011 * step + float(rng.normal(0, 0.03))
        s[m.REWARD_STD][step] = 0.4 + float(rng.normal(0, 0.03))
        s[m.FRAC_REWARD_ZERO_STD][step] = float(rng.choice([0.0, 0.125, 0.25, 0.375]))
        s[m.GRAD_NORM][step] = 0.7 + float(rng.uniform(-0.3, 0.5))
    return s
