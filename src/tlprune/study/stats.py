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
    if np.all(x == x[0]):  # no spread: the interval is the point
        return Interval(float(x[0]), float(x[0]), float(x[0]), len(x))
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return Interval(float(x.mean()), float(lo), float(hi), len(x))


def bootstrap_interval(
    a: list[np.ndarray], b: list[np.ndarray], resamples: int = 2000, seed: int = 0
) -> Interval:
    """Paired bootstrap over test examples within each seed (a[i], b[i]: 0/1 correctness of
    two methods on seed i's test set), averaged over seeds; a 95% percentile interval."""
    rng = np.random.default_rng(seed)
    draws = np.zeros(resamples)
    for x, y in zip(a, b, strict=True):
        d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
        idx = rng.integers(0, len(d), (resamples, len(d)))
        draws += d[idx].mean(1)
    draws *= 100 / max(1, len(a))
    mean = 100 * float(np.mean([np.mean(x) - np.mean(y) for x, y in zip(a, b, strict=True)]))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return Interval(mean, float(lo), float(hi), len(a))


def verdict(name: str, against: str, iv: Interval, what: str = "test accuracy") -> str:
    """One sentence that says what the interval supports, and no more."""
    if math.isnan(iv.lo):
        return f"{name} vs {against}: {iv} points of {what}; too few pairs for an interval."
    if not iv.significant:
        return f"No significant difference between {name} and {against}: {iv} points of {what}."
    word = "above" if iv.mean > 0 else "below"
    return f"{name} is {abs(iv.mean):.1f} points {word} {against} in {what}: {iv}."
