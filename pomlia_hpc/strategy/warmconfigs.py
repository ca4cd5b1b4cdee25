"""The warm start of a recommendation: the AutoML configurations ``pomlia recommend`` passes on
(``initial``, ``--write-initial``), from the recommended strategies the AutoML space can express
and the hyperparameter settings that did well on the most similar tasks
(:mod:`.hparams`). Used by :func:`pomlia_hpc.strategy.recommend.recommend`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from pomlia_hpc.registry import Registry
from pomlia_hpc.strategy.hparams import (
    MAX_TASKS,
    by_strategy,
    of_strategy,
    score_hparams,
    task_best,
    task_median_regret,
    task_runs,
)
from pomlia_hpc.strategy.learner import Matrix
from pomlia_hpc.strategy.translate import Sources, to_automl, with_hparams

__all__ = ["WARM_MARGIN", "settings_reader", "warm_configs"]


#: A strategy joins the warm start only when its expected regret is within this many metric
#: points (x 100) of the best expressible strategy's: one the knowledge base expects to lose by
#: more is not supported by the recommendation, and its architecture would widen the space that
#: the warm start narrows (a 28-px MobileNet expected 40 points behind a small CNN once took a
#: third of a warm-started study's initial design).
WARM_MARGIN = 5.0


def warm_configs(
    m: Matrix,
    expected_regret: np.ndarray,
    allowed: list[int],
    w: np.ndarray,
    src: Sources,
    hp: dict[int, dict[str, Any]],
    k: int,
    archs: tuple[str, ...] | None,
    settings_of: Callable[[int], list[tuple[float, dict[str, Any]]]] | None = None,
) -> list[dict[str, Any]]:
    """The warm start: up to ``k`` distinct AutoML configurations from the strategies in
    ``allowed`` (best first) that the space can express and that are within
    :data:`WARM_MARGIN` of the best. Round by round, each such strategy gives its next
    hyperparameter setting: from ``settings_of(j)`` (settings scored over the similar tasks
    against each task's best run of any strategy, :func:`pomlia_hpc.strategy.hparams.
    score_hparams`) when it gives any, else those of its best run on the next most similar
    task (weights ``w``); with fewer good strategies than ``k``, the good ones give more
    settings rather than a poor strategy filling the design. The strategies with scored
    settings go first, lowest score of their best setting first: the first configuration, which
    a study trains at the full budget before its search, is the single setting with the lowest
    similarity-weighted regret, whichever strategy it belongs to. Strategies without runs
    (published tables) give one configuration with the space's defaults."""
    expressible = []
    for j in allowed:
        values, _ = to_automl(m.strategies[j], src)
        if values is not None and (archs is None or values["arch"] in archs):
            expressible.append((j, values))
    if not expressible:
        return []
    best = min(float(expected_regret[j]) for j, _ in expressible)
    near = list(np.argsort(-w, kind="stable"))
    eligible = [
        (j, values) for j, values in expressible if float(expected_regret[j]) <= best + WARM_MARGIN
    ]
    scored = {j: settings_of(j) if settings_of is not None else [] for j, _ in eligible}
    # Stable: strategies without scored settings keep their expected-regret order, after.
    eligible.sort(key=lambda e: scored[e[0]][0][0] if scored[e[0]] else math.inf)
    cache: dict[int, list[dict[str, Any]]] = {}

    def ranked(j: int) -> list[dict[str, Any]]:
        if j not in cache:
            got = [h for _, h in scored[j]]
            if not got:
                runs = [m.evidence[(int(i), j)][0] for i in near if (int(i), j) in m.evidence]
                got = [hp[r] for r in runs if r in hp]
            cache[j] = got
        return cache[j]

    initial: list[dict[str, Any]] = []
    depth = 0
    while depth == 0 or any(depth < len(ranked(j)) for j, _ in eligible):
        for j, values in eligible:
            settings = ranked(j)
            if depth < len(settings):
                config = with_hparams(values, settings[depth])
            elif depth == 0:
                config = values
            else:
                continue
            if config not in initial:
                initial.append(config)
            if len(initial) >= k:
                return initial
        depth += 1
    return initial


def settings_reader(
    registry: Registry, m: Matrix, w: np.ndarray, near_runs: list[int]
) -> Callable[[int], list[tuple[float, dict[str, Any]]]]:
    """``settings_of(j)``: strategy ``j``'s hyperparameter settings scored over the most
    similar tasks with runs (``near_runs``, most similar first); their runs are read once,
    when first needed."""
    run_tasks = {m.datasets[i]: float(w[i]) for i in near_runs[:MAX_TASKS]}
    fetched: list[Any] = []

    def settings_of(j: int) -> list[tuple[float, dict[str, Any]]]:
        if not fetched:
            read = task_runs(registry, run_tasks)
            fetched.extend(
                [
                    by_strategy(read.runs),
                    read.floor,
                    task_best(read.runs),
                    task_median_regret(read.runs),
                ]
            )
        groups, floor, best, typical = fetched
        return score_hparams(
            of_strategy(groups, m.strategies[j]), run_tasks, floor, best, absent=typical
        )

    return settings_of
