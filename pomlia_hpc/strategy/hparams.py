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
strategy on that task, among the runs at the task's largest budget (runs of a Hyperband study
at lower budgets are not comparable with them).
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

#: Runs read per task (the best by validation objective): enough to rank the settings of the
#: strategies that did well there, and reading them stays fast with many runs in the registry.
RUNS_PER_TASK = 300
#: The most similar tasks whose runs are read.
MAX_TASKS = 5


@dataclass(frozen=True)
class HpRun:
    """One finished run of a strategy: its task, hyperparameters, budget and objective."""

    task: str
    hparams: dict[str, Any]
    budget: float
    objective: float


def hp_key(hparams: Mapping[str, Any]) -> str:
    """A setting's identity: the hyperparameters, numbers to 4 significant digits."""

    def norm(v: Any) -> Any:
        return float(f"{v:.4g}") if isinstance(v, float) else v

    return json.dumps({k: norm(v) for k, v in sorted(hparams.items())}, sort_keys=True)


@dataclass(frozen=True)
class TaskRun:
    """One finished, successful run of a task, any strategy."""

    task: str
    config: dict[str, Any]
    budget: float
    objective: float


def task_runs(registry: Registry, tasks: Iterable[str]) -> list[TaskRun]:
    """The successful runs of ``tasks`` (names), at most :data:`RUNS_PER_TASK` per task, best
    validation objective first (one query per task)."""
    names = list(tasks)
    if not names:
        return []
    objective = Run.metrics["objective"].as_float()
    out: list[TaskRun] = []
    with registry.session() as s:
        ids = dict(s.execute(select(Task.id, Task.name).where(Task.name.in_(names))).all())
        for tid, tname in ids.items():
            q = (
                select(Run.config, Run.budget, objective)
                .where(Run.task_id == tid, Run.status == "ok", objective.is_not(None))
                .order_by(objective.desc())
                .limit(RUNS_PER_TASK)
            )
            for config, budget, obj in s.execute(q):
                out.append(TaskRun(tname, dict(config or {}), float(budget or 0.0), float(obj)))
    return out


def _fields(c: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """A run configuration's or a strategy's (architecture, initial weights, mode, extra)."""
    return (
        str(c.get("arch") or ""),
        str(c.get("init") or "scratch"),
        str(c.get("mode") or "full"),
        str(c.get("extra_data") or "none"),
    )


def by_strategy(runs: Iterable[TaskRun]) -> dict[tuple[str, str, str, str], list[HpRun]]:
    """``runs`` grouped by strategy fields (:func:`of_strategy` looks them up)."""
    out: dict[tuple[str, str, str, str], list[HpRun]] = defaultdict(list)
    for r in runs:
        hp = {k: r.config[k] for k in HPARAMS if r.config.get(k) is not None}
        out[_fields(r.config)].append(HpRun(r.task, hp, r.budget, r.objective))
    return out


def of_strategy(
    groups: Mapping[tuple[str, str, str, str], list[HpRun]], strategy: Mapping[str, Any]
) -> list[HpRun]:
    """The runs of ``strategy`` (architecture, initial weights, mode, extra data) in
    ``groups`` (:func:`by_strategy`)."""
    return list(groups.get(_fields(strategy), []))


def strategy_runs(
    registry: Registry, tasks: Iterable[str], strategy: Mapping[str, Any]
) -> list[HpRun]:
    """The runs of ``strategy`` among :func:`task_runs` of ``tasks``."""
    return of_strategy(by_strategy(task_runs(registry, tasks)), strategy)


def rank_hparams(runs: Iterable[HpRun], weights: Mapping[str, float]) -> list[dict[str, Any]]:
    """The settings of ``runs``, best first (see the module docstring); ``weights``: each
    task's similarity weight (tasks without one are ignored)."""
    by_task: dict[str, list[HpRun]] = defaultdict(list)
    for r in runs:
        if weights.get(r.task, 0.0) > 0:
            by_task[r.task].append(r)
    regret: dict[str, dict[str, float]] = {}  # task -> setting -> regret (points)
    median: dict[str, float] = {}
    settings: dict[str, dict[str, Any]] = {}
    for task, rs in by_task.items():
        top = max(r.budget for r in rs)
        full = [r for r in rs if r.budget >= top]
        best = max(r.objective for r in full)
        per: dict[str, float] = {}
        for r in full:
            key = hp_key(r.hparams)
            settings.setdefault(key, r.hparams)
            per[key] = min(per.get(key, float("inf")), 100.0 * (best - r.objective))
        regret[task], median[task] = per, statistics.median(per.values())
    total = sum(weights[t] for t in regret)
    if not settings or total <= 0:
        return []

    def score(key: str) -> tuple[float, int]:
        s = sum(weights[t] * regret[t].get(key, median[t]) for t in regret) / total
        return (round(s, 9), -sum(key in regret[t] for t in regret))

    return [settings[k] for k in sorted(settings, key=score)]
