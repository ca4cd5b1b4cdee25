"""How recorded recommendations turned out: the runs on their task after each answer.

Every answer of ``pomlia recommend`` is recorded (``recommendations``). Once runs have been
made on its task since (a study warm-started from it, a loop's retraining), this module scores
it against them: for each strategy of the answer's top k, the runs that used it and the best of
them (the run with the best validation objective, scored by its test value of the task's
metric, as the knowledge base does), and the regret, in metric points (x 100), of the answer's
first pick and of the best of its top k against the best run made since. A strategy matches a
run when its AutoML translation (or, for a strategy of the registry's own runs, the strategy
itself) has the run's architecture, initial weights, training mode and extra data; published
strategies that the AutoML space cannot run never match. The answer's AutoML warm-start
configurations (``initial``, what ``--from-recommendation`` and the loop start from) are scored
by the runs of those configurations themselves: a run matches one when its configuration has
every hyperparameter value of it (a study's initial design, the warm start's first training,
a final training of it), not by its strategy, since a later run of the same architecture with
the optimiser's own hyperparameters says nothing about the configuration recommended. Regrets
are ``None`` while none of the picks has run: the answer has not been tested yet.

A run counts as the knowledge base counts it (:func:`~pomlia_hpc.strategy.kb.counted_epochs`):
one that reached fewer epochs than a third of its task's full budget, or 9 if fewer (a 1-epoch
test study), scores nothing, neither a pick nor the best since; ``n_short`` counts them. A run
that does not say how many epochs it reached counts, as in the knowledge base.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from math import isclose
from typing import Any

from sqlalchemy import select

from pomlia_hpc.registry import Recommendation, Registry, Run, Task
from pomlia_hpc.registry.lookup import by_name_or_id, check_limit
from pomlia_hpc.strategy.kb import counted_epochs_by_task
from pomlia_hpc.strategy.runstats import run_strategy

#: The strategy fields a run's configuration and a recommended strategy are matched on.
MATCH_FIELDS = ("arch", "init", "mode", "extra_data")


@dataclass(frozen=True)
class PickOutcome:
    """One strategy of the answer's top k and what its runs since reached."""

    rank: int
    strategy: dict[str, Any]
    expected: float | None  # the answer's expected value, [0, 1]
    n_runs: int  # ok since the answer, with a validation objective and a test value
    value: float | None  # test value of its best-validation run, [0, 1]
    run_id: int | None
    regret: float | None  # points against the best run since


@dataclass(frozen=True)
class Outcome:
    """One recorded answer scored against the runs on its task since."""

    recommendation_id: int
    task: str
    metric: str
    created_at: datetime
    learner: str
    n_runs: int  # the same, of any strategy
    #: ok since the answer, with a test value, but below the knowledge base's counted
    #: epochs (:func:`~pomlia_hpc.strategy.kb.counted_epochs`): not scored.
    n_short: int
    best_value: float | None
    best_run_id: int | None
    best_strategy: dict[str, Any] | None
    picks: list[PickOutcome]
    #: The AutoML warm-start configurations, in their order, each scored by the runs of that
    #: very configuration (every hyperparameter value of it), not of its strategy.
    warm: list[PickOutcome]
    top1_regret: float | None  # the first pick's regret (None: it has not run)
    topk_regret: float | None  # the best pick's regret (None: none has run)
    warm_regret: float | None  # the best warm-start configuration's regret

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain data; ``created_at`` stays a datetime, which the JSON printer
        writes as every list's times (ISO 8601 to the second, with the zone): its own
        ``isoformat()`` gave microseconds."""
        return asdict(self)


def _fields(config: dict[str, Any]) -> tuple[str, ...]:
    """The :data:`MATCH_FIELDS` of a configuration, with the knowledge base's defaults."""
    strategy = run_strategy(config, 0)
    return tuple(strategy[f] for f in MATCH_FIELDS)


def _pick_fields(pick: dict[str, Any]) -> tuple[str, ...] | None:
    """What a recommended strategy runs as: its AutoML translation, else (a registry strategy,
    whose architecture names the AutoML's own) the strategy; None when it cannot run here."""
    automl = pick.get("automl")
    if isinstance(automl, dict):
        return _fields(automl)
    if pick.get("note"):  # the translation failed: not in the AutoML space
        return None
    return _fields(pick.get("strategy") or {})


