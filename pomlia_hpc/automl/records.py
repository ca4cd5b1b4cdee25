"""AutoML trials as registry runs, and the lineage of the models they produce.

Only the submitting process (the study driver) writes these rows; trial jobs write result files.
Run ``status``: ``pending`` (created, not yet submitted), ``running``, ``ok``, ``crashed``,
``cancelled`` (its job was cancelled: by a user, or with the study's driver; not a failure of
the configuration, ``error`` is the one-line cause), or ``submit_failed`` (the scheduler refused
the job, ``error`` says why; a resumed study submits it again).
``config`` holds the hyperparameters plus the configuration's key and origin; ``metrics`` holds
``val`` and ``test`` metric dicts, the ``objective`` (the task metric on ``val``) and the epoch
accounting (``epochs``, ``start_epoch``, ``epochs_run``), or the ``cause`` of a crash.

``cost_s`` is the trial job's wall time in seconds, from its start to its end, start-up
(interpreter, imports, data, model and DeepSpeed set-up) included, for every status: Slurm's
Start to End of the job's latest attempt plus what its earlier attempts ran (a requeued trial;
not the time it waited in the queue between them), a local job's launch to its result file
(a failure: to its collection by the driver), as its job row has them
(:func:`~pomlia_hpc.automl.study.trialjobs.trial_wall_s`). What the training call itself took
is ``metrics["train_s"]`` (ok runs). A run recorded ``ok`` before ``train_s`` was kept
recorded the training call's seconds as its cost: :func:`run_cost_s` reads such a run's cost
from its job's times instead when the job ran on Slurm (a local job's row then ended when the
driver collected it, maybe hours later: its recorded cost stays), so every reader (``runs
list``, ``report``, a resumed study's optimiser, the recommender's run statistics) sees one
definition.

Non-finite floats (NaN, infinities) are stored as ``null``: these columns are JSON, and
PostgreSQL's ``json`` type rejects NaN (a driver would die mid-study on a ``DataError``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from pomlia_hpc.cluster.records import EARLIER_META
from pomlia_hpc.registry import Job, Registry, Run, Task
from pomlia_hpc.registry.lookup import by_name_or_id, check_limit, not_found
from pomlia_hpc.vocab import RunStatus

# Short names for the run statuses (:class:`pomlia_hpc.vocab.RunStatus`), as plain strings.
OK, CRASHED, RUNNING, PENDING = (
    RunStatus.OK.value,
    RunStatus.CRASHED.value,
    RunStatus.RUNNING.value,
    RunStatus.PENDING.value,
)
SUBMIT_FAILED = RunStatus.SUBMIT_FAILED.value
CANCELLED = RunStatus.CANCELLED.value


def config_summary(values: dict[str, Any]) -> str:
    """A configuration in one short line: architecture, initial weights and mode when not from
    scratch, learning rate, optimizer, batch size, extra images (e.g. ``resnet18
    encoder/linear_probe lr=1.8e-03 adamw bs=32``)."""
    parts = [str(values.get("arch", ""))]
    if values.get("init", "scratch") != "scratch":
        parts.append(f"{values['init']}/{values.get('mode', 'full')}")
    lr = values.get("lr", values.get("lr_head"))
    if lr is not None:
        parts.append(f"lr={float(lr):.1e}")
    parts.append(f"{values.get('optimizer', '')} bs={values.get('batch_size', '')}")
    if values.get("extra_data") == "nearest":
        parts.append(f"+{values.get('extra_n')}nn")
    return " ".join(parts)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (in nested dicts, lists and tuples) replaced by
    ``None``, so that it can be stored in a JSON column on any registry backend."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def create_run(
    registry: Registry,
    *,
    task_id: int,
    study: str,
    config: dict[str, Any],
    epochs: int,
    dataset_version_id: int,
    encoder_id: int | None,
) -> int:
    """Insert a ``pending`` run for one trial; returns its id."""
    with registry.session() as s:
        row = Run(
            task_id=task_id,
            study=study,
            config=json_safe(config),
            budget=float(epochs),
            metrics={},
            status=PENDING,
            dataset_version_id=dataset_version_id,
            encoder_id=encoder_id,
        )
        s.add(row)
        s.flush()
        return int(row.id)


def mark_running(
    registry: Registry, run_id: int, job_id: int | None, *, start_epoch: int = 0
) -> None:
    """The trial's job was submitted; ``start_epoch``: the checkpoint it continues from."""
    with registry.session() as s:
        row = s.get(Run, run_id)
        if row is not None:
            row.status, row.job_id, row.error = RUNNING, job_id, None
            row.metrics = {"start_epoch": start_epoch}


def mark_submit_failed(registry: Registry, run_id: int, error: str) -> None:
    """The trial's job could not be submitted (``error``: the scheduler's message)."""
    with registry.session() as s:
        row = s.get(Run, run_id)
        if row is not None:
            row.status, row.error = SUBMIT_FAILED, error


