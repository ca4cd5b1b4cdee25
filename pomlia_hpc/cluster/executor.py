"""Executors: run plain Python callables locally, in-process, or as Slurm jobs (via submitit).

>>> ex = Executor.from_profile("local", folder)           # doctest: +SKIP
>>> handle = ex.submit(sum, [1, 2, 3], name="add")        # doctest: +SKIP
>>> handle.result()                                       # doctest: +SKIP
6

Every job is recorded in the registry when one is given (state, times, requeues, traceback).
Arrays larger than the cluster's ``max_array_size`` are split into several Slurm arrays that run
one after the other, each with at most ``max_parallel`` tasks at once; the local backend caps
the number of concurrent processes the same way.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import submitit
from sqlalchemy import func, select
from submitit.core.utils import UncompletedJobError

from pomlia_hpc.cluster import records, submitit_controller
from pomlia_hpc.cluster.cancel import cancel_scheduler_job, kill_after_grace
from pomlia_hpc.cluster.failures import exit_line, failure_cause, timeout_cause
from pomlia_hpc.cluster.records import (
    FINAL_STATES,
    mark_cancelled,
    record_submission,
    refresh_slurm_jobs,
    sacct_states,
    this_host,
    update_job,
)
from pomlia_hpc.cluster.refusal import sbatch_refusals, warn_signal_delay, watch_pending
from pomlia_hpc.cluster.resources import after_ok_parameters, submitit_parameters, with_overrides
from pomlia_hpc.cluster.terminate import collected, own_job
from pomlia_hpc.config import ClusterProfile, load_cluster_profile
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.registry import Job, Registry


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

    def _bind(self, job: submitit.Job[Any]) -> None:
        if self._executor.profile.backend == "local":
            # submitit waits up to 15 s for a result file that a shared filesystem may show
            # late; a local job's folder is on this machine, and a killed job never writes one.
            job._results_timeout_s = 2
        self._job = job
        own_job(self)  # cancelled with this process, until its outcome is collected
        self._submitted.set()

    def _fail_submission(self, exc: BaseException) -> None:
        self._error = exc
        self._submitted.set()

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
            raise ClusterError(f"submission failed: {self._error}") from self._error
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
        return normalize_state(self.job().state)

    def done(self) -> bool:
        """Whether the job has ended, or will never run (its submission failed or was
        cancelled before it happened)."""
        if self._error is not None or self.given_up_state is not None:
            return True
        if not self.submitted or self.job().done():
            return self.submitted
        if self._executor.backend == "slurm":
            watch_pending(self)  # a job Slurm will never start is cancelled and given up
        return self.given_up_state is not None

    def cancel(self, cause: str = "cancelled by user") -> None:
        """Cancel the job (``scancel`` on Slurm; SIGINT for a local process, then SIGKILL if it
        still runs after :data:`~pomlia_hpc.cluster.cancel.LOCAL_CANCEL_GRACE_S`); ``cause``
        (by whom or what) is recorded as its exit cause.

        A job that has already ended keeps its state; a throttled job that was not submitted yet
        never will be. Raises :class:`ClusterError` if ``scancel`` refuses a running job."""
        if self._executor._drop_pending(self):
            self._fail_submission(ClusterError("cancelled before submission"))
            return
        try:
            job = self.job(None)  # waits for a submission the feeder may have under way
        except ClusterError:
            return  # its submission failed: nothing runs, nothing to cancel
        if self._ended_state(job) is not None:
            return
        if self._executor.backend == "slurm":
            try:
                cancel_scheduler_job("slurm", str(job.job_id))
            except ClusterError:
                if self._ended_state(job) is not None:
                    return  # it ended between our look and scancel
                raise
        else:
            job.cancel(check=False)
            process = getattr(job, "_process", None)  # submitit's LocalJob keeps its Popen
            if isinstance(process, subprocess.Popen):
                threading.Thread(target=kill_after_grace, args=(process,), daemon=True).start()
        if self.record_id is not None and self._executor.registry is not None:
            mark_cancelled(self._executor.registry, self.record_id, cause)
        collected(self)

    def _ended_state(self, job: submitit.Job[Any]) -> str | None:
        """The job's final state if it has ended (Slurm: asked now, recorded), else None."""
        reg, rid = self._executor.registry, self.record_id
        if self._executor.backend == "slurm":
            if reg is not None and rid is not None:
                refresh_slurm_jobs(reg, [rid])
                with reg.session() as s:
                    row = s.get(Job, rid)
                    state = row.state if row is not None else "UNKNOWN"
            else:
                st = sacct_states([str(job.job_id)]).get(str(job.job_id))
                state = st.state if st is not None else "UNKNOWN"
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
            if time.monotonic() - last_check >= SLURM_FINAL_CHECK_S:
                last_check = time.monotonic()
                try:
                    st = sacct_states([str(job.job_id)]).get(str(job.job_id))
                except ClusterError:
                    continue  # an accounting hiccup says nothing about the job: ask again later
                if st is not None and _ended_for_good(st.state, st.ended_at):
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
            value = job.result()
        except UncompletedJobError as exc:
            state, tb = self._failure_details(job, exc)
            if self.given_up_state is not None:
                state = self.given_up_state
            cause = ""  # a cancellation's recorded cause (by whom), else the traceback's line
            requeues = 0
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
                    requeues = row.requeue_count if row is not None else 0
                fields["ended_at"] = ended or datetime.now(UTC)
            if state == "CANCELLED" and not cause:
                # The traceback of a cancelled job is the signal's (KeyboardInterrupt, a
                # DataLoader worker killed by SIGTERM), not a cause: the state is.
                cause = failure_cause(state, None)
            res = self.resources
            cause = (
                cause
                or timeout_cause(tb, requeues, res.time_min, res.signal_delay_s)
                or exit_line(state, tb)
            )
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
                fields["ended_at"] = datetime.now(UTC)
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


