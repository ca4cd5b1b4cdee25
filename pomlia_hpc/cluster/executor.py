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
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import UncompletedJobError

from pomlia_hpc.cluster.records import (
    FINAL_STATES,
    record_submission,
    refresh_slurm_jobs,
    update_job,
)
from pomlia_hpc.cluster.resources import submitit_parameters, with_overrides
from pomlia_hpc.config import ClusterProfile, load_cluster_profile
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.processes import pid_alive
from pomlia_hpc.registry import Job, Registry


class JobFailedError(ClusterError):
    """A job ended without a result. ``traceback`` holds the remote traceback, if any."""

    def __init__(self, message: str, *, state: str, traceback: str | None) -> None:
        super().__init__(message)
        self.state = state
        self.traceback = traceback


class JobHandle:
    """One submitted job (or array task). Cheap to create; ``result()`` blocks."""

    def __init__(self, executor: Executor, record_id: int | None) -> None:
        self._executor = executor
        self.record_id = record_id
        self._job: submitit.Job[Any] | None = None
        self._submitted = threading.Event()
        self._error: BaseException | None = None

    def _bind(self, job: submitit.Job[Any]) -> None:
        if self._executor.profile.backend == "local":
            # submitit waits up to 15 s for a result file that a shared filesystem may show
            # late; a local job's folder is on this machine, and a killed job never writes one.
            job._results_timeout_s = 2
        self._job = job
        self._submitted.set()

    def _fail_submission(self, exc: BaseException) -> None:
        self._error = exc
        self._submitted.set()

    @property
    def submitted(self) -> bool:
        return self._job is not None

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
        return self.submitted and self.job().done()

    def cancel(self) -> None:
        """Cancel the job (``scancel`` on Slurm; SIGINT for a local process, then SIGKILL if it
        still runs after :data:`LOCAL_CANCEL_GRACE_S`)."""
        if self.submitted:
            job = self.job()
            job.cancel(check=False)
            process = getattr(job, "_process", None)  # submitit's LocalJob keeps its Popen
            if isinstance(process, subprocess.Popen):
                threading.Thread(target=_kill_after_grace, args=(process,), daemon=True).start()
        else:
            self._executor._drop_pending(self)
            self._fail_submission(ClusterError("cancelled before submission"))
        if self.record_id is not None and self._executor.registry is not None:
            update_job(
                self._executor.registry,
                self.record_id,
                state="CANCELLED",
                exit_cause="cancelled by user",
                ended_at=datetime.now(UTC),
            )

    def result(self) -> Any:
        """Wait for the job and return its value; raise :class:`JobFailedError` if it failed."""
        job = self.job(None)
        reg = self._executor.registry
        try:
            value = job.result()
        except UncompletedJobError as exc:
            state, tb = self._failure_details(job, exc)
            if reg is not None and self.record_id is not None:
                fields: dict[str, Any] = {"traceback": tb, "ended_at": datetime.now(UTC)}
                if self._executor.profile.backend == "slurm":
                    refresh_slurm_jobs(reg, [self.record_id])
                with reg.session() as s:
                    row = s.get(Job, self.record_id)
                    # Slurm's final state, or a cancellation recorded by cancel(), wins.
                    if row and row.state in FINAL_STATES and row.state != "COMPLETED":
                        state = row.state
                fields["state"] = state
                fields["exit_cause"] = _exit_cause(state, tb)
                update_job(reg, self.record_id, **fields)
            raise JobFailedError(
                f"job {job.job_id} ended {state}: {_exit_cause(state, tb)}",
                state=state,
                traceback=tb,
            ) from exc
        if reg is not None and self.record_id is not None:
            if self._executor.profile.backend == "slurm":
                refresh_slurm_jobs(reg, [self.record_id])
            update_job(reg, self.record_id, state="COMPLETED", ended_at=datetime.now(UTC))
        return value

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


