"""Checkpointable jobs: on preemption or time-out they save state, requeue, and resume.

Slurm sends USR2 ``signal_delay_s`` seconds before the time limit (and on preemption when the
cluster is configured so). submitit catches it, calls :meth:`Checkpointable.checkpoint` on the
job's callable and requeues the job; the callable is pickled again with its current state, so
the next attempt resumes where the previous one stopped. Subclasses keep their progress on
``self`` (or write a checkpoint file and read it back in ``__call__``).
"""

from __future__ import annotations

import os

import submitit


class Checkpointable(submitit.helpers.Checkpointable):
    """Base class for resumable job callables. Override ``__call__``; keep progress on self."""

    @staticmethod
    def restart_count() -> int:
        """How many times this job has been requeued so far (0 on the first attempt)."""
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
