"""The handle of one submitted job (or array task): its state, result, failure and cancel, for
every backend alike, and the error of a job that ended without a result.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import submitit
from submitit.core.utils import UncompletedJobError

from pomlia_hpc.cluster import sacctwatch, states
from pomlia_hpc.cluster.cancel import (
    AFTER_SCANCEL_SACCT_S,
    cancel_scheduler_job,
    kill_after_grace,
    record_cancelled,
)
from pomlia_hpc.cluster.debugjob import debug_result, debug_state, run_debug_job
from pomlia_hpc.cluster.endwatch import ended_unseen
from pomlia_hpc.cluster.failures import exit_line, failure_cause, log_cause, log_tail
from pomlia_hpc.cluster.localresult import local_cancel_cause
from pomlia_hpc.cluster.records import (
    FINAL_STATES,
    attempts_run,
    mark_cancelled,
    refresh_slurm_jobs,
    sacct_states,
    squeue_ids,
    update_job,
)
from pomlia_hpc.cluster.refusal import watch_pending
from pomlia_hpc.cluster.states import ended_for_good, normalize_state, settle_slurm_rows
from pomlia_hpc.cluster.terminate import collected, own_job
from pomlia_hpc.config import ClusterProfile
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.registry import Job, Registry

if TYPE_CHECKING:
    from pomlia_hpc.cluster.executor import Executor


class JobFailedError(ClusterError):
    """A job ended without a result. ``traceback`` holds the remote traceback, if any."""

    def __init__(
        self, message: str, *, state: str, traceback: str | None, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.state = state
        self.traceback = traceback
        #: The job's own error in one line (the exception line, or what the job reported).
        self.detail = detail

    @property
    def cause(self) -> str:
        """Why the job failed, in one line (:func:`~pomlia_hpc.cluster.failures.failure_cause`)."""
        return failure_cause(self.state, self.traceback, self.detail)


class JobHandle:
    """One submitted job (or array task). Cheap to create; ``result()`` blocks."""

    def __init__(self, executor: Executor, record_id: int | None) -> None:
        self._executor = executor
        self.record_id = record_id
        self._job: submitit.Job[Any] | None = None
        self._submitted = threading.Event()
        self._error: BaseException | None = None
        #: Set when Slurm reports the job ended in a state submitit keeps waiting on.
        self.given_up_state: str | None = None
        #: Whether a restarted driver reattaches to this job (an AutoML trial): a driver
        #: stopped for a requeue leaves it running (see cluster.terminate.cancel_own_jobs).
        self.adoptable = False
        #: What the job asked for (the profile with its overrides); Slurm's pending reason.
        self.resources: ClusterProfile = executor.profile
        self.pending_reason: str | None = None
        #: A local job's process start id (``processes.process_start_id``): its Ctrl-C marker.
        self.controller: str | None = None

    def _bind(self, job: submitit.Job[Any]) -> None:
        if self._executor.profile.backend == "local":
            # submitit waits up to 15 s for a result file that a shared filesystem may show
            # late; a local job's folder is on this machine, and a killed job never writes one.
            job._results_timeout_s = 2
        elif self._executor.profile.backend == "slurm":
            sacctwatch.bind(job)  # collecting it never waits on a sacct without a limit
        self._job = job
        own_job(self)  # cancelled with this process, until its outcome is collected
        self._submitted.set()

    def _fail_submission(self, exc: BaseException) -> None:
        self._error = exc
        self._submitted.set()

    @property
    def submission_error(self) -> BaseException | None:
        """Why the job was never submitted (sbatch failed, cancelled before submission)."""
        return self._error

    @property
    def submitted(self) -> bool:
        return self._job is not None

    @property
    def scheduler_id(self) -> str | None:
        """The scheduler's id of the job (Slurm job id, local pid); None before submission."""
        return None if self._job is None else str(self._job.job_id)

    @property
    def backend(self) -> str:
        """The backend the job runs on (``local``, ``debug``, ``slurm``)."""
        return self._executor.backend

    @property
    def registry(self) -> Registry | None:
        """The registry the job is recorded in, if any."""
        return self._executor.registry

    @property
    def name(self) -> str:
        """How messages name the job (:meth:`label`); the registry id alone before submission."""
        return self.label(self._job) if self._job is not None else str(self.record_id)

    def job(self, timeout: float | None = None) -> submitit.Job[Any]:
        """The underlying submitit job, waiting up to ``timeout`` s for a throttled submission."""
        if not self._submitted.wait(timeout):
            raise TimeoutError("job not submitted yet")
        if self._error is not None:
            # a controller out of reach stays one (exit 69), not a refusal
            kind = type(self._error) if isinstance(self._error, ClusterError) else ClusterError
            raise kind(f"submission failed: {self._error}") from self._error
        assert self._job is not None
        return self._job

    @property
    def job_id(self) -> str:
        """The scheduler's id: a Slurm job id (``123`` or ``123_4``), or a local pid."""
        return str(self.job(None).job_id)

    @property
    def state(self) -> str:
        """Scheduler state (PENDING, RUNNING, COMPLETED, FAILED, ...)."""
        if not self.submitted:
            return "PENDING"
        if self.backend == "debug":
            return debug_state(self.job())  # submitit's would run it
        return normalize_state(self.job().state)

    def done(self) -> bool:
        """Whether the job has ended, or will never run (its submission failed or was
        cancelled before it happened)."""
        if self._error is not None or self.given_up_state is not None:
            return True
        if not self.submitted:
            return False
        job = self.job()
        if self._executor.backend == "debug":
            run_debug_job(job)  # here, once: a failure is its outcome, not raised
            return True
        if self._executor.backend != "slurm":
            return bool(job.done())
        # Not submitit's done(): it polls sacct without a time limit in this thread, and
        # counts a SUSPENDED job as done (endwatch.py).
        if job.paths.result_pickle.exists() or ended_unseen(str(job.job_id)):
            return True
        watch_pending(self)  # a job Slurm will never start is cancelled and given up
        return self.given_up_state is not None

    def cancel(self, cause: str = "cancelled by user") -> None:
        """Cancel the job (``scancel`` on Slurm; SIGINT for a local process, then SIGKILL if it
        still runs after :data:`~pomlia_hpc.cluster.cancel.LOCAL_CANCEL_GRACE_S`); ``cause``
        (by whom or what) is recorded as its exit cause.

        A job that has already ended keeps its state; a throttled job that was not submitted yet
        never will be; a Slurm job is ``scancel``-ed also when accounting cannot say whether it
        has ended. Raises :class:`ClusterError` if ``scancel`` refuses a running job."""
        if self._executor._drop_pending(self):
            self._fail_submission(ClusterError("cancelled before submission"))
            return
        try:
            job = self.job(None)  # waits for a submission the feeder may have under way
        except ClusterError:
            return  # its submission failed: nothing runs, nothing to cancel
        if self._looked_ended(job):
            return
        if self._executor.backend == "slurm":
            try:
                cancel_scheduler_job("slurm", str(job.job_id))
            except ClusterError:
                if self._looked_ended(job):
                    return  # it ended between our look and scancel
                raise
        else:
            job.cancel(check=False)
            process = getattr(job, "_process", None)  # submitit's LocalJob keeps its Popen
            if isinstance(process, subprocess.Popen):
                threading.Thread(target=kill_after_grace, args=(process,), daemon=True).start()
        reg = self._executor.registry
        if self.record_id is not None and reg is not None:
            if self._executor.backend == "slurm":  # it may have ended just before the scancel
                record_cancelled(reg, [self.record_id], cause)
            else:
                mark_cancelled(reg, self.record_id, cause)
        collected(self)

    def _looked_ended(self, job: submitit.Job[Any]) -> bool:
        """Whether ``job`` has ended: :meth:`_ended_state` within
        :data:`~pomlia_hpc.cluster.cancel.AFTER_SCANCEL_SACCT_S` s. When Slurm's accounting
        cannot answer (down, or not in time), a Slurm job ``squeue`` no longer lists has ended
        (its row is left as it is, for the next poll to record how), and one it lists, or
        when ``squeue`` cannot answer either, has not: the ``scancel`` goes ahead. A cancel
        that waited for accounting never cancelled while slurmdbd was down, and a job that
        will never start stopped its waiting driver with sacct's error; one that went ahead
        without asking ``squeue`` recorded a job that had ended (``scancel`` exits 0 for it)
        CANCELLED for good."""
        try:
            return self._ended_state(job, timeout_s=AFTER_SCANCEL_SACCT_S) is not None
        except ClusterError:
            if self._executor.backend != "slurm":
                return False
        job_id = str(job.job_id)
        try:
            return job_id not in squeue_ids([job_id], AFTER_SCANCEL_SACCT_S)
        except ClusterError:
            return False

    def _ended_state(self, job: submitit.Job[Any], timeout_s: float = 60.0) -> str | None:
        """The job's final state if it has ended (Slurm: asked now with a ``sacct`` of at most
        ``timeout_s`` seconds, recorded), else None."""
        reg, rid = self._executor.registry, self.record_id
        if self._executor.backend == "slurm":
            if reg is not None and rid is not None:
                refresh_slurm_jobs(reg, [rid], timeout_s=timeout_s)
                with reg.session() as s:
                    row = s.get(Job, rid)
                    state = row.state if row is not None else "UNKNOWN"
            else:
                st = sacct_states([str(job.job_id)], timeout_s).get(str(job.job_id))
                state = st.state if st is not None else "UNKNOWN"
        elif self.backend == "debug":
            state = debug_state(job)  # not job.done(), which runs it
        else:
            state = normalize_state(job.state) if job.done() else "RUNNING"
        return state if state in FINAL_STATES else None

    def _wait(self, job: submitit.Job[Any]) -> None:
        """Wait until ``job`` is done or, on Slurm, ended for good in a state that submitit
        keeps waiting on (PREEMPTED on a cluster that cancels preempted jobs)."""
        if self._executor.backend != "slurm":
            return  # submitit's own wait is right for local and debug jobs
        last_check = time.monotonic()
        while not self.done():
            if time.monotonic() - last_check >= states.SLURM_FINAL_CHECK_S:
                last_check = time.monotonic()
                try:
                    st = sacct_states([str(job.job_id)]).get(str(job.job_id))
                except ClusterError:
                    continue  # an accounting hiccup says nothing about the job: ask again later
                if st is not None and not st.may_requeue and ended_for_good(st.state, st.ended_at):
                    self.given_up_state = st.state
                    return
            time.sleep(1.0)

    def result(self) -> Any:
        """Wait for the job and return its value; raise :class:`JobFailedError` if it failed."""
        job = self.job(None)
        try:
            value = self._result(job)
        except Exception:
            self._collected()
            raise
        # Not on KeyboardInterrupt or a cancellation: the job is still this process's to cancel.
        self._collected()
        return value

    def _collected(self) -> None:
        collected(self)  # its outcome is known: nothing left to cancel

    def _result(self, job: submitit.Job[Any]) -> Any:
        reg = self._executor.registry
        slurm = self._executor.profile.backend == "slurm"
        self._wait(job)
        try:
            if self.given_up_state is not None and not job.done():
                raise UncompletedJobError(f"job {job.job_id} ended {self.given_up_state}")
            value = debug_result(job) if self.backend == "debug" else job.result()
        except UncompletedJobError as exc:
            state, tb = self._failure_details(job, exc)
            if self.given_up_state is not None:
                state = self.given_up_state
            cause = ""  # a cancellation's recorded cause (by whom), else the traceback's line
            attempts = 1  # of the job that ran: see failures.timeout_cause
            if reg is not None and self.record_id is not None:
                fields: dict[str, Any] = {"traceback": tb}
                if slurm:
                    settle_slurm_rows(reg, [self.record_id])
                with reg.session() as s:
                    row = s.get(Job, self.record_id)
                    # Slurm's final state, or a cancellation recorded by cancel(), wins.
                    if row and row.state in FINAL_STATES and row.state != "COMPLETED":
                        state = row.state
                        if state == "CANCELLED":
                            cause = row.exit_cause or ""
                    # Slurm's End time, if sacct gave one, is when the job ended; now is later.
                    ended = row.ended_at if row is not None and slurm else None
                    attempts = attempts_run(row) if row is not None else 1
                fields["ended_at"] = ended or datetime.now(UTC)
            if not slurm and state != "CANCELLED":
                # Its controller was interrupted (a Ctrl-C reaches the job's processes too):
                # cancelled, not failed, whatever its tasks raised on the way out.
                folder = str(self._executor.folder)
                noted = local_cancel_cause(folder, str(job.job_id), self.controller)
                if noted is not None:
                    state, cause = "CANCELLED", noted
            if state == "CANCELLED" and not cause:
                # The traceback of a cancelled job is the signal's (KeyboardInterrupt, a
                # DataLoader worker killed by SIGTERM), not a cause: the state is.
                cause = failure_cause(state, None)
            res = self.resources
            if not cause and state == "FAILED":
                # Gave up requeueing, or killed by the checkpoint signal: the traceback (with
                # the job's last error lines) or, on Slurm, the job's logs say which.
                logs = tb + (
                    "\n" + log_tail(str(self._executor.folder), job.job_id) if slurm else ""
                )
                limits = (res.time_min, res.signal_delay_s) if slurm else None
                cause = log_cause(logs, attempts=attempts, limits=limits) or ""
            cause = cause or exit_line(state, tb)
            if reg is not None and self.record_id is not None:
                fields["state"] = state
                fields["exit_cause"] = cause
                update_job(reg, self.record_id, **fields)
            raise JobFailedError(
                f"job {self.label(job)} ended {state}: {cause}",
                state=state,
                traceback=tb,
                detail=cause,
            ) from exc
        if reg is not None and self.record_id is not None:
            fields = {"state": "COMPLETED", "exit_cause": None}
            if slurm:
                settle_slurm_rows(reg, [self.record_id])
                with reg.session() as s:
                    row = s.get(Job, self.record_id)
                    if row is None or row.ended_at is None:
                        fields["ended_at"] = datetime.now(UTC)
            else:
                # A local job ended when it wrote its result; this process may look much later.
                fields["ended_at"] = result_written(job) or datetime.now(UTC)
            update_job(reg, self.record_id, **fields)
        return value

    def label(self, job: submitit.Job[Any]) -> str:
        """How messages name the job: its registry id (what `pomlia jobs` takes) with the
        scheduler's id, e.g. ``4 (local 15301)``; only the scheduler's without a registry."""
        sched = f"{self._executor.backend} {job.job_id}"
        return f"{self.record_id} ({sched})" if self.record_id is not None else sched

    @staticmethod
    def _failure_details(job: submitit.Job[Any], exc: UncompletedJobError) -> tuple[str, str]:
        text = str(exc)
        if "has not produced any output" in text:
            try:
                state = normalize_state(job.state)
            except Exception:
                state = "FAILED"
            # A job without a result never "completed", whatever the process exit code says.
            ok = state in FINAL_STATES and state != "COMPLETED"
            return (state if ok else "FAILED"), text
        return "FAILED", text


