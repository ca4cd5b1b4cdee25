"""The registry's runs, summarised per (task, strategy) and kept up to date incrementally.

:func:`refresh` examines the runs newer than the newest one examined before, plus those that
were still pending or running then (``kb_run_seen.done`` false): finished runs (``ok`` or
``crashed``) are folded into ``kb_run_stats`` and marked done, the others are examined again
next time. All in one transaction: each run is counted once, however often and from however
many processes the knowledge base is read. The first refresh of a large registry reads every
run once, in id order and :data:`BATCH` runs at a time (so its memory does not grow with the
runs); afterwards only the new and the unfinished ones (an id range and a short list, so the
query does not scan the runs table). Ids are handed out when a run is inserted but a run
becomes visible when its transaction commits, so on PostgreSQL a run can appear after a higher
id was examined: the last :data:`RECHECK` ids below the newest are looked at again for runs
never examined.

Of two runs with the same best validation objective, the one with the lower id counts (as
:mod:`.outcomes` breaks the tie), whichever order they were folded in.

Per (task, strategy): the number of runs and of crashed runs, the run with the best validation
objective and its test metric (the task's own metric), and the summed wall seconds (a run's
cost: its job's wall time from start to end, start-up included; see
:mod:`pomlia_hpc.automl.records`) of the successful runs and, of those whose trained epochs
are known, their summed seconds and epochs (seconds per epoch: their ratio), and of those
whose history gives each epoch's seconds, the seconds in epochs and the rest, start-up (the
job's: interpreter, imports, data, model build, evaluation; once per run, as the compute
estimate's fixed start-up: a measured cost is start-up plus
seconds per epoch times the epochs asked for). A successful run that reached fewer epochs than
the task's ``min_epochs`` (a third of its full budget, or 9 epochs if fewer) gives no value: its
count, best test value and epochs are kept apart, a lower bound (a 1-epoch test study says
little of what the strategy reaches at 60 epochs).

Each row carries the :data:`FORMAT` of the code that wrote it (``summary_format``). A row of
another format, above all one without (written by an older pomlia that stayed open across the
upgrade: a `loop watch` daemon, a pipeline driver), makes the next refresh build every summary
again, so no run is ranked by rules this code replaced. Changing how a run is counted means
raising :data:`FORMAT`, not a migration that empties the tables.

Runs deleted from the registry after they were counted (by hand: no command deletes runs) are
noticed by each refresh in one cheap query, and then every summary is built again from the
runs that remain.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, exists, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pomlia_hpc.automl.records import run_cost_s
from pomlia_hpc.registry import Job, KbRunSeen, KbRunStats, Registry, Run, Task
from pomlia_hpc.registry.db import lock_name
from pomlia_hpc.strategy.longformat import strategy_key

#: Statuses counted as runs of their strategy (``crashed``: a failure of it).
COUNTED = ("ok", "crashed")
#: Statuses examined once. A cancelled run is no run (nor failure) of its strategy. A resumed
#: study may submit it again under its id (it goes on from its checkpoint), and its later ``ok``
#: or ``crashed`` then makes the counts disagree, so the next refresh builds every summary again
#: (:func:`_forget_if_stale`): rare, and no wrong answer, where keeping every cancelled run of an
#: abandoned study on the waiting list would cost each refresh for good.
FINAL = (*COUNTED, "cancelled")
#: How many ids below the newest examined one are looked at again for runs that committed late
#: (concurrent inserts; a run's transaction is seconds long, far fewer runs start meanwhile).
RECHECK = 1000
#: How this code counts runs (short runs apart, start-up once per run: migration 0008's rules),
#: written into every row it writes; raise it when that changes. 2: a run's cost is its job's
#: wall time, start-up included (1 took an ok run's training call alone, so the start-up
#: measured as cost less epoch seconds missed the job's own start-up). 3: an old ok run of a
#: local job keeps its recorded cost (2 took its row's end, when its driver collected it).
FORMAT = 3
#: Runs a refresh reads per query (in id order): the first refresh of a large registry reads
#: every run, and a run's row with its training history is a few KB, so its memory stays at
#: one batch (a few MB) rather than growing with the runs (~0.5 GB at 100,000).
BATCH = 2000


def run_strategy(config: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The strategy fields of a run's configuration (the rest are hyperparameters)."""
    return {
        "arch": str(config.get("arch") or "small_cnn"),
        "init": str(config.get("init") or "scratch"),
        "mode": str(config.get("mode") or "full"),
        "img_size": int(image_size),
        "extra_data": str(config.get("extra_data") or "none"),
    }


