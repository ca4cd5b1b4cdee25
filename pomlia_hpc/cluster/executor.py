"""Executors: run plain Python callables locally, in-process, or as Slurm jobs (via submitit).

>>> ex = Executor.from_profile("local", folder)           # doctest: +SKIP
>>> handle = ex.submit(sum, [1, 2, 3], name="add")        # doctest: +SKIP
>>> handle.result()                                       # doctest: +SKIP
6

Every job is recorded in the registry when one is given (state, times, requeues, traceback).
Arrays larger than the cluster's ``max_array_size`` are split into several Slurm arrays that run
one after the other, each with at most ``max_parallel`` tasks at once (a part that cannot be
submitted cancels the parts before it: the array runs whole or not at all); the local backend
caps the number of concurrent processes the same way.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import submitit

from pomlia_hpc.cluster import submitit_controller
from pomlia_hpc.cluster.batch import RESTART_VARS
from pomlia_hpc.cluster.cancel import cancel_array_parts
from pomlia_hpc.cluster.failures import LIMIT_KEYS
from pomlia_hpc.cluster.handle import JobHandle
from pomlia_hpc.cluster.jobenv import missing_job_defaults
from pomlia_hpc.cluster.jobstart import SLURM_PYTHON
from pomlia_hpc.cluster.reach import failure_kind
from pomlia_hpc.cluster.records import record_submission, this_host
from pomlia_hpc.cluster.refusal import sbatch_refusals, warn_signal_delay
from pomlia_hpc.cluster.resources import (
    additional_parameters,
    after_ok_parameters,
    submitit_parameters,
    with_overrides,
)
from pomlia_hpc.cluster.submitenv import dropped_for_submission
from pomlia_hpc.cluster.submitit_local import CONTROLLER_META
from pomlia_hpc.cluster.terminate import collected
from pomlia_hpc.cluster.unsubmitted import unsubmitted_withdrawn
from pomlia_hpc.config import ClusterProfile, load_cluster_profile
from pomlia_hpc.errors import ArrayNotWithdrawnError, ClusterError, PomliaError
from pomlia_hpc.registry import Registry


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
        #: Local jobs not started yet: handle, callable, its arguments, profile, name, row meta.
        self._pending: list[
            tuple[
                JobHandle, Callable[..., Any], tuple[Any, ...], ClusterProfile, str, dict[str, Any]
            ]
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
        warn_signal_delay(profile)  # a limit so short that the job may never finish an epoch
        # A Slurm job starts under jobstart: a checkpoint signal that comes while it starts
        # (short time limits) is held back until submitit can act on it, not fatal.
        python = {"slurm_python": SLURM_PYTHON} if profile.backend == "slurm" else {}
        ex = submitit.AutoExecutor(folder=self.folder, cluster=profile.backend, **python)
        if profile.backend == "local":
            submitit_controller.scope(ex)  # a cancelled local job ends without a traceback
        ex.update_parameters(**submitit_parameters(profile, name=name))
        return ex

    def _record(
        self,
        ids: Sequence[str],
        name: str,
        array_id: str | None,
        row_meta: Sequence[dict[str, Any]] | None = None,
    ) -> list[int | None]:
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
                row_meta=row_meta,
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
        job_meta: dict[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> JobHandle:
        """Submit ``fn(*args, **kwargs)`` as one job. ``after_ok``: Slurm jobs that must end
        COMPLETED before this one starts (``--dependency=afterok``); if one fails, Slurm
        cancels this one (``--kill-on-invalid-dep``). Only the Slurm backend chains jobs.
        ``job_meta``: recorded in the job's row (``Job.meta``) with the executor's own keys.
        ``env``: variables of the job's environment, for secrets (the registry URL): the job
        and its arguments are pickled into the job folder, the environment is not (a local
        or debug job inherits it from this process, a Slurm job through ``--export=ALL``,
        which its script asks for whatever the site's ``SBATCH_EXPORT``, kept by slurmctld
        for requeues)."""
        profile = with_overrides(self.profile, resources)
        ex = self._submitit(profile, name)
        if after_ok:
            ex.update_parameters(**after_ok_parameters(profile, [h.job_id for h in after_ok]))
        # one line naming the option, not a traceback
        with (
            unsubmitted_withdrawn(self.folder, name, ex),  # queued despite sbatch's timeout
            sbatch_refusals(profile, name),
            _environment(env or {}, profile),
        ):
            job = ex.submit(fn, *args, **kwargs)
        started = {**_started(profile, job), **_limits(profile)}
        (rid,) = self._record([str(job.job_id)], name, None, [{**(job_meta or {}), **started}])
        handle = JobHandle(self, rid)
        handle.controller = started.get(CONTROLLER_META)
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
        item_meta: Sequence[dict[str, Any]] | None = None,
    ) -> list[JobHandle]:
        """Run ``fn(item)`` for each item as an array job; one handle per item, in order.
        ``item_meta``: one dict per item, recorded in its task's row (``Job.meta``), so that a
        later command can tell what a task still queued or running works on."""
        profile = with_overrides(self.profile, resources)
        if not items:
            return []
        metas = list(item_meta) if item_meta is not None else [{} for _ in items]
        if len(metas) != len(items):
            raise ValueError(f"item_meta: {len(metas)} entries for {len(items)} items")
        if profile.backend == "slurm":
            return self._slurm_array(fn, items, profile, name, metas)
        if profile.backend == "debug":
            return [
                self.submit(fn, item, name=name, resources=resources, job_meta=m)
                for item, m in zip(items, metas, strict=True)
            ]
        return self._local_array(fn, items, profile, name, metas)

    def _slurm_array(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        profile: ClusterProfile,
        name: str,
        metas: Sequence[dict[str, Any]],
    ) -> list[JobHandle]:
        handles: list[JobHandle] = []
        previous: str | None = None
        size = profile.max_array_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            ex = self._submitit(profile, name)
            if previous is not None:
                # Chunks run one after the other so that max_parallel holds for the whole array.
                ex.update_parameters(**additional_parameters(dependency=f"afterany:{previous}"))
            try:
                with (
                    unsubmitted_withdrawn(self.folder, name, ex),
                    sbatch_refusals(profile, name),
                    _environment({}, profile),
                    ex.batch(),
                ):
                    jobs = [ex.submit(fn, item) for item in chunk]
            except BaseException as exc:
                if handles:  # an earlier part is queued or running: it must not run alone
                    part = (start // size + 1, math.ceil(len(items) / size))
                    self._withdraw(handles, exc, part)
                raise
            array_id = str(jobs[0].job_id).split("_")[0]
            previous = array_id
            chunk_meta = [{**m, **_limits(profile)} for m in metas[start : start + size]]
            ids = self._record([str(j.job_id) for j in jobs], name, array_id, chunk_meta)
            for job, rid in zip(jobs, ids, strict=True):
                h = JobHandle(self, rid)
                h.resources = profile
                h._bind(job)
                handles.append(h)
        return handles

    def _withdraw(
        self, handles: list[JobHandle], exc: BaseException, part: tuple[int, int]
    ) -> None:
        """Cancel the parts of a split array submitted before part ``part`` (number, of how
        many) failed to be (``exc``: sbatch refused it, Ctrl-C): alone they would do part of
        the work, which a caller that sees the error cleans up. Raises the
        :class:`ClusterError` that names the failure and the cancelled (or, if ``scancel``
        failed, the still queued) Slurm jobs; an interrupt is left to the caller to re-raise."""
        arrays = list(dict.fromkeys(h.job_id.split("_")[0] for h in handles))
        named = f"Slurm job{'s' if len(arrays) > 1 else ''} {', '.join(arrays)}"
        records = [h.record_id for h in handles if h.record_id is not None]
        cause = f"cancelled: part {part[0]} of {part[1]} of its array was not submitted"
        try:
            tasks = [h.job_id for h in handles]
            gone = cancel_array_parts(arrays, tasks, self.registry, records, cause)
            done = f"the parts submitted before it were cancelled ({named})"
            if not gone:
                done += f" but are still listed by squeue: check `squeue -j {arrays[0]}`"
        except ClusterError as err:
            gone = False
            done = (
                f"the parts submitted before it ({named}) could not be cancelled ({err.message}):"
                f" cancel them with `scancel {' '.join(arrays)}`"
            )
        for h in handles:
            collected(h)  # cancelled (or named in the error): nothing left for this process
        if not isinstance(exc, Exception):
            return  # KeyboardInterrupt, SystemExit: the caller re-raises it
        what = exc.message if isinstance(exc, PomliaError) else f"{type(exc).__name__}: {exc}"
        hint = exc.hint if isinstance(exc, PomliaError) else None
        # Parts that may still run must not find a caller's restored outputs to write into.
        # A controller out of reach stays one (exit 69) once nothing of the array is left.
        error = failure_kind(exc) if gone else ArrayNotWithdrawnError
        raise error(
            f"{what}; that was part {part[0]} of {part[1]} of the array, and {done}", hint=hint
        ) from exc

    def _local_array(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        profile: ClusterProfile,
        name: str,
        metas: Sequence[dict[str, Any]],
    ) -> list[JobHandle]:
        handles = []
        for item, meta in zip(items, metas, strict=True):
            h = JobHandle(self, None)
            handles.append(h)
            with self._lock:
                self._pending.append((h, fn, (item,), profile, name, meta))
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
                handle, fn, args, profile, name, meta = self._pending.pop(0)
                self._running.append(handle)
            try:
                with _environment({}, profile):
                    job = self._submitit(profile, name).submit(fn, *args)
            except Exception as exc:
                with self._lock:
                    self._running.remove(handle)  # it holds no max_parallel slot
                handle._fail_submission(exc)
                continue
            started = _started(profile, job)
            (handle.record_id,) = self._record([str(job.job_id)], name, None, [{**meta, **started}])
            handle.controller = started.get(CONTROLLER_META)
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


#: Held while a submission sets this process's environment for its job: a local array's feeder
#: thread starts jobs while the main thread submits others, and a job started meanwhile would
#: inherit the other submission's ``env`` (a secret meant for one job only).
_SUBMISSION_ENV = threading.RLock()


@contextlib.contextmanager
def _environment(env: Mapping[str, str], profile: ClusterProfile) -> Iterator[None]:
    """This process's environment with ``env`` set and without a restart count of its own
    (:data:`~pomlia_hpc.cluster.batch.RESTART_VARS`), for the submission only: submitit starts
    a local job, records a debug job and runs sbatch with the environment of the moment. A Slurm
    job is submitted without the variables that would override its own options
    (:func:`~pomlia_hpc.cluster.submitenv.dropped_for_submission`) and with
    :data:`~pomlia_hpc.cluster.jobenv.JOB_ENV_DEFAULTS` where this process sets none (a local
    job gets those from its controller: a local array's jobs start in a feeder thread). One
    submission at a time in this process (:data:`_SUBMISSION_ENV`)."""
    with _SUBMISSION_ENV:
        if profile.backend == "slurm":
            env = {**missing_job_defaults(os.environ), **env}
        dropped = [*RESTART_VARS, *dropped_for_submission(profile, os.environ)]
        saved = {k: os.environ.get(k) for k in (*env, *dropped)}
        for k in dropped:
            os.environ.pop(k, None)
        os.environ.update(env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _started(profile: ClusterProfile, job: submitit.Job[Any]) -> dict[str, Any]:
    """What a local job's row records of its process: its start id, which names its Ctrl-C
    marker (a later job given the same pid is another process); nothing on other backends."""
    if profile.backend != "local":
        return {}
    started = submitit_controller.started_id(str(job.job_id))
    return {CONTROLLER_META: started} if started is not None else {}


def _limits(profile: ClusterProfile) -> dict[str, Any]:
    """What a Slurm job's row records of its limits (its time limit, minutes; how long before it
    the checkpoint signal is asked for, seconds): the cause of a failure that they explain
    (``failures.log_cause``) names them, also when the driver that submitted it is gone."""
    if profile.backend != "slurm":
        return {}
    return dict(zip(LIMIT_KEYS, (profile.time_min, profile.signal_delay_s), strict=True))