def _same_values(entry: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether a run's ``config`` has every hyperparameter value of the warm-start ``entry``
    (numbers within a relative 1e-6: the registry's JSON may round the last digits)."""
    for name, want in entry.items():
        got = config.get(name)
        if isinstance(want, int | float) and isinstance(got, int | float) and _number(want):
            if not _number(got) or not isclose(want, got, rel_tol=1e-6):
                return False
        elif got != want:
            return False
    return True


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _score(runs: list[tuple[int, float, float]]) -> tuple[int, float] | None:
    """(run id, test value) of the run with the best validation objective."""
    if not runs:
        return None
    run_id, _, value = max(runs, key=lambda r: (r[1], -r[0]))
    return run_id, value


def _points(best: float | None, value: float | None) -> float | None:
    return None if best is None or value is None else round(100.0 * (best - value), 3)


def outcomes(registry: Registry, task: str | None = None, limit: int = 20) -> list[Outcome]:
    """The newest ``limit`` recorded answers (of ``task``, a name or id, if given) scored
    against the runs on their task since each was made; newest first."""
    check_limit(limit)
    with registry.session() as s:
        q = select(Recommendation).order_by(Recommendation.id.desc()).limit(limit)
        if task is not None:
            q = q.where(Recommendation.task_id == by_name_or_id(s, Task, task, "task").id)
        recs = list(s.scalars(q))
        for r in recs:
            s.expunge(r)
    return score_answers(registry, recs)


def score_answers(registry: Registry, recs: Sequence[Recommendation]) -> list[Outcome]:
    """Score recorded answers already read (detached rows) against the runs on their tasks
    since each was made, in the order given: one query for the runs of all their tasks."""
    task_ids = {r.task_id for r in recs if r.task_id is not None}
    if not task_ids:
        return [_outcome(r, [], {}) for r in recs]
    with registry.session() as s:
        rows = s.execute(
            select(
                Run.id,
                Run.task_id,
                Run.created_at,
                Run.config,
                Run.metrics["objective"].as_float(),
                Run.metrics["test"],
                Run.metrics["epochs"].as_float(),
            ).where(Run.task_id.in_(task_ids), Run.status == "ok")
        ).all()
    least = counted_epochs_by_task(registry, task_ids)
    return [_outcome(r, rows, least) for r in recs]


def _outcome(rec: Recommendation, rows: Sequence[Any], least: dict[int, float]) -> Outcome:
    """``rec`` scored by ``rows`` (runs of :func:`score_answers`); ``least``: per task, the
    fewest epochs a run must reach to count."""
    metric = str((rec.inputs or {}).get("metric") or "")
    k = int((rec.inputs or {}).get("k") or 0) or None
    since: list[tuple[int, float, float, tuple[str, ...], dict[str, Any]]] = []
    n_short = 0
    for run_id, task_id, created, config, objective, test, epochs in rows:
        value = test.get(metric) if isinstance(test, dict) else None
        if task_id != rec.task_id or created < rec.created_at or objective is None:
            continue
        if value is not None and epochs is not None and epochs < least.get(task_id, 0.0):
            n_short += 1  # a 1-epoch test run is not what the strategy reaches
        elif value is not None:
            config = dict(config or {})
            since.append((run_id, float(objective), float(value), _fields(config), config))
    best = _score([r[:3] for r in since])
    best_value = best[1] if best else None
    best_fields = next((r[3] for r in since if best and r[0] == best[0]), None)

    def scored(
        rank: int,
        strategy: dict[str, Any],
        fields: tuple[str, ...] | None,
        expected: Any,
        values: dict[str, Any] | None = None,
    ) -> PickOutcome:
        """A pick scored by the runs of its strategy (``fields``), or with ``values`` (a
        warm-start configuration) by the runs of exactly that configuration."""
        if values is not None:
            mine = [r[:3] for r in since if _same_values(values, r[4])]
        else:
            mine = [r[:3] for r in since if fields is not None and r[3] == fields]
        got = _score(mine)
        value = got[1] if got else None
        return PickOutcome(
            rank=rank,
            strategy=strategy,
            expected=expected,
            n_runs=len(mine),
            value=value,
            run_id=got[0] if got else None,
            regret=_points(best_value, value),
        )

    output = rec.output or {}
    picks = [
        scored(
            int(p.get("rank") or i + 1),
            dict(p.get("strategy") or {}),
            _pick_fields(p),
            p.get("expected"),
        )
        for i, p in enumerate(list(output.get("strategies") or [])[:k])
    ]
    initial = [dict(c) for c in output.get("initial") or [] if isinstance(c, dict)]
    warm = [
        scored(i + 1, dict(zip(MATCH_FIELDS, _fields(c), strict=True)), None, None, values=c)
        for i, c in enumerate(initial)
    ]
    return Outcome(
        recommendation_id=rec.id,
        task=rec.task,
        metric=metric,
        created_at=rec.created_at,
        learner=f"{rec.learner} {rec.learner_version}",
        n_runs=len(since),
        n_short=n_short,
        best_value=best_value,
        best_run_id=best[0] if best else None,
        best_strategy=dict(zip(MATCH_FIELDS, best_fields, strict=True)) if best_fields else None,
        picks=picks,
        warm=warm,
        top1_regret=picks[0].regret if picks else None,
        topk_regret=_least(picks),
        warm_regret=_least(warm),
    )


def _least(picks: list[PickOutcome]) -> float | None:
    ran = [p.regret for p in picks if p.regret is not None]
    return min(ran) if ran else None
