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

#: Runs read per task and strategy (the best by validation objective): enough to rank the
#: settings, and :func:`strategy_runs` stays fast with many runs in the registry.
RUNS_PER_TASK = 200


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


def strategy_runs(
    registry: Registry, tasks: Iterable[str], strategy: Mapping[str, Any]
) -> list[HpRun]:
    """The finished, successful runs of ``strategy`` on ``tasks`` (names), at most
    :data:`RUNS_PER_TASK` per task, best validation objective first."""
    names = list(tasks)
    if not names:
        return []
    arch, init = str(strategy.get("arch", "")), str(strategy.get("init", "scratch"))
    mode, extra = str(strategy.get("mode", "full")), str(strategy.get("extra_data", "none"))
    objective = Run.metrics["objective"].as_float()
    out: list[HpRun] = []
    with registry.session() as s:
        ids = dict(s.execute(select(Task.id, Task.name).where(Task.name.in_(names))).all())
        for tid, tname in ids.items():
            q = (
                select(Run.config, Run.budget, objective)
                .where(Run.task_id == tid, Run.status == "ok", objective.is_not(None))
                .where(Run.config["arch"].as_string() == arch)
                .order_by(objective.desc())
                .limit(RUNS_PER_TASK)
            )
            for config, budget, obj in s.execute(q):
                c = dict(config or {})
                if (
                    str(c.get("init") or "scratch") != init
                    or str(c.get("mode") or "full") != mode
                    or str(c.get("extra_data") or "none") != extra
                ):
                    continue
                hp = {k: v for k, v in c.items() if k in HPARAMS and v is not None}
                out.append(HpRun(tname, hp, float(budget or 0.0), float(obj)))
    return out


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