def _strategy_of(row: Any, image_size: int) -> dict[str, Any]:
    config = {"arch": row[4], "init": row[5], "mode": row[6], "extra_data": row[7]}
    return run_strategy(config, image_size)


def refresh(
    registry: Registry, image_sizes: dict[int, int], min_epochs: dict[int, float] | None = None
) -> int:
    """Fold the finished runs not counted yet; returns how many. ``image_sizes``: the input
    size of each task (by id), part of a strategy; ``min_epochs``: per task, the fewest epochs
    a run must have reached for its value to count as the strategy's (fewer: a short run, kept
    apart as a lower bound; a run that does not say how far it trained counts). Refreshes
    take one write lock first (:func:`~pomlia_hpc.registry.db.lock_name`), so a second one
    waits and then sees what the first folded. Should another process fold the same runs
    anyway (an older pomlia, which takes no lock), this one's transaction fails on
    ``kb_run_seen`` (nothing of it stays); it then reads what the other one folded."""
    try:
        return _refresh(registry, image_sizes, min_epochs or {})
    except IntegrityError:
        return 0  # folded by a concurrent refresh


def _epoch_seconds(history: Any, epochs_run: float | None) -> float | None:
    """Seconds spent in the epochs this run trained (the last ``epochs_run`` entries of its
    history: a resumed run's history starts with the checkpoint's), ``None`` when unknown."""
    if not epochs_run or not isinstance(history, list) or len(history) < epochs_run:
        return None
    secs = [h.get("seconds") if isinstance(h, dict) else None for h in history]
    mine = [x for x in secs[len(secs) - int(epochs_run) :] if isinstance(x, int | float)]
    if not mine or len(mine) < int(epochs_run):
        return None
    return float(sum(mine))


def _with_cost(r: Any) -> tuple[Any, ...]:
    """Row ``r`` of :func:`_refresh`'s query with its cost (index 3) by the one definition:
    the job's wall time, start-up included (:func:`~pomlia_hpc.automl.records.run_cost_s`:
    an ok run recorded before ``train_s`` was kept apart gets its job's Start to End)."""
    # r[13] is metrics["train_s"]: NULL when absent (a JSON null too, for which the job's
    # times are the recorded cost anyway).
    kept = {"train_s": r[13]} if r[13] is not None else {}
    cost = run_cost_s(r[2], r[3], kept, r[14], r[15], backend=r[16])
    return (*r[:3], cost, *r[4:13])


def _fold(st: KbRunStats, r: Any, metric: str, min_epochs: float) -> None:
    """Fold the successful run ``r`` (a row of :func:`_refresh`'s query) into ``st``."""
    if r[3] is not None:
        st.cost_sum += float(r[3])
        st.n_cost += 1
        if r[10]:  # epochs it trained (from a checkpoint: only those it added)
            st.timed_s += float(r[3])
            st.timed_epochs += float(r[10])
            in_epochs = _epoch_seconds(r[12], r[10])
            if in_epochs is not None:
                st.timed_n += 1
                st.epoch_s += in_epochs
                st.epoch_n += float(r[10])
                st.startup_s += max(float(r[3]) - in_epochs, 0.0)
    value = (r[9] or {}).get(metric) if isinstance(r[9], dict) else None
    if value is None:
        return
    if r[11] is not None and float(r[11]) < min_epochs:
        # far below the full budget: a 1-epoch test run's value is not what the strategy gets
        st.n_short += 1
        st.short_value = max(st.short_value or -math.inf, float(value))
        st.short_epochs = max(st.short_epochs or 0.0, float(r[11]))
        return
    if (
        st.best_objective is None
        or r[8] > st.best_objective
        or (r[8] == st.best_objective and r[0] < (st.best_run_id or r[0]))
    ):
        st.best_objective, st.best_value, st.best_run_id = r[8], value, r[0]


