"""Intervals for success rates: how sure a held-out figure is, and whether two models really differ.

    lo, hi = wilson(successes=17, n=20)                 # 95 % Wilson score interval of 17/20
    d = paired_difference(after, before)                 # same episodes, two models: mean, 95 % bootstrap CI
"""

from __future__ import annotations

import math
import random

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate (stays inside [0, 1], sane at 0/n and n/n)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean of a - b over paired outcomes (the same episodes played by two models), with a 95 % percentile
    bootstrap interval over the pairs. `excludes_zero` says whether the difference is clear."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs two equally long, non-empty lists (got {len(a)} and {len(b)})")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo, hi = means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
    mean = sum(diffs) / n
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "pairs": n, "excludes_zero": lo > 0 or hi < 0}