#: Seconds between the ``sacct`` calls with which a waiting ``result()`` looks for a Slurm job
#: that ended in a state submitit does not count as done.
SLURM_FINAL_CHECK_S = 30.0

#: Seconds after a preemption without a new attempt from which a job counts as ended: a cluster
#: that requeues preempted jobs has started the next attempt by then.
PREEMPT_GRACE_S = 120.0


#: Seconds to wait for ``sacct`` to show the End of Slurm jobs that have written their result:
#: slurmdbd records it a moment after the job ends. After that the collection time is used.
SLURM_END_WAIT_S = 10.0


def settle_slurm_rows(reg: Registry, ids: Sequence[int]) -> None:
    """Refresh the Slurm rows ``ids`` until each has an end time (at most
    :data:`SLURM_END_WAIT_S` seconds), so that the recorded end and state are Slurm's."""
    deadline = time.monotonic() + SLURM_END_WAIT_S
    while True:
        # An accounting hiccup: ask again until the deadline, then keep what is known.
        with contextlib.suppress(ClusterError):
            refresh_slurm_jobs(reg, ids)
        with reg.session() as s:
            q = select(func.count()).select_from(Job)
            missing = s.scalar(q.where(Job.id.in_(ids), Job.ended_at.is_(None)))
        if not missing or time.monotonic() >= deadline:
            return
        time.sleep(0.5)


def _ended_for_good(state: str, ended_at: datetime | None) -> bool:
    """Whether a job that submitit still counts as unfinished has really ended."""
    if state != "PREEMPTED" or ended_at is None:
        return False
    return (records.utcnow() - ended_at).total_seconds() >= PREEMPT_GRACE_S


def normalize_state(state: str) -> str:
    """Map submitit/Slurm state strings onto the registry's vocabulary."""
    s = state.split()[0].upper() if state else "UNKNOWN"
    return {"FINISHED": "COMPLETED", "DONE": "COMPLETED", "READY": "PENDING", "NO": "FAILED"}.get(
        s, s
    )


