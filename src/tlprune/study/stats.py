"""Paired comparisons over seeds and over test examples (scipy.stats where it has them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class Interval:
    """A mean difference in points and its 95% interval (nan bounds when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def significant(self) -> bool:
        return not math.isnan(self.lo) and (self.lo > 0 or self.hi < 0)

    def __str__(self) -> str:
        if math.isnan(self.lo):
            return f"{self.mean:+.1f} (n={self.n})"
        return f"{self.mean:+.1f} [{self.lo:+.1f}, {self.hi:+.1f}] (n={self.n})"


def t_interval(diffs: list[float] | np.ndarray) -> Interval:
    """Mean and 95% Student-t interval of paired differences (fractions in, points out)."""
    x = 100 * np.asarray(diffs, dtype=float)
    if len(x) < 2:
        return Interval(float(x.mean()) if len(x) else math.nan, math.nan, math.nan, len(x))
    if np.all(x == x[0]):  # no spread: a t interval is undefined, and nothing is shown
        return Interval(float(x[0]), math.nan, math.nan, len(x))
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return Interval(float(x.mean()), float(lo), float(hi), len(x))


def bootstrap_interval(
    a: list[np.ndarray], b: list[np.ndarray], resamples: int = 2000, seed: int = 0
) -> Interval:
    """Paired bootstrap over test examples (a[i], b[i]: 0/1 correctness of two methods on seed
    i's test set), averaged over seeds; a 95% percentile interval. Seeds share one test set,
    so each resample draws one set of examples for all of them (independent draws per seed
    would average the examples' shared difficulty away and narrow the interval)."""
    rng = np.random.default_rng(seed)
    diffs = [np.asarray(x, float) - np.asarray(y, float) for x, y in zip(a, b, strict=True)]
    draws = np.zeros(resamples)
    if len({len(d) for d in diffs}) == 1:  # one test set: the same resampled examples every seed
        mean_d = np.mean(diffs, axis=0)
        for lo in range(0, resamples, 256):  # in blocks: resamples x examples indices
            idx = rng.integers(0, len(mean_d), (min(256, resamples - lo), len(mean_d)))
            draws[lo : lo + len(idx)] = mean_d[idx].mean(1)
    else:  # different test sets per seed: resample each on its own
        for d in diffs:
            idx = rng.integers(0, len(d), (resamples, len(d)))
            draws += d[idx].mean(1) / len(diffs)
    draws *= 100
    mean = 100 * float(np.mean([np.mean(x) - np.mean(y) for x, y in zip(a, b, strict=True)]))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return Interval(mean, float(lo), float(hi), len(a))


def verdict(name: str, against: str, iv: Interval, what: str = "test accuracy") -> str:
    """One sentence that says what the interval supports, and no more."""
    if iv.n == 0:
        return f"{name} vs {against}: no paired cells finished yet."
    if math.isnan(iv.lo):
        return (
            f"{name} vs {against}: {iv} points of {what}; no interval (too few pairs or no spread)."
        )
    if not iv.significant:
        return f"No significant difference between {name} and {against}: {iv} points of {what}."
    word = "above" if iv.mean > 0 else "below"
    return f"{name} is {abs(iv.mean):.1f} points {word} {against} in {what}: {iv}."
