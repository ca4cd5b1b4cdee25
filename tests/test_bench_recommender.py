"""``scripts/bench/recommender.py``: its variants never see the held-out data set's values."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from pomlia_hpc.strategy.learner import Matrix
from tests.fixtures.factories import bench_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return bench_script("recommender")


def _matrix(seed: int = 0, n: int = 6) -> Matrix:
    rng = np.random.default_rng(seed)
    strategies = [
        {"arch": a, "mode": md, "img_size": sz}
        for a in ("A", "B", "C")
        for md in ("full", "linear_probe")
        for sz in (28, 64)
    ]
    s = len(strategies)
    return Matrix(
        datasets=[f"d{i}" for i in range(n)],
        keys=[f"s{j}" for j in range(s)],
        strategies=strategies,
        values=rng.uniform(0.5, 0.95, (n, s)),
        fail=np.zeros((n, s)),
        std=np.full((n, s), 0.005),
        cost_s=np.full((n, s), np.nan),
        features=np.column_stack([rng.normal(size=n), rng.normal(size=n)]),
    )


def _calls(bench: ModuleType, m: Matrix, rule: Any, grid: list[Any], select: Any) -> list[Any]:
    """Every (parameters, training rows, picks) the harness asks ``rule`` for."""
    seen: list[Any] = []

    def spy(p: Any, f: Any) -> list[int]:
        picks = rule(p, f)
        seen.append((p, tuple(f.rows), f.h1, tuple(picks)))
        return picks

    bench.nested_loo(m, spy, grid, select, cheap=False)
    return seen


VARIANTS = [
    "cover (same h)",
    "cover (own h)",
    "rank (own top-3 h)",
    "distinct architectures",
    "noise-tolerant regrets",
    "optimistic picks 2-3",
    "near-best cover",
    "factorised regrets",
    "other metric pooled (training sets)",
    "precision-weighted data sets",
]


def test_every_variant_is_checked_for_leakage(bench: ModuleType) -> None:
    m = _matrix(0)
    assert sorted(bench.variants(m, False, m.values, np.full(6, 100.0))) == sorted(VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_picks_ignore_the_held_out_values(bench: ModuleType, variant: str) -> None:
    """Changing data set 0's values (both metrics) changes nothing the harness does while
    data set 0 is held out: its parameter choice and its picks come from the others only.
    Two different changes of its values (seeds 2 and 3) are enough for a pick that read them to
    differ; each costs a whole nested leave-one-out run of the variant."""
    m, other = _matrix(0), _matrix(1).values
    rule, grid, select = bench.variants(m, False, other, np.full(6, 100.0))[variant]
    first = _calls(bench, m, rule, grid, select)
    n = len(grid) * 5 + 1  # data set 0 held out comes first: 5 inner folds per grid point, then
    assert first[n - 1][1] == (1, 2, 3, 4, 5)  # the pick for data set 0 from the other 5
    for seed in (2, 3):
        m2, other2 = _matrix(0), other.copy()
        m2.values[0] = _matrix(seed).values[0] ** seed  # other values, other spread
        other2[0] = 1 - other2[0]
        rule2, _, _ = bench.variants(m2, False, other2, np.full(6, 100.0))[variant]
        again = _calls(bench, m2, rule2, grid, select)
        assert first[:n] == again[:n]
        assert first != again  # later, data set 0 is a training set and its values count


def test_variant_selection_uses_the_nested_loss(bench: ModuleType) -> None:
    """The selection rules pick what they say: the learner's h1 first, then h3 by best-of-k."""
    loss = {(1.0, 1.0): (1.0, 5.0), (1.0, 2.0): (9.0, 0.5), (2.0, 2.0): (3.0, 4.0)}
    loss[(2.0, 1.0)] = (0.0, 0.0)  # lowest overall, but h1 = 2 loses as the learner's h
    assert bench.by_h1_then_h3(loss) == (1.0, 2.0)
    assert bench.by_sum(loss) == (2.0, 1.0)
    assert bench.by_topk({"a": (0.0, 2.0), "b": (5.0, 1.0)}) == "b"


def test_cover_picks_what_the_first_pick_misses(bench: ModuleType) -> None:
    """Best-of-3 cover: after a first pick that fails on data set 1, the next pick is the one
    that is best there, not the second-best on average."""
    r = np.array([[0.0, 0.1, 5.0, 3.0], [6.0, 6.5, 0.0, 3.0]])
    picks = bench.greedy_cover(np.array([0.5, 0.5]), r, np.ones(4, bool), first=0, k=2)
    assert picks == [0, 2]


def test_precision_weighting_trusts_larger_test_sets(bench: ModuleType) -> None:
    """Two equally near data sets disagree: the one with the larger test set decides."""
    m = _matrix(0, n=2)
    m.values[:] = 0.8
    m.values[0, 0] = m.values[1, 1] = 0.9  # d0 prefers s0, d1 prefers s1
    rule = bench.precision_weighted(np.array([50.0, 5000.0]))
    f = bench.Fold(m, [0, 1], np.array([1.0, 1.0]), np.ones(len(m.keys), bool), math.inf)
    assert rule((math.inf, 0.25), f)[0] == 1
    assert rule((math.inf, None), f)[0] == 0  # unweighted: a tie, the first strategy wins


def test_a_training_data_set_without_candidate_values_is_skipped(bench: ModuleType) -> None:
    """Cheap candidates only, one data set has none of their values: it is left out of the
    scoring (as the learner's own bandwidth choice does), not a crash of every fold."""
    from pomlia_hpc.strategy import evaluate

    m = _matrix(0)
    for s in m.strategies[1::2]:
        s["img_size"], s["mode"] = 224, "full"  # not cheap
    cand = evaluate.cheap_mask(m)
    m.values[3, cand] = np.nan
    rule, grid, select = bench.variants(m, True, None, np.full(6, 100.0))["cover (same h)"]
    got = bench.nested_loo(m, rule, grid, select, cheap=True)
    assert all(math.isfinite(v) for v in got.values())
