"""``scripts/bench/automl_warm.py``: the (task, seed) pairs counted for the 50 % target."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.fixtures.factories import bench_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return bench_script("automl_warm")


def _study(method: str, seed: int, curve: list[tuple[int, float]]) -> dict[str, Any]:
    return {
        "method": method,
        "seed": seed,
        "curve": [list(p) for p in curve],
        "final": curve[-1][1],
        "epochs": curve[-1][0],
        "trials": [],
    }


def test_pairs_within_half_of_random_epochs_are_counted_per_seed(bench: ModuleType) -> None:
    rnd = [(9, 0.80), (18, 0.90), (27, 0.90)]
    task_a = [
        _study("random", 0, rnd),
        _study("random", 1, rnd),
        _study("warm", 0, [(9, 0.95), (33, 0.95)]),  # 9 of 27 epochs: within 50 %
        _study("warm", 1, [(9, 0.85), (24, 0.90)]),  # reached at 24 of 27: too late
        _study("warm", 2, [(9, 0.99)]),  # no random search of seed 2: not a pair
        _study("smac", 0, [(3, 0.5), (15, 0.95)]),  # 15 of 27: too late
        _study("smac", 1, [(3, 0.5), (12, 0.92)]),  # 12 of 27: within 50 %
    ]
    task_b = [_study("random", 0, rnd), _study("warm", 0, [(9, 0.7), (33, 0.8)])]  # never
    res = {
        "pieces": [],
        "tasks": {
            "bench_a": {"studies": task_a, "baselines": {"logreg": 0.5, "svc_rbf": 0.5}},
            "bench_b": {"studies": task_b, "baselines": {"logreg": 0.5, "svc_rbf": 0.5}},
        },
    }
    by_seed = {s["seed"]: s for s in task_a if s["method"] == "random"}
    assert bench.within_half([s for s in task_a if s["method"] == "warm"], by_seed) == (1, 2)
    md = bench.summarize(res, SimpleNamespace(budget=27))
    assert "- a: mean warm curve" in md and "per seed within 50 %: 1/2" in md
    assert (
        "- all tasks: random search's final reached within 50 % of its epochs in 1 of 3 "
        "(task, seed) pairs by warm-started SMAC, 1 of 2 by plain SMAC"
    ) in md


def test_a_random_search_without_a_result_is_no_pair_and_no_crash(bench: ModuleType) -> None:
    """A random search none of whose trials recorded anything has no final (None): the report
    compares nothing with it and still reports the other seeds."""
    rnd = [(9, 0.80), (18, 0.90), (27, 0.90)]
    empty = {**_study("random", 1, rnd), "curve": [], "final": None}
    studies = [
        _study("random", 0, rnd),
        empty,
        _study("warm", 0, [(9, 0.95)]),
        _study("warm", 1, [(9, 0.95)]),
    ]
    res = {"pieces": [], "tasks": {"bench_a": {"studies": studies, "baselines": {}}}}
    md = bench.summarize(res, SimpleNamespace(budget=27))
    assert "per seed within 50 %: 1/1" in md  # seed 1 has nothing to compare with
    assert "in 1 of 1 (task, seed) pairs by warm-started SMAC" in md