def finish_run(
    registry: Registry,
    run_id: int,
    *,
    status: str,
    metrics: dict[str, Any],
    cost_s: float | None,
    error: str | None = None,
) -> None:
    """Record a trial's outcome (``ok``, ``crashed`` or ``cancelled``); ``cost_s``: seconds."""
    with registry.session() as s:
        row = s.get(Run, run_id)
        if row is None:
            return
        row.status, row.error = status, error
        row.metrics, row.cost_s = json_safe(dict(metrics)), _finite(cost_s)


def job_span_s(started: datetime | None, ended: datetime | None) -> float | None:
    """Seconds from ``started`` to ``ended`` (a job's times), or None when one is unknown."""
    if started is None or ended is None:
        return None
    return max((ended - started).total_seconds(), 0.0)


def job_cost_s(job: Job) -> float | None:
    """Seconds job ``job`` ran, all its attempts: its Start to End (its latest attempt's) plus
    what its earlier attempts ran; only those when its latest attempt never started (requeued,
    then cancelled while it waited); None when its times are not known."""
    span = job_span_s(job.started_at, job.ended_at)
    if span is not None:
        return span + earlier_attempts_s(job)
    if job.ended_at is not None and job.started_at is None and job.requeue_count:
        return earlier_attempts_s(job)
    return None


def earlier_attempts_s(job: Job) -> float:
    """Seconds Slurm job ``job``'s attempts before its latest ran (its Start and End are the
    latest attempt's), as its last poll counted them; 0: none, or not known."""
    value = (job.meta or {}).get(EARLIER_META)
    return float(value) if isinstance(value, int | float) else 0.0


def run_cost_s(
    status: str,
    cost_s: float | None,
    metrics: dict[str, Any] | None,
    job_started: datetime | None,
    job_ended: datetime | None,
    *,
    backend: str | None,
) -> float | None:
    """A run's cost in seconds by the one definition (module docstring): its recorded
    ``cost_s``; for an ``ok`` run of a Slurm job recorded before ``metrics["train_s"]``
    existed, which recorded only its training call's seconds, its job's Start to End when
    known. ``backend``: its job's (``slurm``, ``local``, ``debug``; None without a job)."""
    legacy = status == OK and not (isinstance(metrics, dict) and "train_s" in metrics)
    # Only Slurm's End is when the job ended: before train_s, a local job's row ended when its
    # driver collected it, hours later for a resumed driver; its recorded cost is nearer.
    span = job_span_s(job_started, job_ended) if legacy and backend == "slurm" else None
    return cost_s if span is None else span


def job_run_cost_s(run: Run, job: Job | None) -> float | None:
    """:func:`run_cost_s` of ``run``, whose job row is ``job`` (None: none known)."""
    return run_cost_s(
        run.status,
        run.cost_s,
        run.metrics,
        job.started_at if job is not None else None,
        job.ended_at if job is not None else None,
        backend=job.backend if job is not None else None,
    )


def study_span_s(registry: Registry, runs: Iterable[Run]) -> float | None:
    """Seconds from the first start of ``runs``' jobs to the last end (a resumed study's real
    length, drivers and gaps included), or None when no run has a time. A run without job
    times counts from its creation to its creation plus its cost."""
    runs = list(runs)
    ids = {r.job_id for r in runs if r.job_id is not None}
    with registry.session() as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))} if ids else {}
        starts: list[float] = []
        ends: list[float] = []
        for r in runs:
            job = jobs.get(r.job_id) if r.job_id is not None else None
            if job is not None and job.started_at is not None and job.ended_at is not None:
                starts.append(job.started_at.timestamp())
                ends.append(job.ended_at.timestamp())
            elif r.cost_s is not None:
                starts.append(r.created_at.timestamp())
                ends.append(r.created_at.timestamp() + r.cost_s)
    if not ends:
        return None
    return max(max(ends) - min(starts), 0.0)


def study_runs(registry: Registry, study: str) -> list[Run]:
    """All runs of ``study``, oldest first."""
    with registry.session() as s:
        rows = list(s.scalars(select(Run).where(Run.study == study).order_by(Run.id)))
        for r in rows:
            s.expunge(r)
        return rows


def ended_runs(registry: Registry, study: str) -> int:
    """How many runs of ``study`` have ended (``ok``, ``crashed`` or ``cancelled``)."""
    with registry.session() as s:
        q = select(func.count()).where(Run.study == study, Run.status.in_((OK, CRASHED, CANCELLED)))
        return int(s.scalar(q) or 0)


def job_of(registry: Registry, job_id: int | None) -> Job | None:
    """The job row ``job_id`` (``None`` for ``None`` or a missing row)."""
    if job_id is None:
        return None
    with registry.session() as s:
        row = s.get(Job, job_id)
        if row is not None:
            s.expunge(row)
        return row


