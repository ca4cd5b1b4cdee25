"""Job states as the registry records them: submitit's and Slurm's spellings mapped onto one
vocabulary, when a job submitit still waits on has ended for good (a preemption without a
requeue), and the wait for Slurm's accounting to record a job's end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select

from pomlia_hpc.cluster import records
from pomlia_hpc.cluster.records import refresh_slurm_jobs
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.vocab import REQUEUABLE_STATES

#: Seconds between the ``sacct`` calls with which a waiting ``result()`` looks for a Slurm job
#: that ended in a state submitit does not count as done.
SLURM_FINAL_CHECK_S = 30.0

#: Seconds after a preemption or a node failure without a new attempt from which a job counts
#: as ended: a cluster that requeues such jobs has queued the next attempt by then.
PREEMPT_GRACE_S = 120.0


#: Seconds to wait for ``sacct`` to show the End of Slurm jobs that have written their result:
#: slurmdbd records it a moment after the job ends. After that the collection time is used.
SLURM_END_WAIT_S = 10.0


def settle_slurm_rows(reg: Registry, ids: Sequence[int]) -> None:
    """Refresh the Slurm rows ``ids`` until each has an end time (at most
    :data:`SLURM_END_WAIT_S` seconds, a ``sacct`` that does not answer included), so that the
    recorded end and state are Slurm's. Rows that Slurm already recorded COMPLETED with their
    end need no ``sacct``: each result of an array collected after one settle of all its tasks
    asked again, one call per task at once."""
    with reg.session() as s:
        q = select(func.count()).select_from(Job).where(Job.id.in_(ids))
        settled = q.where(Job.state == "COMPLETED", Job.ended_at.is_not(None))
        if s.scalar(settled) == len(set(ids)):
            return
    deadline = time.monotonic() + SLURM_END_WAIT_S
    while True:
        # An accounting hiccup: ask again until the deadline, then keep what is known. A
        # sacct that hangs may take the time left, not its own minute: collection waited 60 s.
        with contextlib.suppress(ClusterError):
            refresh_slurm_jobs(reg, ids, timeout_s=max(deadline - time.monotonic(), 1.0))
        with reg.session() as s:
            q = select(func.count()).select_from(Job)
            missing = s.scalar(q.where(Job.id.in_(ids), Job.ended_at.is_(None)))
        if not missing or time.monotonic() >= deadline:
            return
        time.sleep(0.5)


def ended_for_good(state: str, ended_at: datetime | None) -> bool:
    """Whether a job whose last attempt ended at ``ended_at`` in a state after which Slurm may
    requeue it (PREEMPTED, NODE_FAIL: submitit keeps waiting on a PREEMPTED job) has ended for
    good: once :data:`PREEMPT_GRACE_S` seconds passed without a new attempt (``sacct_states``
    gives a job the controller lists queued again in its new state). False for any other
    state: the caller judges those."""
    if state not in REQUEUABLE_STATES or ended_at is None:
        return False
    return (records.utcnow() - ended_at).total_seconds() >= PREEMPT_GRACE_S


def normalize_state(state: str) -> str:
    """Map submitit/Slurm state strings onto the registry's vocabulary."""
    s = state.split()[0].upper() if state else "UNKNOWN"
    return {"FINISHED": "COMPLETED", "DONE": "COMPLETED", "READY": "PENDING", "NO": "FAILED"}.get(
        s, s
    )