def result_written(job: submitit.Job[Any]) -> datetime | None:
    """When ``job`` wrote its result file (submitit's pickle; UTC), or None when unknown."""
    try:
        return datetime.fromtimestamp(job.paths.result_pickle.stat().st_mtime, UTC)
    except (OSError, AttributeError):  # no file (a debug job runs in this process)
        return None


#: The most attempts a job makes at its time limit: submitit requeues a timed-out job
#: ``max_num_timeout`` times (its default, 3, which pomlia keeps), then gives up.
MAX_ATTEMPTS = 4
#: Seconds between two ``sacct`` polls of :class:`RequeueWatch`.
REQUEUE_POLL_S = 15.0


def requeue_note(attempt: int) -> str:
    """How a driver says that a job it waits on was requeued, ``attempt`` (2 or more) being the
    attempt that now runs: one wording for an encoder training and an AutoML trial alike."""
    return (
        f"requeued (attempt {attempt} of {MAX_ATTEMPTS} at its time limit): it resumes from "
        "its last checkpoint"
    )


def job_attempts(registry: Registry, record_ids: list[int]) -> dict[int, int]:
    """The attempts each Slurm job row of ``record_ids`` has run so far, the current one
    included, asked of ``sacct`` in one call (at most 10 s); a row the poll could not ask
    about (``sacct`` down, a node failure ``squeue`` could not confirm) gives its last count,
    never above the truth: one such row left out every other row's requeue (advice for
    people: a busy slurmdbd must not stop a driver's wait)."""
    if not record_ids:
        return {}
    try:
        with contextlib.suppress(ClusterError):  # the rows it could ask about were recorded
            refresh_slurm_jobs(registry, record_ids, timeout_s=10.0)
        with registry.session() as s:
            rows = [s.get(Job, rid) for rid in record_ids]
            return {int(r.id): attempts_run(r) for r in rows if r is not None}
    except (ClusterError, OSError):
        return {}


class RequeueWatch:
    """What a driver waiting on one Slurm job says when that job is requeued: a time-limit
    requeue left ~20 s gaps in the driver's log, never explained. :meth:`poll` asks the job's
    record (``sacct``, at most every :data:`REQUEUE_POLL_S` seconds) and returns a line once
    per new attempt (``requeued (attempt 2 of 4 at its time limit)``), else None."""

    def __init__(self, handle: JobHandle, what: str) -> None:
        self._handle, self._what = handle, what
        self._seen, self._polled = 1, -float("inf")

    def poll(self) -> str | None:
        """The line to say now about a new attempt, or None (nothing new, or not Slurm)."""
        handle, registry = self._handle, self._handle.registry
        if handle.backend != "slurm" or registry is None or handle.record_id is None:
            return None
        if time.monotonic() - self._polled < REQUEUE_POLL_S:
            return None
        self._polled = time.monotonic()
        attempt = job_attempts(registry, [handle.record_id]).get(handle.record_id, 1)
        if attempt <= self._seen:
            return None
        self._seen = attempt
        return f"{self._what} {handle.name} {requeue_note(attempt)}"
