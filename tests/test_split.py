import numpy as np
import pytest

from tlprune.data import split
from tlprune.data.split import draw_budget, stratified_split
from tlprune.errors import DataError


def labels(counts):
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)])


def test_test_split_size():
    assert split.test_split_size(3610) == 722
    assert split.test_split_size(2225) == 445
    assert split.test_split_size(1000) == 400
    assert split.test_split_size(100) == 50


@pytest.mark.parametrize("budget", [4, 10, 64, 256, 1000])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_budget_stratified_disjoint_and_all_classes(budget, seed):
    y = labels([700, 250, 50])
    b = draw_budget(y, budget, seed, num_classes=3) if budget >= 6 else None
    if b is None:
        with pytest.raises(DataError, match="too small"):
            draw_budget(y, budget, seed, num_classes=3)
        return
    assert b.size == budget
    assert len(np.intersect1d(b.train, b.dev)) == 0
    for part in (b.train, b.dev):
        assert set(y[part]) == {0, 1, 2}
    assert len(b.dev) == max(round(0.2 * budget), 3)
    # stratified: each class within one example (plus the minimum) of its proportional share
    share = np.bincount(y[np.concatenate([b.train, b.dev])], minlength=3) / budget
    assert np.all(np.abs(share - np.array([0.7, 0.25, 0.05])) <= 2 / budget + 1e-9)


def test_budget_dev_size_at_64():
    y = labels([1500, 1500])
    assert len(draw_budget(y, 64, 0).dev) == 13


def test_budget_deterministic_and_seed_dependent():
    y = labels([500, 500])
    a, b, c = draw_budget(y, 100, 3), draw_budget(y, 100, 3), draw_budget(y, 100, 4)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.dev, b.dev)
    assert not np.array_equal(a.train, c.train)


def test_budget_pinned_selection():
    # Same seed, same examples on any machine: pin the first draw (PCG64 is platform-stable).
    b = draw_budget(labels([50, 50]), 10, seed=0)
    assert b.train.tolist() == [4, 18, 23, 36, 51, 55, 79, 89]
    assert b.dev.tolist() == [2, 66]


def test_budget_errors():
    y = labels([10, 10])
    with pytest.raises(DataError, match="larger than the 20"):
        draw_budget(y, 21, 0)
    with pytest.raises(DataError, match="too small for 2 classes"):
        draw_budget(y, 3, 0)
    with pytest.raises(DataError, match="fewer than 2"):
        draw_budget(labels([10, 1]), 6, 0)
    with pytest.raises(DataError, match="only 2 of 3"):
        draw_budget(y, 8, 0, num_classes=3)


def test_budget_none_uses_everything():
    y = labels([30, 20])
    b = draw_budget(y, None, 0)
    assert b.size == 50


def test_stratified_split_minimum_and_keep():
    y = labels([98, 2])
    sel, rest = stratified_split(y, 10, 0, minimum=1, keep=1)
    assert (y[sel] == 1).sum() == 1 and (y[rest] == 1).sum() == 1
    assert len(sel) == 10 and len(rest) == 90
