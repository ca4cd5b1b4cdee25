"""What a recommended strategy will cost as it runs here, the cost limits, and the cost/metric
Pareto front (for :func:`pomlia_hpc.strategy.recommend.recommend`).

A strategy the AutoML space can express runs as its translation (:func:`~.translate.to_automl`):
a published ``ResNet-18 pretrained/full 224px`` without ImageNet weights here runs as
``resnet18 scratch/full`` at the task's input size. Its cost, and the limits ``--max-cost`` and
``--max-gpu-hours``, are those of that run (:func:`runs_as`): measured on the registry's runs
of the translated strategy where there are some, else estimated for it. Strategies the space
cannot express keep the published strategy's cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pomlia_hpc.errors import InputError
from pomlia_hpc.strategy import cost as costs
from pomlia_hpc.strategy.learner import Matrix
from pomlia_hpc.strategy.longformat import strategy_key
from pomlia_hpc.strategy.runstats import run_strategy

#: A strategy whose values come from data sets of at most this summed similarity weight has
#: no evidence here worth the name: it is not put on the Pareto front (its expected value
#: would rest on data sets the ranking gives no weight).
MIN_EVIDENCE_WEIGHT = 0.01


class NothingFitsError(InputError):
    """No strategy meets the cost limits asked for (nothing is recorded)."""


def runs_as(values: dict[str, Any] | None, image_size: int) -> dict[str, Any] | None:
    """The strategy that AutoML values ``values`` run as on a task of ``image_size`` px
    (``None`` for ``None``: not expressible), in the registry runs' spelling."""
    if values is None:
        return None
    return run_strategy(values, image_size)


def differs(published: dict[str, Any], run: dict[str, Any] | None) -> bool:
    """Whether running ``published`` here changes it (weights, mode, input size, extra
    images; the architecture's spelling aside)."""
    if run is None:
        return False
    same = ("init", "mode", "img_size")
    changed = any(str(published.get(f)) != str(run.get(f)) for f in same)
    extra = (published.get("extra_data") or "none") != (run.get("extra_data") or "none")
    return (
        changed
        or extra
        or costs.arch_key(str(published.get("arch"))) != costs.arch_key(str(run.get("arch")))
    )


def cost_reader(
    m: Matrix, by_weight: list[int], tasks: set[int], n_train: Callable[[int], int], n_now: int
) -> Callable[[dict[str, Any]], costs.Cost]:
    """``cost(strategy)``: one training run of ``strategy`` on this task (``n_now`` training
    images, its full budget): measured on the most similar data set (order ``by_weight``)
    where the matrix has a cost of that strategy (``n_train(i)``: data set ``i``'s training
    images; a registry task's cost is one run at its full budget, start-up once, so only the
    epochs scale), else estimated from compute."""
    column = {k: j for j, k in enumerate(m.keys)}

    def cost(strategy: dict[str, Any]) -> costs.Cost:
        j = column.get(strategy_key(strategy))
        if j is not None:
            for i in by_weight:
                if np.isfinite(m.cost_s[i, j]):
                    then = n_train(i)
                    startup = m.startup_s[i, j] if m.startup_s is not None else np.nan
                    epochs = (
                        (costs.full_epochs(then), costs.full_epochs(n_now)) if i in tasks else None
                    )
                    return costs.measured(
                        float(m.cost_s[i, j]),
                        then,
                        n_now,
                        epochs,
                        startup_s=float(startup) if np.isfinite(startup) else 0.0,
                    )
        return costs.estimate(strategy, n_now)

    return cost


def within_limits(
    order: list[int],
    all_costs: dict[int, costs.Cost],
    max_cost_s: float | None,
    max_gpu_hours: float | None,
) -> list[int]:
    """The strategies of ``order`` whose expected cost meets the limits (seconds, GPU-hours);
    none is :class:`NothingFitsError` (an empty answer, recorded, read as a missing space)."""
    allowed = [
        j
        for j in order
        if (max_cost_s is None or all_costs[j].wall_s <= max_cost_s)
        and (max_gpu_hours is None or all_costs[j].gpu_hours <= max_gpu_hours)
    ]
    if not allowed:
        cheapest = min(all_costs.values(), key=lambda c: c.wall_s)
        raise NothingFitsError(
            f"no strategy fits {_limits(max_cost_s, max_gpu_hours)} on this task: the cheapest "
            f"expected costs {cheapest.wall_s:.0f} s ({cheapest.gpu_hours:.2g} GPU-hours); "
            "raise the limit or leave it out"
        )
    return allowed


def _limits(max_cost_s: float | None, max_gpu_hours: float | None) -> str:
    """The cost limits asked for, as the command line names them."""
    parts = [f"--max-cost {max_cost_s:g} s"] if max_cost_s is not None else []
    if max_gpu_hours is not None:
        parts.append(f"--max-gpu-hours {max_gpu_hours:g}")
    return " and ".join(parts)


def pareto(
    allowed: list[int],
    expected_regret: np.ndarray,
    evidence_weight: np.ndarray,
    all_costs: dict[int, costs.Cost],
) -> list[int]:
    """The cost/metric Pareto front of the allowed strategies (cheapest first), on the
    expected regret the ranking orders them by (lower is better), among those with evidence
    weight above :data:`MIN_EVIDENCE_WEIGHT`; costs within 1 % or 1 s of each other count
    as equal (``cost.COST_TIE_REL``, ``COST_TIE_S``)."""
    backed = [j for j in allowed if float(evidence_weight[j]) > MIN_EVIDENCE_WEIGHT]
    front = costs.pareto_front(
        [all_costs[j].wall_s for j in backed],
        [-float(expected_regret[j]) for j in backed],
        rel_tol=costs.COST_TIE_REL,
        abs_tol=costs.COST_TIE_S,
    )
    return [backed[i] for i in front]
