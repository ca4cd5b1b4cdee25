"""Checkpointable jobs: on preemption or time-out they save state, requeue, and resume.

Slurm sends USR2 ``signal_delay_s`` seconds before the time limit (and on preemption when the
cluster is configured so). submitit catches it, calls :meth:`Checkpointable.checkpoint` on the
job's callable and requeues the job; the callable is pickled again with its current state, so
the next attempt resumes where the previous one stopped. Subclasses keep their progress on
``self`` (or write a checkpoint file and read it back in ``__call__``).

Once the job has checkpointed for a requeue it is stopping, not failing: the requeue sends
SIGTERM to every process of the job, so a DataLoader worker dies and its parent raises
"DataLoader worker ... is killed by signal: Terminated" while submitit's ``SystemExit`` unwinds.
submitit would record that exception as the job's result, and the job would count as FAILED
although its next attempt is queued. The callable's ``__call__`` turns an exception raised
while that exit unwinds back into the exit (:func:`requeue_exit`), which leaves no result
behind. Only the job's rank 0 checkpoints and requeues; on other ranks nothing changes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import submitit

#: Set in this process once its job checkpointed to be requeued (module-wide, not on the job:
#: the job's state is pickled for the next attempt, which must start without it).
requeue_started = threading.Event()


class Checkpointable(submitit.helpers.Checkpointable):
    """Base class for resumable job callables. Override ``__call__``; keep progress on self.

    ``preload`` names modules the job would otherwise import lazily while it runs (plotting,
    event writers). They are imported when the job is unpickled on the node, which is before
    submitit installs its USR2 handler (a USR2 that comes meanwhile is held back until then:
    :mod:`pomlia_hpc.cluster.jobstart`): a preemption signal that lands inside a C extension's
    import turns the handler's ``SystemExit`` into ``ImportError: initialization failed``, and
    the job fails instead of requeueing (``__call__`` would turn that error back into the exit,
    but code that catches it, as the optional event writer's import does, would run on after
    the requeue). A module that fails to import there is left to the job's own import, which
    raises (inside the job, where its failure is recorded) or tolerates it, as without the
    preload.
    """

    preload: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None:
            cls.__call__ = _stopping_once_requeued(call)  # type: ignore[method-assign]

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The job to requeue (this callable with its current state); marks the process as
        stopping. A subclass that overrides this calls it."""
        delayed = super().checkpoint(*args, **kwargs)
        requeue_started.set()
        return delayed

    def __getstate__(self) -> dict[str, Any]:
        # Always a dict: pickle skips __setstate__ (and the preload) for an empty state.
        return dict(self.__dict__)

    def preload_modules(self) -> tuple[str, ...]:
        """What this job preloads: :attr:`preload`, or more where the job's state says what it
        will import (called after the state is restored)."""
        return self.preload

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for module in self.preload_modules():
            # Exception, not BaseException: a signal arriving here still stops the job.
            with contextlib.suppress(Exception):
                importlib.import_module(module)

    @staticmethod
    def restart_count() -> int:
        """How many times this job has been requeued so far (0 on the first attempt)."""
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


def requeue_exit(exc: BaseException) -> SystemExit | None:
    """The exit that ``exc`` interrupted, when this process's job checkpointed for a requeue:
    the ``SystemExit`` in ``exc``'s context chain. None when ``exc`` is the job's own failure,
    submitit's refusal to requeue (``UncompletedJobError``) or a failed ``scontrol requeue``:
    none of them is raised while the exit unwinds, and each is the job's result."""
    if not requeue_started.is_set():
        return None
    context = exc.__context__  # Python keeps context chains free of cycles
    while context is not None and not isinstance(context, SystemExit):
        context = context.__context__
    return context


def _stopping_once_requeued(call: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` with an exception raised while a requeue's exit unwinds turned back into that
    exit (see the module docstring). It names only module-level functions: a job class pickled
    by value carries the wrapper's globals, and the event (a lock) cannot be pickled."""

    @functools.wraps(call)
    def run(self: Checkpointable, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(self, *args, **kwargs)
        except Exception as exc:
            stop = requeue_exit(exc)
            if stop is None:
                raise
            print(
                f"stopping for the requeue; ignored: {type(exc).__name__}: {exc}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(stop.code) from exc

    return run
