"""submitit's own ``sacct`` poll, with a time limit and pomlia's knowledge of ended jobs, for
pomlia's own Slurm jobs.

submitit's Slurm jobs share one watcher (a class attribute) that asks ``sacct`` about the
process's jobs when a job is collected: ``result()`` waits through it, and a job that wrote no
result reads its state from it twice more (its error message, the recorded state). submitit
runs that ``sacct`` with no time limit, so a slurmdbd that took the connection and never
answered hung an AutoML or pipeline driver at collection, after
:mod:`pomlia_hpc.cluster.endwatch` had already seen the job end. :func:`bind` gives each job
pomlia submits (:meth:`~pomlia_hpc.cluster.handle.JobHandle._bind`) the one
:class:`BoundedWatcher` of the process instead: a state the end watch knows is answered
without asking (and counts as done, PREEMPTED included), and each ``sacct`` it does run may
take :data:`SACCT_LIMIT_S` seconds, after which it counts as a poll that failed (submitit's
own rule for a failed poll: the states stay as they were, asked again later). submitit's
class-wide watcher is left as it is: the Slurm jobs of any other library in the process keep
submitit's behaviour. (A job a restarted driver reattaches to by its id,
:mod:`pomlia_hpc.cluster.attach`, has no submitit job and no watcher at all: it is polled with
the bounded :func:`~pomlia_hpc.cluster.sacct.sacct_states`.)
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

from submitit.core.core import Job
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from pomlia_hpc.cluster.endwatch import ended_state

#: Seconds one ``sacct`` of submitit's watcher may take (then it counts as failed).
SACCT_LIMIT_S = 60.0

#: The longest delay between two of the watcher's routine polls (s): submitit's own.
WATCH_DELAY_S = 600


class BoundedWatcher(SlurmInfoWatcher):
    """submitit's Slurm watcher whose ``sacct`` has a time limit, and which takes a final
    state from :func:`~pomlia_hpc.cluster.endwatch.ended_state` before asking."""

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        """The job's state: the end watch's final state if it saw one, else submitit's."""
        known = ended_state(str(job_id))
        return known if known is not None else super().get_state(job_id, mode=mode)

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        """Whether the job has ended: for good once the end watch saw it end (a PREEMPTED job
        Slurm did not requeue, which submitit counts as unfinished: ``result()`` waited on it
        for ever), else by submitit's rule."""
        return ended_state(str(job_id)) is not None or super().is_done(job_id, mode=mode)

    def update(self) -> None:
        """One ``sacct`` for the registered jobs, for at most :data:`SACCT_LIMIT_S` s."""
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        try:
            proc = subprocess.run(command, capture_output=True, timeout=SACCT_LIMIT_S, check=True)
        except (subprocess.SubprocessError, OSError):
            pass  # out of reach or busy: the states stay as last read, asked again later
        else:
            self._info_dict.update(self.read_info(proc.stdout))
        # after the call, as submitit does: the next poll waits its delay from this answer
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)  # never asked about again


#: The watcher of every Slurm job pomlia submits in this process (one ``sacct`` per poll for
#: all of them, as submitit's own).
WATCHER = BoundedWatcher(delay_s=WATCH_DELAY_S)


class BoundSlurmJob(SlurmJob[Any]):
    """submitit's Slurm job polled by :data:`WATCHER`, what :func:`bind` makes of each job
    pomlia submits. The watcher is this class's attribute, not the job's own: submitit pickles
    a job as its ``__dict__``, so an attribute of the job put a copy of the process's watcher
    (every job it polls, their states) into the pickle, and the job loaded from it was polled
    by that copy, a ``sacct`` of its own. A pickle names this class instead, and the loaded job
    registers with the process's one :data:`WATCHER` (submitit's ``__setstate__``)."""

    watcher = WATCHER


def bind(job: Job[Any]) -> None:
    """Make the Slurm job ``job`` (and the sub-jobs of its tasks) ask :data:`WATCHER`, not
    submitit's class-wide watcher, which other libraries' jobs share and keep."""
    for one in (job, *job._sub_jobs):
        if type(one) is SlurmJob:
            one.__class__ = BoundSlurmJob  # its class's watcher: SlurmJob's is not touched
        else:  # not submitit's plain Slurm job (none that pomlia submits): its own attribute
            one.watcher = WATCHER
        one._register_in_watcher()  # submitit's rule: task 0 registers the job id