def _forget_if_stale(s: Session) -> bool:
    """Empty the summaries (the caller folds every run again) when runs they counted were
    deleted; True if so. Each run counted in ``kb_run_stats`` has a done ``kb_run_seen`` row,
    so the two counts agree until a counted run goes: with foreign keys enforced its
    ``kb_run_seen`` row goes with it (PostgreSQL, pomlia's SQLite connections), otherwise (a
    DELETE in the sqlite3 shell) the row stays and names no run. One statement, so one
    snapshot: a concurrent refresh cannot make the counts differ (about 40 ms at 100,000 runs
    on SQLite, of the 0.2 s a recommendation takes there)."""
    counted = select(func.coalesce(func.sum(KbRunStats.n_runs), 0)).scalar_subquery()
    present = (
        select(func.count())
        .select_from(KbRunSeen)
        .join(Run, Run.id == KbRunSeen.run_id)
        .where(KbRunSeen.done.is_(True), Run.task_id.is_not(None), Run.status.in_(COUNTED))
        .scalar_subquery()
    )
    if s.execute(select(counted - present)).scalar_one() == 0:
        return False
    # Which summaries a deleted run was in is no longer known (its row is gone), so all are
    # built again; deleting runs is rare, and this costs what the first refresh cost.
    s.execute(delete(KbRunStats))
    s.execute(delete(KbRunSeen))
    return True


def _forget_if_foreign(s: Session) -> bool:
    """Empty the summaries (the caller folds every run again) when a row was written in another
    format (NULL: by an older pomlia, which folds runs and marks them seen its own way); True if
    so. Such a writer always marks the runs it folds, so ``kb_run_seen`` shows it; the
    summaries are looked at too, for a row written without any. One statement (a scan: about
    2 ms at 100,000 runs on SQLite)."""

    def other(col: Any) -> Any:
        return col.is_(None) | (col != FORMAT)

    foreign = select(
        exists().where(other(KbRunSeen.summary_format))
        | exists().where(other(KbRunStats.summary_format))
    )
    if not s.execute(foreign).scalar_one():
        return False
    s.execute(delete(KbRunStats))
    s.execute(delete(KbRunSeen))
    return True


def _examined_query(newest: int, waiting: Any) -> Any:
    """The runs a refresh looks at (the module docstring says which), with their jobs' times
    and backend: runs after ``newest`` (the highest run id seen), those in ``waiting`` (a
    select of waiting run ids) and recent ones never seen."""
    q = select(
        Run.id,
        Run.task_id,
        Run.status,
        Run.cost_s,
        Run.config["arch"].as_string(),
        Run.config["init"].as_string(),
        Run.config["mode"].as_string(),
        Run.config["extra_data"].as_string(),
        Run.metrics["objective"].as_float(),
        Run.metrics["test"],
        Run.metrics["epochs_run"].as_float(),
        Run.metrics["epochs"].as_float(),
        Run.metrics["history"],
        # 13: whether it kept train_s apart (see run_cost_s); not the whole metrics, which
        # would read every run's history a second time.
        Run.metrics["train_s"].as_float(),
        Job.started_at,
        Job.ended_at,
        Job.backend,
    )
    return q.outerjoin(Job, Run.job_id == Job.id).where(
        (Run.id > newest)
        | Run.id.in_(waiting)
        | (
            (Run.id > newest - RECHECK)
            & Run.id.not_in(select(KbRunSeen.run_id).where(KbRunSeen.run_id > newest - RECHECK))
        )
    )


@dataclass
class _Folding:
    """What one refresh carries from batch to batch: the summaries loaded or made so far (at
    most one per task and strategy, whatever the number of runs) and the inputs of the fold."""

    image_sizes: dict[int, int]
    min_epochs: dict[int, float]
    metric_of: dict[int, str]
    stats: dict[tuple[int, str], KbRunStats] = field(default_factory=dict)
    loaded: set[int] = field(default_factory=set)  # tasks whose stored summaries are in stats
    keys: dict[tuple[Any, ...], str] = field(default_factory=dict)  # strategy fields -> key


