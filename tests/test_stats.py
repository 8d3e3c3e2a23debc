"""Intervals for held-out success rates (bgwork.stats): checked against known values and by simulation."""

import random

import pytest

from bgwork.stats import paired_difference, wilson


def test_wilson_matches_the_textbook_values():
    lo, hi = wilson(17, 20)  # by hand: (0.85 + 0.0960) / 1.1921 -+ 0.1836 / 1.1921
    assert (round(lo, 4), round(hi, 4)) == (0.6396, 0.9476)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
    assert wilson(0, 0) != wilson(0, 0)  # nan: no episodes, no interval


def test_wilson_covers_the_true_rate_about_95_percent_of_the_time():
    rng, p, n = random.Random(0), 0.3, 40
    hits = 0
    for _ in range(2000):
        lo, hi = wilson(sum(rng.random() < p for _ in range(n)), n)
        hits += lo <= p <= hi
    assert 0.93 <= hits / 2000 <= 0.97


def test_paired_difference_sees_a_real_gain_and_not_noise():
    rng = random.Random(1)
    before = [rng.random() < 0.3 for _ in range(160)]
    after = [b or rng.random() < 0.4 for b in before]  # the same episodes, some more solved
    gain = paired_difference(after, before)
    assert gain["mean"] > 0.2 and gain["excludes_zero"] and gain["ci_low"] > 0
    same = paired_difference(before, [b if rng.random() < 0.9 else not b for b in before])
    assert not same["excludes_zero"]
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1, 0], [1])