class Executor:
    """Submit callables through one cluster profile; record every job in ``registry``."""

    def __init__(
        self, profile: ClusterProfile, folder: Path | str, registry: Registry | None = None
    ) -> None:
        self.profile = profile
        # Absolute, as submitit puts it on a local job's command line (see is_local_job_process).
        self.folder = Path(folder).expanduser().absolute()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self._pending: list[
            tuple[JobHandle, Callable[..., Any], tuple[Any, ...], ClusterProfile, str]
        ] = []
        self._running: list[JobHandle] = []
        self._lock = threading.Lock()
        self._feeder: threading.Thread | None = None

    @classmethod
    def from_profile(
        cls, profile: str, folder: Path | str, registry: Registry | None = None, **overrides: Any
    ) -> Executor:
        """An executor for the cluster profile named ``profile`` (``configs/cluster/NAME.yaml``)."""
        return cls(load_cluster_profile(profile, **overrides), folder, registry)

    @property
    def backend(self) -> str:
        return self.profile.backend

    def _submitit(self, profile: ClusterProfile, name: str) -> submitit.AutoExecutor:
        if profile.backend == "local":
            submitit_controller.install()  # a cancelled local job ends without a traceback
        warn_signal_delay(profile)  # a limit so short that the job may never finish an epoch
        ex = submitit.AutoExecutor(folder=self.folder, cluster=profile.backend)
        ex.update_parameters(**submitit_parameters(profile, name=name))
        return ex

    def _record(self, ids: Sequence[str], name: str, array_id: str | None) -> list[int | None]:
        if self.registry is None:
            return [None] * len(ids)
        return list(
            record_submission(
                self.registry,
                backend=self.backend,
                scheduler_ids=list(ids),
                name=name,
                folder=str(self.folder),
                array_job_id=array_id,
                meta={"host": this_host()} if self.backend == "local" else None,
                # submitit launches a local job's process at once: it has started
                started=self.backend == "local",
            )
        )

    # -- single jobs --------------------------------------------------------------------------
    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        name: str = "pomlia",
        resources: dict[str, Any] | None = None,
        after_ok: Sequence[JobHandle] = (),
        **kwargs: Any,
    ) -> JobHandle:
        """Submit ``fn(*args, **kwargs)`` as one job. ``after_ok``: Slurm jobs that must end
        COMPLETED before this one starts (``--dependency=afterok``); if one fails, Slurm
        cancels this one (``--kill-on-invalid-dep``). Only the Slurm backend chains jobs."""
        profile = with_overrides(self.profile, resources)
        ex = self._submitit(profile, name)
        if after_ok:
            ex.update_parameters(**after_ok_parameters(profile, [h.job_id for h in after_ok]))
        with sbatch_refusals(profile, name):  # one line naming the option, not a traceback
            job = ex.submit(fn, *args, **kwargs)
        (rid,) = self._record([str(job.job_id)], name, None)
        handle = JobHandle(self, rid)
        handle.resources = profile
        handle._bind(job)
        return handle

    # -- arrays ------------------------------------------------------------------------------
    def map_array(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        *,
        name: str = "pomlia-array",
        resources: dict[str, Any] | None = None,
    ) -> list[JobHandle]:
        """Run ``fn(item)`` for each item as an array job; one handle per item, in order."""
        profile = with_overrides(self.profile, resources)
        if not items:
            return []
        if profile.backend == "slurm":
            return self._slurm_array(fn, items, profile, name)
        if profile.backend == "debug":
            return [self.submit(fn, item, name=name, resources=resources) for item in items]
        return self._local_array(fn, items, profile, name)

    def _slurm_array(
        self, fn: Callable[..., Any], items: Sequence[Any], profile: ClusterProfile, name: str
    ) -> list[JobHandle]:
        handles: list[JobHandle] = []
        previous: str | None = None
        size = profile.max_array_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            ex = self._submitit(profile, name)
            if previous is not None:
                # Chunks run one after the other so that max_parallel holds for the whole array.
                ex.update_parameters(
                    slurm_additional_parameters={"dependency": f"afterany:{previous}"}
                )
            with sbatch_refusals(profile, name), ex.batch():
                jobs = [ex.submit(fn, item) for item in chunk]
            array_id = str(jobs[0].job_id).split("_")[0]
            previous = array_id
            ids = self._record([str(j.job_id) for j in jobs], name, array_id)
            for job, rid in zip(jobs, ids, strict=True):
                h = JobHandle(self, rid)
                h.resources = profile
                h._bind(job)
                handles.append(h)
        return handles

    def _local_array(
        self, fn: Callable[..., Any], items: Sequence[Any], profile: ClusterProfile, name: str
    ) -> list[JobHandle]:
        handles = []
        for item in items:
            h = JobHandle(self, None)
            handles.append(h)
            with self._lock:
                self._pending.append((h, fn, (item,), profile, name))
        self._pump()
        with self._lock:
            if self._feeder is None or not self._feeder.is_alive():
                self._feeder = threading.Thread(target=self._feed, daemon=True)
                self._feeder.start()
        return handles

    def _pump(self) -> None:
        """Start pending local jobs while fewer than ``max_parallel`` run."""
        while True:
            with self._lock:
                self._running = [h for h in self._running if not h.done()]
                if not self._pending or len(self._running) >= self.profile.max_parallel:
                    return
                handle, fn, args, profile, name = self._pending.pop(0)
                self._running.append(handle)
            try:
                job = self._submitit(profile, name).submit(fn, *args)
            except Exception as exc:
                with self._lock:
                    self._running.remove(handle)  # it holds no max_parallel slot
                handle._fail_submission(exc)
                continue
            (handle.record_id,) = self._record([str(job.job_id)], name, None)
            handle._bind(job)

    def _feed(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
            self._pump()
            time.sleep(0.1)

    def _drop_pending(self, handle: JobHandle) -> bool:
        """Remove ``handle`` from the queue of unsubmitted jobs; False if it is not queued
        (submitted, being submitted, or never throttled)."""
        with self._lock:
            kept = [p for p in self._pending if p[0] is not handle]
            dropped = len(kept) != len(self._pending)
            self._pending = kept
            return dropped


def wait_all(
    handles: Sequence[JobHandle], *, poll_s: float = 1.0, registry: Registry | None = None
) -> list[Any]:
    """Wait for all ``handles``; return results in order (exceptions in place of failures).

    A job that never ran (its submission failed, or it was cancelled before submission) gives
    the :class:`ClusterError` that says so.

    On Slurm each poll refreshes every job's registry row with one ``sacct`` call.
    """
    reg = registry or (handles[0]._executor.registry if handles else None)
    while not all(h.done() for h in handles):
        waiting = [h for h in handles if h.submitted and not h.done()]
        if waiting and handles[0]._executor.backend == "slurm":
            _poll_slurm(waiting, reg)
        time.sleep(poll_s)
    recorded = [h.record_id for h in handles if h.submitted and h.record_id is not None]
    if reg is not None and recorded and handles[0]._executor.backend == "slurm":
        settle_slurm_rows(reg, recorded)  # one wait for all, not one per result() below
    out: list[Any] = []
    for h in handles:
        if h._error is not None:
            out.append(ClusterError(f"job never ran: {h._error}"))
            continue
        try:
            out.append(h.result())
        except JobFailedError as exc:
            out.append(exc)
    return out


def _poll_slurm(handles: Sequence[JobHandle], reg: Registry | None) -> None:
    """One ``sacct`` for all ``handles``: refresh their rows, and give up on jobs that ended in
    a state submitit keeps waiting on. A failing ``sacct`` (slurmdbd restarting, a timeout) says
    nothing about the jobs: this poll changes nothing and the next one asks again."""
    try:
        _poll_slurm_once(handles, reg)
    except ClusterError:
        return


def _poll_slurm_once(handles: Sequence[JobHandle], reg: Registry | None) -> None:
    if reg is not None and all(h.record_id is not None for h in handles):
        ids = [h.record_id for h in handles if h.record_id is not None]
        refresh_slurm_jobs(reg, ids)
        with reg.session() as s:
            rows = {
                r.id: (r.state, r.ended_at) for r in s.scalars(select(Job).where(Job.id.in_(ids)))
            }
        for h in handles:
            state, ended = rows.get(h.record_id or -1, ("UNKNOWN", None))
            if _ended_for_good(state, ended):
                h.given_up_state = state
        return
    states = sacct_states(h.job_id for h in handles)
    for h in handles:
        st = states.get(h.job_id)
        if st is not None and _ended_for_good(st.state, st.ended_at):
            h.given_up_state = st.state
