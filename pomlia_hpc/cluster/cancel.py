"""Cancelling a job from any process: by its scheduler id, or by its registry row.

A local job is a process tree whose controller may ignore SIGINT (it inherits SIG_IGN when
started from a background job of a non-interactive shell); it gets a grace period, then is
killed with its tasks. A Slurm job is ``scancel``-ed; so are the parts of an array split
into several submissions when a later part could not be submitted
(:func:`cancel_array_parts`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.cluster.reach import RETRY, failure_kind
from pomlia_hpc.cluster.records import (
    FINAL_STATES,
    FORCED_CAUSE,
    GONE_FORCED_CAUSE,
    is_local_job_process,
    mark_all_cancelled,
    mark_cancelled,
    mark_lost,
    refresh_jobs,
    refresh_slurm_jobs,
    squeue_ids,
    this_host,
)
from pomlia_hpc.cluster.scancel import scancel_or_fail
from pomlia_hpc.errors import ClusterError, NotFoundError, SlurmUnavailableError
from pomlia_hpc.processes import ignores_signal, kill_tree, pid_alive
from pomlia_hpc.registry import Job, Registry

#: Seconds a cancelled local job may take to stop after SIGINT before it gets SIGKILL. A process
#: can ignore SIGINT without meaning to: it inherits SIG_IGN when started from a background job
#: of a non-interactive shell (cron, nohup scripts), and Python then keeps it.
LOCAL_CANCEL_GRACE_S = 5.0


def kill_after_grace(process: subprocess.Popen[Any]) -> None:
    """Give a SIGINT-ed local job controller the grace period, then kill it and its tasks."""
    if ignores_signal(process.pid, signal.SIGINT):
        kill_tree(process.pid)  # the SIGINT was lost: no point waiting
    else:
        try:
            process.wait(LOCAL_CANCEL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
    process.wait()


def cancel_scheduler_job(backend: str, scheduler_id: str, *, folder: str | None = None) -> None:
    """Cancel a job by its scheduler id from any process (used by ``pomlia jobs cancel``).

    A local job is signalled only if its pid still runs submitit's job controller (for
    ``folder``, when given): after the job ended, the pid may belong to an unrelated process.
    """
    if backend == "slurm":
        scancel_or_fail([scheduler_id], f"scancel {scheduler_id} failed")
    elif backend == "local":
        try:
            pid = int(scheduler_id)
        except ValueError as exc:
            raise ClusterError(f"local job id '{scheduler_id}' is not a process id") from exc
        if not pid_alive(pid):
            return
        if not is_local_job_process(pid, folder):
            raise ClusterError(
                f"process {pid} is not the submitit job controller"
                + (f" of {folder}" if folder else "")
                + "; the job has ended and its pid was reused: nothing signalled"
            )
        if ignores_signal(pid, signal.SIGINT):
            kill_tree(pid)  # a SIGINT would be lost
            return
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + LOCAL_CANCEL_GRACE_S
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            kill_tree(pid)
    else:
        raise ClusterError(f"jobs of backend '{backend}' run in-process and cannot be cancelled")


#: Seconds the ``sacct`` after a ``scancel`` may take (:func:`record_cancelled`).
AFTER_SCANCEL_SACCT_S = 10.0


def record_cancelled(
    registry: Registry,
    record_ids: Sequence[int],
    cause: str,
    *,
    timeout_s: float = AFTER_SCANCEL_SACCT_S,
) -> list[int]:
    """Record the Slurm rows ``record_ids``, just ``scancel``-ed, CANCELLED with ``cause``,
    then what Slurm says they ended as (one ``sacct`` of at most ``timeout_s`` seconds, after
    which the rows stay CANCELLED, unconfirmed: a later poll records what Slurm says, see
    :data:`~pomlia_hpc.cluster.records.UNCONFIRMED_META`). Returns the ids of the rows,
    unfinished before, that stay CANCELLED (a row that had ended keeps its state).

    A job that ended on its own between the caller's last look and the ``scancel`` (which
    exits 0 for an ended job) was recorded CANCELLED while Slurm said COMPLETED; the answer
    after the ``scancel`` replaces it. A job that was cancelled keeps ``cause`` and gets Slurm's
    End; an answer that is not final (accounting a moment behind the ``scancel``: RUNNING,
    even of an attempt the row has not seen) changes nothing."""
    with registry.session() as s:
        q = select(Job.id).where(Job.id.in_(record_ids), Job.state.not_in(FINAL_STATES))
        unfinished = list(s.scalars(q))
    mark_all_cancelled(registry, unfinished, cause)
    with contextlib.suppress(ClusterError):  # accounting out of reach: CANCELLED stands
        refresh_slurm_jobs(registry, unfinished, timeout_s=timeout_s, final_only=True)
    with registry.session() as s:
        q = select(Job.id).where(Job.id.in_(unfinished), Job.state == "CANCELLED")
        return list(s.scalars(q))


#: Seconds to wait for cancelled parts of an array to leave Slurm's queue: a running task gets
#: SIGTERM and SIGKILL ``KillWait`` (30 s by default) later; the caller may then clean up
#: what the tasks would have written without a task still writing into it.
ARRAY_CANCEL_WAIT_S = 60.0


def cancel_array_parts(
    array_ids: Sequence[str],
    task_ids: Sequence[str],
    registry: Registry | None,
    record_ids: Sequence[int],
    cause: str,
) -> bool:
    """Cancel the Slurm arrays ``array_ids`` with one ``scancel``, record their rows
    ``record_ids`` CANCELLED with ``cause``, then wait until ``squeue`` lists none of their
    tasks ``task_ids`` (at most :data:`ARRAY_CANCEL_WAIT_S` seconds in all; a ``squeue`` that
    cannot answer is asked again). True once they are gone, False when the wait ran out. A
    :class:`ClusterError` when ``scancel`` fails (nothing recorded)."""
    scancel_or_fail(array_ids, f"scancel {' '.join(array_ids)} failed")
    if registry is not None:
        record_cancelled(registry, record_ids, cause)
    deadline = time.monotonic() + ARRAY_CANCEL_WAIT_S
    while (left_s := deadline - time.monotonic()) > 0:
        with contextlib.suppress(ClusterError):
            # within the wait: a squeue that hangs took its own minute past it
            if not squeue_ids(task_ids, timeout_s=left_s):
                return True
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))
    return False


class NotQueuedError(SlurmUnavailableError):
    """A job to cancel that ``squeue`` no longer lists while ``sacct`` cannot say how it
    ended: nothing was cancelled (there was nothing to cancel), and its row is unchanged."""


@dataclass(frozen=True)
class CancelOutcome:
    """What :func:`cancel_job_row` did. ``ended``: the final state of a job that had already
    ended (nothing was signalled), None when it was cancelled now. ``unconfirmed``: why
    Slurm's accounting could not be asked first (``sacct: ... did not answer``), when the job
    was cancelled on ``squeue``'s word that it was still queued or running, or (``listed``
    False, with ``--force``) without it, ``squeue`` failing too (its error follows sacct's);
    else None. Such a row is CANCELLED until ``sacct`` confirms how the job ended
    (:data:`~pomlia_hpc.cluster.records.UNCONFIRMED_META`)."""

    ended: str | None
    unconfirmed: str | None = None
    #: With ``unconfirmed``: whether ``squeue`` listed the job (False: it could not answer).
    listed: bool = True


def cancel_recorded_job(registry: Registry, record_id: int, *, force: bool = False) -> str | None:
    """:func:`cancel_job_row`'s ``ended``: None when cancelled, else the final state of a
    job that had already ended."""
    return cancel_job_row(registry, record_id, force=force).ended


def cancel_job_row(registry: Registry, record_id: int, *, force: bool = False) -> CancelOutcome:
    """Cancel the job of registry row ``record_id`` and record it CANCELLED (with its end time).

    Nothing is signalled for a job that had already ended (its row keeps that state). A Slurm
    job neither ``squeue`` nor ``sacct`` knows any more is recorded ``LOST`` (ended). When
    ``sacct`` cannot answer (slurmdbd down or busy) while the controller can, a job that
    ``squeue`` lists is cancelled all the same (``unconfirmed`` says why it was not asked), and
    one it does not list is a :class:`NotQueuedError` (exit 69): it is no longer queued or
    running, and its final state is recorded once ``sacct`` answers. A job
    that cannot be signalled from here (a local job of another host, a failed ``scancel``) is
    a :class:`ClusterError`; with ``force`` its row is marked CANCELLED instead, the process
    itself untouched, and so is that of a job ``squeue`` no longer lists while ``sacct``
    cannot answer (:data:`GONE_FORCED_CAUSE`); when ``squeue`` cannot answer either, ``force``
    ``scancel``-s the job (``listed`` False). A row CANCELLED without ``sacct``'s word takes
    the final state Slurm reports at a later poll
    (:data:`~pomlia_hpc.cluster.records.UNCONFIRMED_META`). Slurm 22.05's ``scancel`` of a
    job it forgot exits 0 silently: such a job is found LOST before the signal and returned
    as ended ``LOST`` (nothing signalled); of a job that has just ended, too: the ``sacct``
    after it finds that state (:func:`record_cancelled`), returned as ``ended``."""
    unconfirmed = refresh_before_cancel(registry, [record_id])
    return cancel_refreshed_row(registry, record_id, unconfirmed, force=force)


def refresh_before_cancel(registry: Registry, record_ids: Sequence[int]) -> str | None:
    """Bring rows ``record_ids`` up to date before they are cancelled (one ``sacct`` for all;
    a Slurm job neither it nor ``squeue`` knows is recorded LOST). None when done, else why
    Slurm's accounting could not be asked (``sacct: ... did not answer``), for
    :func:`cancel_refreshed_row`'s ``unconfirmed``: the rows keep their recorded states."""
    try:
        refresh_jobs(registry, record_ids, lost=True)
    except ClusterError as exc:  # a local row is never asked of Slurm: this is a Slurm row
        return str(exc).removesuffix(RETRY)  # not a failure of the command yet
    return None


def cancel_refreshed_row(
    registry: Registry, record_id: int, unconfirmed: str | None, *, force: bool = False
) -> CancelOutcome:
    """:func:`cancel_job_row` of a row that :func:`refresh_before_cancel` has just brought up
    to date, or could not (``unconfirmed``: why), without asking ``sacct`` again: cancelling
    the N stage jobs of a pipeline with slurmdbd hanging waited out N + 1 sacct time limits."""
    with registry.session() as s:
        row = s.get(Job, record_id)
        if row is None:
            raise NotFoundError(f"job {record_id} is not in the registry (see `pomlia jobs list`)")
        backend, scheduler_id, state = row.backend, row.scheduler_id, row.state
        folder, host = row.folder, (row.meta or {}).get("host")
    if state in FINAL_STATES:
        return CancelOutcome(state)
    listed = True
    if unconfirmed is not None:
        try:
            _check_still_queued(unconfirmed, record_id, scheduler_id)
        except NotQueuedError:
            if not force:
                raise
            # nothing runs that a signal could stop; the user asked for the row to be closed
            mark_cancelled(registry, record_id, GONE_FORCED_CAUSE)
            return CancelOutcome(None, unconfirmed)
        except ClusterError as exc:
            if not force:
                raise  # with --force, the scancel goes ahead; one that fails marks the row
            said = str(exc.__cause__ or exc).removesuffix(RETRY)
            unconfirmed, listed = f"{unconfirmed}; {said}", False
    try:
        if backend == "local" and host not in (None, this_host()):
            raise ClusterError(
                f"job {record_id} runs on host {host}; cancel it there, or if it is gone, "
                f"`pomlia jobs cancel {record_id} --force` marks it cancelled here"
            )
        _signal(registry, record_id, backend, scheduler_id, folder)
    except ClusterError:
        if not force:
            raise
        mark_cancelled(registry, record_id, FORCED_CAUSE)
        return CancelOutcome(None, unconfirmed, listed)
    if backend != "slurm" or unconfirmed is not None:  # sacct known out of reach: not asked
        # a Slurm row stays unconfirmed: a later poll records how Slurm says the job ended
        cancelled = mark_cancelled(registry, record_id)
    else:  # scancel of a job that ended meanwhile exits 0: what Slurm says after it counts
        cancelled = bool(record_cancelled(registry, [record_id], "cancelled by user"))
    if not cancelled:
        with registry.session() as s:
            row = s.get(Job, record_id)
            return CancelOutcome(row.state if row is not None else None)
    return CancelOutcome(None, unconfirmed, listed)


def _check_still_queued(unconfirmed: str, record_id: int, scheduler_id: str) -> None:
    """With ``sacct`` out of reach (``unconfirmed``: its error), ask ``squeue`` whether Slurm
    job ``scheduler_id`` is still queued or running; an error saying both when it cannot
    tell, or when the job is not listed (nothing to cancel, its end unknown until ``sacct``
    answers)."""
    try:
        listed = scheduler_id in squeue_ids([scheduler_id])
    except ClusterError as exc:
        said = str(exc).removesuffix(RETRY)
        raise failure_kind(exc)(f"{unconfirmed}; {said}: nothing was cancelled{RETRY}") from exc
    if not listed:
        raise NotQueuedError(
            f"{unconfirmed}; squeue does not list job {record_id} (slurm {scheduler_id}): it "
            "is no longer queued or running and nothing was cancelled; the same command "
            "records its final state once sacct answers"
        )


def _signal(
    registry: Registry, record_id: int, backend: str, scheduler_id: str, folder: str | None
) -> None:
    """Signal the job of a row; a :class:`ClusterError` unless it was signalled or turned out
    to have ended (then its row holds the final state)."""
    try:
        # Older rows may hold a relative folder; submitit's command line has it absolute.
        absolute = folder if folder and Path(folder).is_absolute() else None
        cancel_scheduler_job(backend, scheduler_id, folder=absolute)
    except ClusterError as exc:
        with contextlib.suppress(ClusterError):  # accounting down too: the scancel error stands
            refresh_jobs(registry, [record_id])
        if backend == "slurm":
            # scancel refuses a job Slurm forgot; if squeue/sacct cannot answer either, the
            # scancel error stands.
            with contextlib.suppress(ClusterError):
                mark_lost(registry, [record_id])
        with registry.session() as s:
            row = s.get(Job, record_id)
            if row is not None and row.state in FINAL_STATES:
                return  # it ended (or was forgotten) between the refresh and the signal
        if "--force" not in str(exc):
            exc.hint = (
                f"if the job is gone, `pomlia jobs cancel {record_id} --force` marks it "
                "cancelled in the registry (nothing is signalled)"
            )
        raise
