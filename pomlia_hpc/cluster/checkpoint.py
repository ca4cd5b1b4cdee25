"""Checkpointable jobs: on preemption or time-out they save state, requeue, and resume.

Slurm sends USR2 ``signal_delay_s`` seconds before the time limit (and on preemption when the
cluster is configured so). submitit catches it, calls :meth:`Checkpointable.checkpoint` on the
job's callable and requeues the job; the callable is pickled again with its current state, so
the next attempt resumes where the previous one stopped. Subclasses keep their progress on
``self`` (or write a checkpoint file and read it back in ``__call__``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any, ClassVar

import submitit


class Checkpointable(submitit.helpers.Checkpointable):
    """Base class for resumable job callables. Override ``__call__``; keep progress on self.

    ``preload`` names modules the job would otherwise import lazily while it runs (plotting,
    event writers). They are imported when the job is unpickled on the node, which is before
    submitit installs its USR2 handler: a preemption signal that lands inside a C extension's
    import turns the handler's ``SystemExit`` into ``ImportError: initialization failed``, and
    the job fails instead of requeueing. A module that fails to import there is left to the
    job's own import, which raises (inside the job, where its failure is recorded) or
    tolerates it (the event writer is optional), as without the preload.
    """

    preload: ClassVar[tuple[str, ...]] = ()

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
