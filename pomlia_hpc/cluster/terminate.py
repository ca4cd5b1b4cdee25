"""A driver job that is cancelled takes its child jobs with it, and says it was cancelled.

A pipeline stage job submits the stage's own work as jobs of their own (an encoder training,
extraction shards, trials) and waits for them. ``scancel`` of the stage job sends SIGTERM to
its processes: submitit's handler ignores it, a DataLoader worker dies of it, and the stage then
failed with "DataLoader worker ... killed by signal: Terminated" while its child jobs ran on,
unwatched. :func:`cancel_children_on_stop` turns SIGTERM into :class:`JobStopped` in the
driver and :func:`stop_cause` names the stop, whatever exception it surfaced as.

Only a cancellation takes the children along (:func:`cancel_own_jobs`): SIGINT (``pomlia jobs
cancel`` of a local job, Ctrl-C), SIGTERM outside Slurm, and SIGTERM of a Slurm job that
accounting reports CANCELLED. Slurm also sends SIGTERM at the time limit, on preemption and on a
requeue: then the children run on and the requeued driver reattaches to them. A job whose state
cannot be read counts as not cancelled: children left running are recoverable, cancelled ones
are not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from pomlia_hpc.cluster.cancel import record_cancelled
from pomlia_hpc.cluster.checkpoint import requeue_started
from pomlia_hpc.cluster.scancel import scancel
from pomlia_hpc.cluster.submitit_local import SIGINT_CAUSE
from pomlia_hpc.errors import ClusterError

if TYPE_CHECKING:
    from pomlia_hpc.cluster.handle import JobHandle
    from pomlia_hpc.registry import Registry

#: What a SIGTERM outside Slurm, or to a Slurm job that accounting reports CANCELLED, means.
SIGTERM_CAUSE = "cancelled (SIGTERM: scancel, `pomlia jobs cancel` or kill)"
#: The handler's message: what the SIGTERM meant is decided after it (see sigterm_cause).
_SIGTERM_PENDING = "SIGTERM"
#: Seconds to wait for ``sacct`` in the SIGTERM handler (Slurm kills the job ``KillWait``
#: seconds, often 5 to 30, after the SIGTERM; the children still have to be cancelled).
STATE_QUERY_TIMEOUT_S = 3.0

#: Set by the SIGTERM handler (without a lock: the signal may land while the lock is held).
_signalled: list[int] = []
_stopped: list[tuple[str, bool]] = []  # (cause, whether it is a cancellation), once stopped
#: Whether the SIGTERM came with a requeue (set where accounting was asked: sigterm_cause).
_requeued: list[bool] = []
#: Job states accounting reports for a job that Slurm requeued (``scontrol requeue``): it
#: runs again, so the SIGTERM of its stop is no failure. Not PENDING: a busy slurmdbd may
#: not have recorded the start of a job that runs (and is being cancelled) yet.
REQUEUE_STATES = frozenset({"REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"})
_lock = threading.Lock()
#: The jobs this process submitted whose outcome it has not collected yet (result() or
#: cancel()): what :func:`cancel_own_jobs` cancels when the process itself is cancelled.
_OWN: set[JobHandle] = set()
_OWN_LOCK = threading.Lock()
_cancelled: list[str] = []  # the jobs cancel_own_jobs cancelled in this process (labels)
#: The registry ids of every job this process submitted, in order (collected or not).
_submitted: list[int] = []


class JobStopped(BaseException):
    """This driver job was told to stop (SIGTERM) without being cancelled: Slurm's time limit,
    preemption or requeue. A BaseException, as KeyboardInterrupt is: the stage's ``except
    Exception`` handlers must not swallow it. Its message is the cause."""


class JobCancelled(JobStopped):
    """This driver job was cancelled (SIGTERM): its child jobs are cancelled with it."""


class JobRequeued(JobStopped):
    """This driver job was requeued by Slurm (SIGTERM, job state REQUEUED): it
    runs again and resumes; this attempt ends without a failure."""


def own_job(handle: JobHandle) -> None:
    """Note a job this process submitted (cancelled with it, until :func:`collected`)."""
    with _OWN_LOCK:
        _OWN.add(handle)
        if handle.record_id is not None:
            _submitted.append(handle.record_id)


def submitted_jobs() -> list[int]:
    """The registry ids of the jobs this process submitted so far, in order: what a driver
    (a pipeline stage run here) names as its jobs, e.g. a training it was stopped in."""
    with _OWN_LOCK:
        return list(_submitted)


def collected(handle: JobHandle) -> None:
    """Forget a job whose outcome this process has (collected or cancelled)."""
    with _OWN_LOCK:
        _OWN.discard(handle)


def slurm_job_state(job_id: str) -> str | None:
    """The state accounting reports for Slurm job ``job_id`` (``CANCELLED``, ``REQUEUED``,
    ``TIMEOUT``, ...), or None when it cannot be read within :data:`STATE_QUERY_TIMEOUT_S`
    seconds. Not squeue's: a job being cancelled shows as COMPLETING there."""
    cmd = ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=STATE_QUERY_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    words = proc.stdout.split()
    # "CANCELLED by 1000" for a scancel: the first word is the state
    return words[0].rstrip("+") if proc.returncode == 0 and words else None


