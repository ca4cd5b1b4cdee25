"""A study's trial jobs as the driver knows them: one out (:class:`ActiveTrial`), one an earlier
driver submitted (:func:`attach_trial_job`), and the wall time a job ran, which is a trial's cost
(:func:`trial_wall_s`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pomlia_hpc.automl import records
from pomlia_hpc.automl.optimizers import Proposal, SearchOptimizer
from pomlia_hpc.automl.trial import failure_path, read_failure, read_result, read_started
from pomlia_hpc.cluster import JobHandle
from pomlia_hpc.cluster.attach import AttachedJob
from pomlia_hpc.registry import Job, Registry


def attach_trial_job(registry: Registry, job: Job, result_path: Path) -> AttachedJob:
    """The trial job of row ``job`` that an earlier driver submitted; its result and failure
    files are at ``result_path`` (and :func:`~pomlia_hpc.automl.trial.failure_path` of it)."""
    return AttachedJob(
        registry,
        job,
        has_result=result_path.is_file,
        failure=lambda: read_failure(result_path),
    )


def attached_result(job: AttachedJob, result_path: Path) -> dict[str, Any]:
    """The trial's result, or :class:`JobFailedError` with the job's state and traceback.
    A local job's row ends when it wrote its result (or failure) file: a driver that attaches
    after it finished (a resume, maybe hours later) would otherwise record its own time."""
    written = _written(result_path)
    if job.backend != "slurm" and job.ended_at is None and written is not None:
        job.ended_at = datetime.fromtimestamp(written, UTC)
    res = read_result(result_path)
    if res is not None:
        job.completed()
        return res
    raise job.failed()


@dataclass
class ActiveTrial:
    """A trial whose job is out: submitted by this driver, or attached from an earlier one."""

    run_id: int
    proposal: Proposal
    handle: JobHandle | AttachedJob
    started: float  # time.time() of the submission (or of the attachment)
    result_path: Path | None = None  # where the job writes its result (and its stamps)
    #: The optimiser told its outcome, when not the study's (a trial the optimiser never asked).
    optimizer: SearchOptimizer | None = None


def trial_wall_s(
    registry: Registry,
    job_id: int | None,
    result_path: Path | None,
    *,
    submitted: float | None = None,
    default: float = 0.0,
) -> float:
    """A trial job's wall time in seconds, start-up included: the run's ``cost_s`` (see
    :mod:`pomlia_hpc.automl.records`), for a result and a failure alike, as the recommender
    sees it (kb run stats, expected cost), not the driver's time to notice.

    The job row's Start to End, as `jobs list` shows them (Slurm: ``sacct``'s, of its latest
    attempt, settled when the outcome was collected, plus what its earlier attempts ran; only
    those when its latest attempt never started, requeued and then cancelled; local:
    its launch to when its driver collected it, or to its result file for a driver that attached
    later, see :func:`attached_result`). Without the row's times: from the job's own start stamp
    to its result (or failure) file (or to now: a local job's end is noticed at once, as the
    driver waits on its process); else the time since ``submitted`` (epoch seconds); else
    ``default``.
    """
    if job_id is not None:
        with registry.session() as s:
            row = s.get(Job, job_id)
            cost = records.job_cost_s(row) if row is not None else None
            if cost is not None:
                return cost
    started = read_started(result_path) if result_path is not None else None
    if started is not None:
        assert result_path is not None
        written = _written(result_path)
        return max((written if written is not None else time.time()) - started, 0.0)
    if submitted is not None:
        return max(time.time() - submitted, 0.0)
    return default


def _written(result_path: Path) -> float | None:
    """When the trial's result file, else its failure file, was written (epoch seconds)."""
    for path in (result_path, failure_path(result_path)):
        if path.is_file():
            return path.stat().st_mtime
    return None


def job_wall_s(registry: Registry, act: ActiveTrial) -> float:
    """Seconds the job of ``act`` ran (:func:`trial_wall_s`)."""
    return trial_wall_s(registry, act.handle.record_id, act.result_path, submitted=act.started)
