"""Seeded stratified sampling: fixed test splits and scarce-data budgets (train + dev).

Only numpy's PCG64 generator is used, whose streams are identical on every platform, so the
same seed selects the same examples on any machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tlprune.errors import DataError


def _allocate(counts: dict[int, int], total: int, minimum: int, keep: int = 0) -> dict[int, int]:
    """Split `total` over classes in proportion to `counts` (largest remainder).

    Each class gets at least `minimum` and leaves at least `keep` of its examples unselected.
    """
    n = sum(counts.values())
    cap = {c: max(k - keep, 0) for c, k in counts.items()}
    alloc = {c: min(minimum, cap[c]) for c in counts}
    left = total - sum(alloc.values())
    if left < 0:
        raise DataError(f"cannot draw {total} examples with {minimum} per class from {len(counts)}")
    exact = {c: total * k / n for c, k in counts.items()}
    # Give each class its proportional share beyond the minimum, bounded by what it has.
    for c in sorted(counts):
        extra = min(max(math.floor(exact[c]) - alloc[c], 0), cap[c] - alloc[c], left)
        alloc[c] += extra
        left -= extra
    # Hand out what remains by largest remainder, ties broken by class id.
    order = sorted(counts, key=lambda c: (-(exact[c] - math.floor(exact[c])), c))
    while left > 0:
        progressed = False
        for c in order:
            if left == 0:
                break
            if alloc[c] < cap[c]:
                alloc[c] += 1
                left -= 1
                progressed = True
        if not progressed:
            raise DataError(f"cannot draw {total} examples from {n}")
    return alloc


def stratified_split(
    labels: Sequence[int], size: int, seed: int, minimum: int = 0, keep: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted (selected, rest) index arrays: `size` examples stratified by label.

    Each class contributes at least `minimum` examples and keeps `keep` in the rest.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    counts_by_class = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    alloc = _allocate(counts_by_class, size, minimum, keep)
    rng = np.random.Generator(np.random.PCG64(seed))
    chosen: list[np.ndarray] = []
    for c in classes.tolist():
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(idx)[: alloc[c]])
    sel = np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)
    rest = np.setdiff1d(np.arange(len(labels)), sel)
    return sel, rest


def test_split_size(n: int, fraction: float = 0.2, min_test: int = 400) -> int:
    """Test size: at least `fraction` of the data and at least `min_test`, but never over half."""
    return max(round(n * fraction), min(min_test, n // 2))


@dataclass(frozen=True)
class Budget:
    """Indices into the training split: the examples a method may train on, and its dev slice."""

    train: np.ndarray
    dev: np.ndarray
    seed: int

    @property
    def size(self) -> int:
        return len(self.train) + len(self.dev)


def draw_budget(
    labels: Sequence[int],
    budget: int | None,
    seed: int,
    dev_fraction: float = 0.2,
    num_classes: int | None = None,
) -> Budget:
    """Draw `budget` labelled examples (stratified, every class present) and split off dev.

    Dev is a stratified `dev_fraction` slice of the budget with at least one example per class;
    train keeps at least one per class too, so a budget needs two examples per class.
    """
    labels = np.asarray(labels)
    present = np.unique(labels)
    k = num_classes if num_classes is not None else len(present)
    n = len(labels)
    if budget is None:
        budget = n
    if budget > n:
        raise DataError(
            f"budget {budget} is larger than the {n} training examples available; "
            f"use --budget {n} or less (data.budget=null takes them all)"
        )
    if len(present) < k:
        raise DataError(
            f"the training split has only {len(present)} of {k} classes; every class needs examples"
        )
    small = [int(c) for c, m in zip(*np.unique(labels, return_counts=True), strict=True) if m < 2]
    if small:
        raise DataError(
            f"class(es) {small} have fewer than 2 training examples; each class needs one train "
            "and one dev example: add examples of those classes or merge them"
        )
    if budget < 2 * k:
        raise DataError(
            f"budget {budget} is too small for {k} classes: each class needs one train and one dev "
            f"example; use --budget {2 * k} or more"
        )
    chosen, _ = stratified_split(labels, budget, seed, minimum=2)
    n_dev = max(round(budget * dev_fraction), k)
    dev_pos, train_pos = stratified_split(
        labels[chosen], n_dev, seed + 1_000_003, minimum=1, keep=1
    )
    return Budget(train=chosen[train_pos], dev=chosen[dev_pos], seed=seed)
