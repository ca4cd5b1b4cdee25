"""Attaching to jobs that an earlier process submitted (a driver killed and restarted).

Such a job has a registry row (backend, scheduler id) but no submitit handle in this process.
:class:`AttachedJob` follows it through the scheduler; :func:`poll_attached` asks about any number
of them at once (ONE ``sacct`` for all Slurm jobs; a local job is a process of this machine).
What the job left on disk decides the rest, through two probes the caller gives: whether its
result is there, and the failure it reported (its own error line and traceback).

Semantics, once the scheduler has answered:

- **ended**: the scheduler reports a final state (PREEMPTED: not requeued for a while), or
  does not know the job at all;
- **done**: ended, or the result is there (collect it);
- **lost**: ended without a result and without a failure of its own, and unknown to the
  scheduler (never ran, or purged; or LOST: requeued, then gone from the controller before it
  ran again) or, if asked, cancelled: nothing was learnt, so running it again is safe.

A failing ``sacct`` (slurmdbd restarting, a timeout) says nothing about the jobs: the poll
changes nothing and the next one asks again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pomlia_hpc.cluster.failures import job_limits, log_cause, log_tail
from pomlia_hpc.cluster.handle import JobFailedError
from pomlia_hpc.cluster.localresult import local_cancel_cause
from pomlia_hpc.cluster.records import (
    FINAL_STATES,
    SchedulerState,
    attempts_run,
    sacct_states,
    squeue_ids,
    update_job,
)
from pomlia_hpc.cluster.states import ended_for_good
from pomlia_hpc.cluster.submitit_local import CONTROLLER_META
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.processes import pid_alive
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.vocab import REQUEUABLE_STATES

#: A job's own failure: (its error in one line, its traceback or None).
Failure = tuple[str, str | None]


class AttachedJob:
    """A job of registry row ``row``, submitted by a process that is gone.

    ``has_result()``: whether the job's result is there; ``failure()``: the failure the job
    reported, or None."""

    def __init__(
        self,
        registry: Registry,
        row: Job,
        *,
        has_result: Callable[[], bool],
        failure: Callable[[], Failure | None],
    ) -> None:
        self.registry, self.record_id = registry, int(row.id)
        self.backend, self.job_id = row.backend, row.scheduler_id
        self.folder = row.folder
        #: A local job's process start id, recorded at submission: its Ctrl-C marker's name.
        self.controller: str | None = (row.meta or {}).get(CONTROLLER_META)
        #: Why a local job gone without a trace ended, when its controller noted a signal.
        self.cancel_cause: str | None = None
        self.has_result, self.failure = has_result, failure
        #: The scheduler's state; ``None``: unknown to it (never ran, or long forgotten).
        self.state: str | None = "PENDING"
        self.ended_at: datetime | None = None
        #: sacct's ExitCode and the attempts that ran (as recorded until sacct answers); the
        #: time limit and signal delay it ran under.
        self.exit_code: str | None = None
        self.attempts = attempts_run(row)
        self.limits = job_limits(row.meta)

    def update(self, state: SchedulerState | None) -> None:
        """Take the scheduler's answer for this job (``None``: it does not know the job)."""
        self.state = state.state if state is not None else None
        self.ended_at = state.ended_at if state is not None else None
        if state is not None:
            self.exit_code = state.exit_code
            if state.attempts_run is not None:
                self.attempts = state.attempts_run
            else:  # not read from sacct: each requeue made an attempt
                self.attempts = max(self.attempts, state.requeue_count + 1)

    def check_local(self) -> None:
        """A local job is a process of this machine: running while its pid lives."""
        if self.job_id.isdigit() and pid_alive(int(self.job_id)):
            self.state = "RUNNING"
        elif self.has_result():
            self.state = "COMPLETED"
        elif self.failure() is not None:
            self.state = "FAILED"
        else:
            self.state = None  # gone without a trace: killed, as if cancelled
            self.cancel_cause = local_cancel_cause(self.folder, self.job_id, self.controller)

    @property
    def ended(self) -> bool:
        """Whether the job has ended: a final state, or unknown to the scheduler. PREEMPTED
        and NODE_FAIL only once Slurm has not requeued it for a while
        (``states.ended_for_good``), as for a job this process submitted: a trial preempted and
        requeued at once was taken for failed, and its next attempt ran on unwatched."""
        if self.state in REQUEUABLE_STATES:
            return ended_for_good(self.state, self.ended_at)
        return self.state is None or self.state in FINAL_STATES

    def done(self) -> bool:
        return self.has_result() or self.ended

    def lost(self, *, cancelled_too: bool) -> bool:
        """Ended without a result and without a failure of its own: safe to run again."""
        if self.has_result() or self.failure() is not None:
            return False
        if self.state in (None, "LOST"):  # LOST: requeued, then gone (cluster/requeued.py)
            return True
        return cancelled_too and self.state == "CANCELLED"

    def close_row(self, state: str, **fields: Any) -> None:
        """Record the job's end in its row (Slurm's End time when known, else now)."""
        update_job(
            self.registry,
            self.record_id,
            state=state,
            ended_at=self.ended_at or datetime.now(UTC),
            **fields,
        )

    def forget(self, what: str = "job") -> None:
        """Close the job's row: its work (a ``what``) is submitted again as a new job. A local
        job its controller noted as interrupted (Ctrl-C) was cancelled, not failed."""
        if self.state is None and self.cancel_cause is not None:
            state, why = "CANCELLED", self.cancel_cause
        else:
            state, why = self.state or "FAILED", self.state or "unknown to the scheduler"
        self.close_row(state, exit_cause=f"{why}; the {what} was resubmitted")

    def completed(self) -> None:
        """Record that the job's result was collected (a cancel recorded just after it ended
        does not stay its cause: the row's state and cause agree)."""
        self.close_row("COMPLETED", exit_cause=None)

    def failed(self) -> JobFailedError:
        """Record the job's failure and return it as a :class:`JobFailedError` to raise: its
        state (a job without a result never completed, whatever its exit code said), its own
        error line and traceback."""
        error, tb = self.failure() or ("no result", None)
        known = self.state
        state = known if known is not None and known != "COMPLETED" else "FAILED"
        if state == "FAILED" and self.backend == "slurm":
            # Gave up requeueing, or killed by the checkpoint signal: its logs say which.
            logs = "\n".join([error, tb or "", log_tail(self.folder, self.job_id)])
            error = (
                log_cause(
                    logs, exit_code=self.exit_code, attempts=self.attempts, limits=self.limits
                )
                or error
            )
        self.close_row(state, exit_cause=error[:500], traceback=tb)
        return JobFailedError(
            f"job {self.job_id} ended {state}: {error}", state=state, traceback=tb, detail=error
        )


def poll_attached(jobs: Sequence[AttachedJob]) -> None:
    """Update the state of ``jobs``: one ``sacct`` for all Slurm jobs among them (a failing one
    changes nothing), a look at the process of each local job."""
    slurm = [j for j in jobs if j.backend == "slurm"]
    if slurm:
        try:
            states = sacct_states(j.job_id for j in slurm)
        except ClusterError:
            pass  # an accounting hiccup says nothing about the jobs: ask again next poll
        else:
            unknown = [j.job_id for j in slurm if j.job_id not in states]
            try:
                # Just submitted (a driver killed at once): squeue lists it before sacct does.
                queued = squeue_ids(unknown) if unknown else set()
            except ClusterError:
                queued = set(unknown)  # cannot tell: not "lost" on a hiccup
            for j in slurm:
                st = states.get(j.job_id)
                # may_requeue: whether Slurm requeued it is not known yet; ask again next poll
                if j.job_id not in queued and not (st is not None and st.may_requeue):
                    j.update(st)
    for j in jobs:
        if j.backend != "slurm":
            j.check_local()