def normalize_state(state: str) -> str:
    """Map submitit/Slurm state strings onto the registry's vocabulary."""
    s = state.split()[0].upper() if state else "UNKNOWN"
    return {"FINISHED": "COMPLETED", "DONE": "COMPLETED", "READY": "PENDING", "NO": "FAILED"}.get(
        s, s
    )


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure)\b(:.*)?$")


def _exit_cause(state: str, traceback: str | None) -> str:
    """One line for the job table: the exception line of a traceback, else the state."""
    if traceback:
        lines = [ln.strip() for ln in traceback.strip().splitlines()]
        for line in reversed(lines):
            if _EXC_LINE.match(line) and not line.startswith("submitit."):
                return line[:500]
    return state


class Executor:
    """Submit callables through one cluster profile; record every job in ``registry``."""

    def __init__(
        self, profile: ClusterProfile, folder: Path | str, registry: Registry | None = None
    ) -> None:
        self.profile = profile
        self.folder = Path(folder)
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
            )
        )

    # -- single jobs --------------------------------------------------------------------------
    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        name: str = "pomlia",
        resources: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> JobHandle:
        """Submit ``fn(*args, **kwargs)`` as one job."""
        profile = with_overrides(self.profile, resources)
        job = self._submitit(profile, name).submit(fn, *args, **kwargs)
        (rid,) = self._record([str(job.job_id)], name, None)
        handle = JobHandle(self, rid)
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
            with ex.batch():
                jobs = [ex.submit(fn, item) for item in chunk]
            array_id = str(jobs[0].job_id).split("_")[0]
            previous = array_id
            ids = self._record([str(j.job_id) for j in jobs], name, array_id)
            for job, rid in zip(jobs, ids, strict=True):
                h = JobHandle(self, rid)
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

    def _drop_pending(self, handle: JobHandle) -> None:
        with self._lock:
            self._pending = [p for p in self._pending if p[0] is not handle]


def wait_all(
    handles: Sequence[JobHandle], *, poll_s: float = 1.0, registry: Registry | None = None
) -> list[Any]:
    """Wait for all ``handles``; return results in order (exceptions in place of failures).

    On Slurm each poll refreshes every job's registry row with one ``sacct`` call.
    """
    reg = registry or (handles[0]._executor.registry if handles else None)
    while not all(h.done() for h in handles):
        if reg is not None:
            ids = [h.record_id for h in handles if h.submitted and h.record_id is not None]
            slurm = [i for i in ids if i is not None]
            if slurm and handles[0]._executor.backend == "slurm":
                refresh_slurm_jobs(reg, slurm)
        time.sleep(poll_s)
    out: list[Any] = []
    for h in handles:
        try:
            out.append(h.result())
        except JobFailedError as exc:
            out.append(exc)
    return out


#: Seconds a cancelled local job may take to stop after SIGINT before it gets SIGKILL. A process
#: can ignore SIGINT without meaning to: it inherits SIG_IGN when started from a background job
#: of a non-interactive shell (cron, nohup scripts), and Python then keeps it.
LOCAL_CANCEL_GRACE_S = 5.0


def _kill_after_grace(process: subprocess.Popen[Any]) -> None:
    try:
        process.wait(LOCAL_CANCEL_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()


def cancel_scheduler_job(backend: str, scheduler_id: str) -> None:
    """Cancel a job by its scheduler id from any process (used by ``pomlia jobs cancel``)."""
    if backend == "slurm":
        proc = subprocess.run(
            ["scancel", scheduler_id], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise ClusterError(f"scancel {scheduler_id} failed: {proc.stderr.strip()}")
    elif backend == "local":
        try:
            pid = int(scheduler_id)
        except ValueError as exc:
            raise ClusterError(f"local job id '{scheduler_id}' is not a process id") from exc
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + LOCAL_CANCEL_GRACE_S
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    else:
        raise ClusterError(f"jobs of backend '{backend}' run in-process and cannot be cancelled")