def newest_job_named(registry: Registry, name: str, folder: str) -> Job | None:
    """The newest job called ``name`` submitted from ``folder`` (a trial job recorded by the
    cluster layer whose run was not linked to it before the driver stopped)."""
    with registry.session() as s:
        row = s.scalar(
            select(Job)
            .where(Job.name == name, Job.folder == folder)
            .order_by(Job.id.desc())
            .limit(1)
        )
        if row is not None:
            s.expunge(row)
        return row


@dataclass(frozen=True)
class RunRow:
    """One line of ``pomlia runs list``. A missing task, study, job or error is ``None`` (its
    ``--json`` is ``null``, as documented); ``error`` is the whole text, the table cuts it."""

    id: int
    task: str | None
    study: str | None
    status: str
    epochs: float | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    cost_s: float | None
    #: The registry's job id (what `pomlia jobs show/cancel` take) and the scheduler's.
    job: int | None
    scheduler_id: str | None
    error: str | None
    created_at: datetime | None


def list_runs(
    registry: Registry,
    task: str | None = None,
    study: str | None = None,
    limit: int = 200,
    known_studies: Iterable[str] = (),
) -> list[RunRow]:
    """Runs, newest first, optionally of one task (name or id, looked up like every other
    reference: an unknown one is a :class:`~pomlia_hpc.errors.NotFoundError` naming the known
    tasks) and/or one study (an unknown one is one error too, listing the studies).
    ``known_studies``: studies known to exist whether or not they have runs (those created in
    the workspace): one without a run yet selects nothing rather than counting as unknown."""
    check_limit(limit)
    with registry.session() as s:
        q = select(
            Run, Task.name, Job.id, Job.scheduler_id, Job.started_at, Job.ended_at, Job.backend
        ).join(Task, Run.task_id == Task.id, isouter=True)
        q = q.join(Job, Run.job_id == Job.id, isouter=True)
        if task is not None:
            q = q.where(Run.task_id == by_name_or_id(s, Task, task, "task").id)
        if study is not None:
            created = set(known_studies)
            if (
                study not in created
                and s.scalar(select(Run.id).where(Run.study == study).limit(1)) is None
            ):
                known = s.scalars(select(Run.study).where(Run.study.is_not(None)).distinct())
                raise not_found("study", study, sorted({x for x in known if x} | created))
            q = q.where(Run.study == study)
        rows = s.execute(q.order_by(Run.id.desc()).limit(limit)).all()
        return [
            RunRow(
                id=r.id,
                task=tname or None,
                study=r.study or None,
                status=r.status,
                epochs=r.budget,
                config=dict(r.config or {}),
                metrics=dict(r.metrics or {}),
                cost_s=run_cost_s(r.status, r.cost_s, r.metrics, started, ended, backend=backend),
                job=job_id,
                scheduler_id=sched or None,
                error=r.error or None,
                created_at=r.created_at,
            )
            for r, tname, job_id, sched, started, ended, backend in rows
        ]


#: Seconds ``sacct`` may take when ``runs list`` settles cancelled runs (then: as recorded).
LIST_SACCT_TIMEOUT_S = 10.0


def settle_cancelled(registry: Registry, runs: Iterable[RunRow]) -> list[int]:
    """Record as ``cancelled`` the unfinished runs among ``runs`` whose job is known to have
    ended CANCELLED (``sacct``, asked once for all of them, or the row the cancelling driver
    wrote), with the job's one-line cause; returns their ids. For runs whose driver is gone
    (nothing else would record them: they showed as ``running (stale)``); a resumed study
    submits them again. Their cost: what the job ran (:func:`job_cost_s`), when known."""
    from pomlia_hpc.cluster.records import refresh_jobs
    from pomlia_hpc.errors import ClusterError

    targets = {r.id: r.job for r in runs if r.status in (RUNNING, PENDING) and r.job is not None}
    if not targets:
        return []
    with contextlib.suppress(ClusterError):  # Slurm cannot answer now: the rows as recorded
        ids = sorted({j for j in targets.values() if j is not None})
        refresh_jobs(registry, ids, timeout_s=LIST_SACCT_TIMEOUT_S)  # a listing: never hang
    settled: list[int] = []
    with registry.session() as s:
        for run_id, job_id in targets.items():
            job, run = s.get(Job, job_id), s.get(Run, run_id)
            if job is None or run is None or job.state != "CANCELLED":
                continue
            if run.status not in (RUNNING, PENDING):
                continue
            cause = ((job.exit_cause or "").strip().splitlines() or ["cancelled"])[0]
            start = int(dict(run.metrics or {}).get("start_epoch", 0))
            run.status, run.error = CANCELLED, cause
            run.metrics = {"cause": cause, "state": "CANCELLED", "start_epoch": start}
            cost = job_cost_s(job)
            if cost is not None:
                run.cost_s = cost
            settled.append(run_id)
    return settled
