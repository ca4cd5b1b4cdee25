"""A driver job that is cancelled takes its child jobs with it, and says it was cancelled.

A pipeline stage job submits the stage's own work as jobs of their own (an encoder training,
extraction shards, trials) and waits for them. ``scancel`` of the stage job sends SIGTERM to
its processes: submitit's handler ignores it, a DataLoader worker dies of it, and the stage then
failed with "DataLoader worker ... killed by signal: Terminated" while its child jobs ran on,
unwatched. :func:`cancel_children_on_stop` turns SIGTERM into :class:`JobCancelled` in the
driver, cancels the jobs the driver submitted (also on SIGINT: ``pomlia jobs cancel`` of a local
job, Ctrl-C) and :func:`stop_cause` names the cancellation, whatever exception it surfaced as.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from pomlia_hpc.cluster.checkpoint import requeue_started
from pomlia_hpc.cluster.executor import cancel_own_jobs

#: What a SIGTERM to a driver job means (Slurm sends it on scancel, at the time limit and on
#: preemption; the job's own state in `pomlia jobs list` says which).
SIGTERM_CAUSE = "cancelled (SIGTERM: scancel, `pomlia jobs cancel`, time limit or preemption)"
SIGINT_CAUSE = "cancelled (SIGINT: `pomlia jobs cancel` or Ctrl-C)"

_stopped: list[str] = []  # the cause, once this process was told to stop
_lock = threading.Lock()


class JobCancelled(BaseException):
    """This driver job was cancelled (SIGTERM). A BaseException, as KeyboardInterrupt is: the
    stage's ``except Exception`` handlers must not swallow it."""


def stop_cause(exc: BaseException | None = None) -> str | None:
    """Why this process is stopping: the cancellation it received (SIGTERM, SIGINT), or
    ``exc``'s if it is one; None if it was not cancelled. An error raised by the stop (a
    DataLoader worker killed by the same SIGTERM) is not the cause: the cancellation is."""
    with _lock:
        if _stopped:
            return _stopped[0]
    if isinstance(exc, JobCancelled):
        return SIGTERM_CAUSE
    if isinstance(exc, KeyboardInterrupt):
        return SIGINT_CAUSE
    return None


def _note(cause: str) -> None:
    with _lock:
        if not _stopped:
            _stopped.append(cause)


@contextmanager
def cancel_children_on_stop() -> Iterator[None]:
    """Run a driver's block (in the main thread) so that a SIGTERM raises
    :class:`JobCancelled` in it, unless the job checkpointed for a requeue (then submitit's
    handler runs as before), and a block ended by a cancellation (SIGTERM or SIGINT) cancels
    the jobs this process submitted before the exception goes on."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if requeue_started.is_set():  # stopping for a requeue: not a cancellation
            if callable(previous):
                previous(signum, frame)
            return
        _note(SIGTERM_CAUSE)
        raise JobCancelled(SIGTERM_CAUSE)

    main = threading.current_thread() is threading.main_thread()
    # Only the main thread may set a handler; elsewhere (a test's thread) SIGINT still counts.
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    try:
        yield
    except BaseException as exc:
        cause = stop_cause(exc)
        if cause is not None:
            _note(cause)
            cancel_own_jobs(f"{cause}, with the job that submitted it")
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        with _lock:
            _stopped.clear()  # the block is over: a later block of this process starts afresh