def sigterm_cause() -> tuple[str, bool]:
    """What a SIGTERM to this process means: (cause, whether it is a cancellation). Outside
    Slurm (no ``SLURM_JOB_ID``) it is one; under Slurm only when accounting says CANCELLED.
    slurmdbd records a ``scancel`` (and, under load, even the job's start) asynchronously, so
    a job still reported RUNNING (or PENDING) is asked again until
    :data:`STATE_QUERY_TIMEOUT_S` seconds have passed. Runs ``sacct``: never call it from a
    signal handler."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return SIGTERM_CAUSE, True
    deadline = time.monotonic() + STATE_QUERY_TIMEOUT_S
    state = slurm_job_state(job_id)
    # PENDING: a running job whose start a busy slurmdbd has not recorded yet
    while state in (None, "RUNNING", "PENDING") and time.monotonic() < deadline - 0.3:
        time.sleep(0.3)
        state = slurm_job_state(job_id) or state
    _requeued[:] = [state in REQUEUE_STATES]
    if state == "CANCELLED":
        return SIGTERM_CAUSE, True
    return (
        f"stopped by Slurm (SIGTERM, job state {state or 'unknown'}: time limit, preemption "
        "or requeue); its trial jobs run on for the requeued job to reattach, its other jobs "
        "are cancelled and resume from their checkpoints when submitted again",
        False,
    )


def stop_cause(exc: BaseException | None = None) -> str | None:
    """Why this process is stopping: the stop it received (SIGTERM, SIGINT), or ``exc``'s if
    it is one; None if it was not stopped. An error raised by the stop (a DataLoader worker
    killed by the same SIGTERM) is not the cause: the stop is."""
    with _lock:
        if _stopped:
            return _stopped[0][0]
    if _signalled:  # a SIGTERM arrived: what it means is asked here, outside the handler
        _note(*sigterm_cause())
        with _lock:
            return _stopped[0][0]
    if isinstance(exc, JobStopped):
        return str(exc) if str(exc) not in ("", _SIGTERM_PENDING) else SIGTERM_CAUSE
    if isinstance(exc, KeyboardInterrupt):
        return SIGINT_CAUSE
    return None


def stop_kind(exc: BaseException | None = None) -> str | None:
    """What stopped this process: ``"cancelled"`` (scancel, Ctrl-C), ``"requeued"`` (Slurm
    runs its job again: ``scontrol requeue``), ``"stopped"`` (another Slurm stop: the time
    limit, preemption, a state accounting could not give), or None if it was not stopped.
    Asks accounting (through :func:`stop_cause`) when a SIGTERM arrived and nobody asked yet:
    never call it from a signal handler."""
    if stop_cause(exc) is None:
        return None
    if _cancelling(exc):
        return "cancelled"
    requeued = _requeued[0] if _requeued else isinstance(exc, JobRequeued)
    return "requeued" if requeued else "stopped"


def _cancelling(exc: BaseException | None) -> bool:
    with _lock:
        if _stopped:
            return _stopped[0][1]
    return isinstance(exc, (JobCancelled, KeyboardInterrupt))


def _note(cause: str, cancel: bool) -> bool:
    """Record the first stop; returns whether this one was the first."""
    with _lock:
        if _stopped:
            return False
        _stopped.append((cause, cancel))
        return True


@contextmanager
def cancel_children_on_stop() -> Iterator[None]:
    """Run a driver's block (in the main thread) so that a SIGTERM raises :class:`JobStopped`
    (:class:`JobCancelled` for a cancellation) in it, unless the job checkpointed for a requeue
    (then submitit's handler runs as before); a block ended by a cancellation cancels the jobs
    this process submitted before the exception goes on. Signals during that cleanup are
    ignored: a second Ctrl-C or SIGTERM must not leave half of the children running."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # No lock and no subprocess here: the main thread may hold the lock (or be anywhere)
        # when the signal lands. What the SIGTERM means is asked after it, in `except`.
        if requeue_started.is_set():  # stopping for a requeue: not a cancellation
            if callable(previous):
                previous(signum, frame)
            return
        if not _signalled:
            _signalled.append(signum)  # a list append: safe wherever the signal lands
            raise JobStopped(_SIGTERM_PENDING)

    main = threading.current_thread() is threading.main_thread()
    # Only the main thread may set a handler; elsewhere (a test's thread) SIGINT still counts.
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    previous_int = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    except BaseException as exc:
        if _signalled or isinstance(exc, (JobStopped, KeyboardInterrupt)):
            if main:  # the cleanup must run to its end
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            # A SIGTERM (whatever it surfaced as) is asked about and noted by stop_cause, if
            # the block did not ask already; a SIGINT or a raised stop is noted here.
            _note(stop_cause(exc) or SIGINT_CAUSE, _cancelling(exc))
            cause, cancel = _stopped[0]
            if cancel:
                cancel_own_jobs(f"{cause}, with the job that submitted it")
            else:
                _say(f"stopping: {cause}")
                cancel_own_jobs(f"{cause}, with the job that submitted it", keep_adoptable=True)
            if isinstance(exc, JobStopped) and str(exc) == _SIGTERM_PENDING:
                # the handler's placeholder: raise what the SIGTERM turned out to mean
                kind = JobRequeued if _requeued and _requeued[0] else JobStopped
                raise (JobCancelled if cancel else kind)(cause) from None
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
        with _lock:
            _signalled.clear()
            _stopped.clear()  # the block is over: a later block of this process starts afresh
            _requeued.clear()


@contextmanager
def quiet_cancellation() -> Iterator[None]:
    """Around a driver job's body (a pipeline stage or driver job): a stop whose cause the
    driver has said in one line ends the process without a traceback: a cancellation
    (:class:`JobCancelled`) or another Slurm stop (time limit, preemption) with exit status 1,
    a requeue (:class:`JobRequeued`) with 0, as this attempt did not fail (the job runs
    again). Uncaught, each is a BaseException that submitit lets through, and Python printed
    ~40 lines of traceback into the job's log after the clear line."""
    try:
        yield
    except JobRequeued:
        raise SystemExit(0) from None
    except JobStopped:
        raise SystemExit(1) from None


def _say(text: str) -> None:
    with contextlib.suppress(OSError):  # stderr's reader has gone: the cancelling goes on
        print(text, file=sys.stderr, flush=True)


def cancel_own_jobs(cause: str, *, keep_adoptable: bool = False) -> int:
    """Cancel the unfinished jobs this process submitted and did not collect yet, recording
    ``cause`` (by whom or what); returns how many were cancelled. For a driver that is being
    cancelled itself (a pipeline stage job ``scancel``-ed): its child jobs would run on,
    unwatched. Quick, as Slurm kills the driver ``KillWait`` seconds (often 5 to 30) after its
    SIGTERM: all Slurm jobs get one ``scancel`` at once, without asking for their state first,
    and are recorded in one transaction per registry, then as one ``sacct`` (at most
    :data:`STATE_QUERY_TIMEOUT_S` s) says they ended: one that ended on its own before the
    ``scancel`` keeps Slurm's state (``cancel.record_cancelled``). Errors are reported and
    skipped, job by job. ``keep_adoptable`` (a driver stopped for a requeue, time limit or
    preemption): jobs a restarted driver
    reattaches to (AutoML trials, ``JobHandle.adoptable``) run on; the others (an encoder
    training, extraction shards) would be submitted a second time beside themselves, so they
    are cancelled, and resume from their checkpoints or shard markers when submitted again."""
    with _OWN_LOCK:
        handles = [h for h in _OWN if not (keep_adoptable and h.adoptable)]
        _OWN.difference_update(handles)
    slurm: list[JobHandle] = []
    n = 0
    for handle in handles:
        try:
            if handle.scheduler_id is None or handle.given_up_state is not None:
                continue
            if handle.backend == "slurm":
                slurm.append(handle)
            elif not handle.done():
                handle.cancel(cause)
                n += 1
                _cancelled.append(handle.name)
                _say(f"cancelled job {handle.name}: {cause}")
        except BaseException as exc:  # best effort: the next job still goes
            _say(f"could not cancel job {handle.name}: {exc!r}")
    return n + _cancel_slurm(slurm, cause)


def _cancel_slurm(handles: list[JobHandle], cause: str) -> int:
    """One ``scancel`` for all of ``handles``, then their records (one transaction and one
    ``sacct`` per registry)."""
    if not handles:
        return 0
    ids = [str(h.scheduler_id) for h in handles]
    try:  # within scancel's time limit: signals are ignored while this runs
        proc = scancel(ids)
        if proc.returncode != 0:  # an id that ended meanwhile: the others are cancelled
            _say(f"scancel {' '.join(ids)}: {proc.stderr.strip()}")
    except BaseException as exc:  # best effort while going down
        said = str(exc) if isinstance(exc, ClusterError) else repr(exc)
        _say(
            f"could not cancel jobs {', '.join(ids)}: {said}; they may still run "
            f"(`scancel {' '.join(ids)}` cancels them)"
        )
        return 0
    by_registry: dict[int, tuple[Registry, list[int]]] = {}
    for h in handles:
        if h.registry is not None and h.record_id is not None:
            by_registry.setdefault(id(h.registry), (h.registry, []))[1].append(h.record_id)
    ended: set[tuple[int, int]] = set()  # (registry, row) of jobs that had ended on their own
    for key, (reg, record_ids) in by_registry.items():
        try:
            # briefly: Slurm kills this driver KillWait seconds after its SIGTERM
            kept = record_cancelled(reg, record_ids, cause, timeout_s=STATE_QUERY_TIMEOUT_S)
            ended.update((key, rid) for rid in set(record_ids) - set(kept))
        except BaseException as exc:  # the jobs are cancelled: say so anyway
            _say(f"could not record jobs {record_ids} as cancelled: {exc!r}")
    n = 0
    for h in handles:
        if (id(h.registry), h.record_id) in ended:
            _say(f"job {h.name} had already ended: not cancelled")
            continue
        _cancelled.append(h.name)
        _say(f"cancelled job {h.name}: {cause}")
        n += 1
    return n


def cancelled_with_this_process() -> list[str]:
    """The jobs (as messages name them) this process cancelled because it was stopped itself:
    what the CLI's Ctrl-C message reports instead of "Slurm jobs run on"."""
    return list(_cancelled)
