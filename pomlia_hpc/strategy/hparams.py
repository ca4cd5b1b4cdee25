"""Which hyperparameters a recommended strategy passes on to the AutoML warm start.

A strategy (architecture, initial weights, training mode, ...) was run with many
hyperparameter settings on the registry's tasks. Taking the best run on the most similar task
transfers whatever won there by chance: with a few random configurations per task, the winner
on one task can collapse on the next (a learning rate that is just stable on one data set).
:func:`rank_hparams` instead scores each setting by its similarity-weighted regret over every
similar task it was run on, a task where it was not run counting as that task's median regret
(a typical setting), so a setting that did well on several similar tasks comes before one that
won on one task only. When no setting was run on more than one task (and the tasks' medians
are alike), this is the best setting of the most similar task first, as before.

Regret here is on the validation objective, in points (x 100), against the best run of the
strategy on that task among its runs at its largest budget (runs of a Hyperband study at lower
budgets are not comparable with them), or, to compare settings across strategies as the warm
start does, against the task's best run of any strategy (:func:`task_best`).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from pomlia_hpc.registry import Registry, Run, Task
from pomlia_hpc.strategy.kb import HPARAMS
from pomlia_hpc.strategy.runstats import run_strategy

#: Runs read per task (the best by validation objective): enough to rank the settings of the
#: strategies that did well there, and reading them stays fast with many runs in the registry.
RUNS_PER_TASK = 300
#: The most similar tasks whose runs are read.
MAX_TASKS = 5

#: A strategy's (architecture, initial weights, training mode, extra data), as
#: :func:`pomlia_hpc.strategy.runstats.run_strategy` names them (image size left out).
StrategyFields = tuple[str, str, str, str]


@dataclass(frozen=True)
class HpRun:
    """One finished, successful run: its task (name), values, budget (epochs) and validation
    objective (the study's objective, higher is better; regrets are in points, x 100).
    ``hparams``: the hyperparameters (:func:`by_strategy`), or the run's whole configuration
    as :func:`task_runs` reads it."""

    task: str
    hparams: dict[str, Any]
    budget: float
    objective: float


def hp_key(hparams: Mapping[str, Any]) -> str:
    """A setting's identity: the hyperparameters, numbers to 4 significant digits."""

    def norm(v: Any) -> Any:
        return float(f"{v:.4g}") if isinstance(v, float) else v

    return json.dumps({k: norm(v) for k, v in sorted(hparams.items())}, sort_keys=True)


def _exact(hparams: Mapping[str, Any]) -> str:
    """A setting's exact values as sorted JSON text (:func:`hp_key` rounds them)."""
    return json.dumps(dict(hparams), sort_keys=True, default=str)


@dataclass(frozen=True)
class SimilarRuns:
    """:func:`task_runs`' answer. ``floor``: for each task whose runs were cut at
    :data:`RUNS_PER_TASK`, the lowest objective read (a setting missing there may have run
    below it)."""

    runs: list[HpRun]
    floor: dict[str, float]


def task_runs(registry: Registry, tasks: Iterable[str]) -> SimilarRuns:
    """The successful runs of ``tasks`` (names), at most :data:`RUNS_PER_TASK` per task, best
    validation objective first (one query per task)."""
    names = list(tasks)
    out = SimilarRuns([], {})
    if not names:
        return out
    objective = Run.metrics["objective"].as_float()
    with registry.session() as s:
        ids = dict(s.execute(select(Task.id, Task.name).where(Task.name.in_(names))).all())
        for tid, tname in ids.items():
            q = (
                select(Run.config, Run.budget, objective)
                .where(Run.task_id == tid, Run.status == "ok", objective.is_not(None))
                .order_by(objective.desc(), Run.id)  # one cut on ties, on either backend
                .limit(RUNS_PER_TASK + 1)  # one more: were any runs cut?
            )
            rows = [
                HpRun(tname, dict(config or {}), float(budget or 0.0), float(obj))
                for config, budget, obj in s.execute(q)
            ]
            out.runs.extend(rows[:RUNS_PER_TASK])
            if len(rows) > RUNS_PER_TASK:
                out.floor[tname] = rows[RUNS_PER_TASK - 1].objective
    return out


def _fields(c: Mapping[str, Any]) -> StrategyFields:
    """A run configuration's or a strategy's (architecture, initial weights, mode, extra), with
    the knowledge base's defaults (:func:`pomlia_hpc.strategy.runstats.run_strategy`)."""
    f = run_strategy(dict(c), 0)
    return (f["arch"], f["init"], f["mode"], f["extra_data"])


def by_strategy(runs: Iterable[HpRun]) -> dict[StrategyFields, list[HpRun]]:
    """``runs`` (whole configurations) grouped by strategy fields, each keeping its
    hyperparameters (:func:`of_strategy` looks them up)."""
    out: dict[StrategyFields, list[HpRun]] = defaultdict(list)
    for r in runs:
        hp = {k: r.hparams[k] for k in HPARAMS if r.hparams.get(k) is not None}
        out[_fields(r.hparams)].append(HpRun(r.task, hp, r.budget, r.objective))
    return out


def of_strategy(
    groups: Mapping[StrategyFields, list[HpRun]], strategy: Mapping[str, Any]
) -> list[HpRun]:
    """The runs of ``strategy`` (architecture, initial weights, mode, extra data) in
    ``groups`` (:func:`by_strategy`)."""
    return list(groups.get(_fields(strategy), []))


def strategy_runs(
    registry: Registry, tasks: Iterable[str], strategy: Mapping[str, Any]
) -> list[HpRun]:
    """The runs of ``strategy`` among :func:`task_runs` of ``tasks``."""
    return of_strategy(by_strategy(task_runs(registry, tasks).runs), strategy)


def task_best(runs: Iterable[HpRun]) -> dict[str, float]:
    """Each task's best objective among its runs at its largest budget, any strategy: the
    reference that makes settings of different strategies comparable (:func:`score_hparams`)."""
    top: dict[str, float] = {}
    best: dict[str, float] = {}
    for r in runs:
        if r.budget > top.get(r.task, -1.0):
            top[r.task], best[r.task] = r.budget, r.objective
        elif r.budget == top[r.task]:
            best[r.task] = max(best[r.task], r.objective)
    return best


def task_median_regret(runs: Iterable[HpRun]) -> dict[str, float]:
    """Each task's median regret (points) among its runs at its largest budget, any strategy,
    against its best there: what a strategy that never ran on the task counts when settings of
    different strategies are compared (:func:`score_hparams`' ``absent``)."""
    top: dict[str, float] = {}
    for r in runs:
        top[r.task] = max(top.get(r.task, -1.0), r.budget)
    full: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        if r.budget == top[r.task]:
            full[r.task].append(r.objective)
    return {t: statistics.median(100.0 * (max(v) - x) for x in v) for t, v in full.items()}


def rank_hparams(
    runs: Iterable[HpRun],
    weights: Mapping[str, float],
    floor: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """The settings of ``runs``, best first (see the module docstring); ``weights``: each
    task's similarity weight (tasks without one are ignored); ``floor``: :attr:`SimilarRuns.
    floor`."""
    return [h for _, h in score_hparams(runs, weights, floor)]


def score_hparams(
    runs: Iterable[HpRun],
    weights: Mapping[str, float],
    floor: Mapping[str, float] | None = None,
    reference: Mapping[str, float] | None = None,
    absent: Mapping[str, float] | None = None,
) -> list[tuple[float, dict[str, Any]]]:
    """(similarity-weighted regret in points, setting) for the settings of ``runs``, lowest
    first. Regret on a task is against ``reference[task]`` (:func:`task_best`, to compare
    settings across strategies) or else against the best run in ``runs`` there. A setting
    missing on a task counts as the task's median regret, or, where the task's runs were cut
    (``floor``), at least as far behind as the last run read: it may have run below it.
    ``absent`` (:func:`task_median_regret`, to compare across strategies): a weighted task
    where none of ``runs`` ran counts with that regret, so a strategy tried on one distant
    task only does not score as if that task were all there is."""
    by_task: dict[str, list[HpRun]] = defaultdict(list)
    for r in runs:
        if weights.get(r.task, 0.0) > 0:
            by_task[r.task].append(r)
    regret: dict[str, dict[str, float]] = {}  # task -> setting -> regret (points)
    missing: dict[str, float] = {}
    settings: dict[str, dict[str, Any]] = {}
    for task, rs in sorted(by_task.items()):  # one summation order, whatever the rows'
        top = max(r.budget for r in rs)
        full = [r for r in rs if r.budget >= top]
        best = max(r.objective for r in full)
        if reference is not None and task in reference:
            best = max(best, reference[task])
        per: dict[str, float] = {}
        for r in full:
            key = hp_key(r.hparams)
            # Of the values one key rounds together, the same one whatever order the database
            # returned the runs in (the smallest exact text), so the warm start repeats.
            if key not in settings or _exact(r.hparams) < _exact(settings[key]):
                settings[key] = r.hparams
            per[key] = min(per.get(key, float("inf")), 100.0 * (best - r.objective))
        regret[task], missing[task] = per, statistics.median(per.values())
        if floor is not None and task in floor:
            missing[task] = max(missing[task], 100.0 * (best - floor[task]))
    if settings:
        for task, typical in (absent or {}).items():
            if weights.get(task, 0.0) > 0 and task not in regret:
                regret[task], missing[task] = {}, typical
    total = sum(weights[t] for t in regret)
    if not settings or total <= 0:
        return []

    def score(key: str) -> tuple[float, int, str]:
        s = sum(weights[t] * regret[t].get(key, missing[t]) for t in regret) / total
        # Ties (common: settings run on one task each, equally far behind) go by the
        # setting's text, not by the order the database returned the runs in.
        return (round(s, 9), -sum(key in regret[t] for t in regret), key)

    return [(score(k)[0], settings[k]) for k in sorted(settings, key=score)]