def _refresh(registry: Registry, image_sizes: dict[int, int], min_epochs: dict[int, float]) -> int:
    with registry.session() as s:
        # First, so refreshes run one at a time: on PostgreSQL a second one that decided to
        # rebuild from its own snapshot would delete rows it cannot see yet and fold every run
        # onto the first one's (counted twice), or update a row the first deleted (a crash).
        lock_name(s, "kb-run-stats")
        if not _forget_if_foreign(s):
            _forget_if_stale(s)
        folding = _Folding(
            image_sizes, min_epochs, dict(s.execute(select(Task.id, Task.metric)).all())
        )
        newest = s.scalar(select(func.max(KbRunSeen.run_id))) or 0
        query = _examined_query(newest, select(KbRunSeen.run_id).where(KbRunSeen.done.is_(False)))
        # The runs in id order, BATCH at a time (keyset pagination): the first refresh of a
        # large registry reads every run, and its rows (training histories) were held all at
        # once before (~5 KB a run). A batch changes kb_run_seen only at ids up to its last,
        # which the next batch's ``Run.id > last`` leaves out: every run is examined once.
        folded, last = 0, None
        while True:
            page = query if last is None else query.where(Run.id > last)
            examined = s.execute(page.order_by(Run.id).limit(BATCH)).all()
            if examined:
                folded += _fold_batch(s, examined, newest, folding)
                last = examined[-1][0]
            if len(examined) < BATCH:
                return folded


def _fold_batch(s: Session, examined: Sequence[Any], newest: int, folding: _Folding) -> int:
    """Fold one batch of examined runs (rows of :func:`_examined_query`, in id order) into the
    summaries and mark them in ``kb_run_seen``; returns how many were counted."""
    rows = [_with_cost(r) for r in examined if r[2] in COUNTED and r[1] is not None]
    again = {r[0] for r in examined if r[2] not in FINAL}
    # Waiting runs (ids up to ``newest``) that have finished leave the waiting list;
    # unfinished ones already waiting stay; new unfinished ones join it.
    finished_waiting = [r[0] for r in examined if r[2] in FINAL and r[0] <= newest]
    if finished_waiting:
        s.execute(delete(KbRunSeen).where(KbRunSeen.run_id.in_(finished_waiting)))
    known_waiting = (
        set(
            s.scalars(
                select(KbRunSeen.run_id).where(
                    KbRunSeen.done.is_(False), KbRunSeen.run_id.in_(again)
                )
            )
        )
        if again
        else set()
    )
    new_waiting = [
        {"run_id": i, "done": False, "summary_format": FORMAT} for i in again - known_waiting
    ]
    groups: dict[tuple[int, str], list[Any]] = defaultdict(list)
    for r in rows:
        fields = (r[4], r[5], r[6], r[7], folding.image_sizes.get(r[1], 28))
        key = folding.keys.get(fields)
        if key is None:
            key = folding.keys[fields] = strategy_key(_strategy_of(r, fields[4]))
        groups[(r[1], key)].append(r)
    unloaded = {t for t, _ in groups} - folding.loaded
    if unloaded:
        for old in s.scalars(select(KbRunStats).where(KbRunStats.task_id.in_(unloaded))):
            folding.stats[(old.task_id, old.strategy_key)] = old
        folding.loaded |= unloaded
    for (task_id, key), runs in groups.items():
        st = folding.stats.get((task_id, key))
        if st is None:
            st = folding.stats[(task_id, key)] = _new_stats(
                task_id, key, _strategy_of(runs[0], folding.image_sizes.get(task_id, 28))
            )
            s.add(st)
        metric = folding.metric_of.get(task_id, "acc")
        st.n_runs += len(runs)
        st.n_failed += sum(r[2] == "crashed" for r in runs)
        for r in runs:
            if r[2] == "ok" and r[8] is not None:
                _fold(st, r, metric, folding.min_epochs.get(task_id, 0.0))
    done = [
        {"run_id": r[0], "done": True, "summary_format": FORMAT} for r in examined if r[2] in FINAL
    ]
    if done or new_waiting:
        s.execute(insert(KbRunSeen), done + new_waiting)
    return len(rows)


def _new_stats(task_id: int, key: str, strategy: dict[str, Any]) -> KbRunStats:
    """An empty summary of ``strategy`` on task ``task_id``."""
    return KbRunStats(
        task_id=task_id,
        strategy_key=key,
        strategy=strategy,
        n_runs=0,
        n_failed=0,
        cost_sum=0.0,
        n_cost=0,
        timed_s=0.0,
        timed_epochs=0.0,
        timed_n=0,
        epoch_s=0.0,
        epoch_n=0.0,
        startup_s=0.0,
        n_short=0,
        summary_format=FORMAT,
    )
