"""The end of a Slurm job that wrote no result (cancelled outside pomlia, killed for its memory
or time, failed before Python started), seen within :data:`END_SEEN_WITHIN_S` seconds.

submitit sees a result file at once, but such an end only in its own ``sacct`` polls, which
come every half of the time since the process last submitted a job, up to every 10 minutes:
an AutoML trial killed 20 minutes into its training kept its slot of ``--parallel`` for up to
10 minutes more, a pipeline stage waited as long on its training. Those polls are no answer
here either: submitit runs ``sacct`` without a time limit in the waiting thread (a slurmdbd
that took the connection and never answered hung the driver), and it counts a SUSPENDED or
RESIZING job as done, and stops asking about it.

:func:`ended_unseen` answers from what is known, never waiting: one ``sacct`` (with its time
limit) for all the jobs this process asked about runs in a thread of its own when the last
answer is old enough, one at a time. Old enough is half the age of the youngest job watched,
within :data:`END_SEEN_FIRST_S` and :data:`END_SEEN_WITHIN_S` (as submitit paces its polls
by the last submission): a job cancelled seconds after it started is seen ended in seconds,
not 30 s later, and a long one costs one ``sacct`` in 30 s. A job counts as ended in a
final state; NODE_FAIL and PREEMPTED only once the controller does not list it queued again
(:func:`~pomlia_hpc.cluster.sacct.sacct_states` asks it) and Slurm has not requeued it for a
while (:func:`pomlia_hpc.cluster.states.ended_for_good`), as a waiting ``result()`` judges
it: a job requeued after a node failure ran on unwatched while its driver took it for
failed.
"""

from __future__ import annotations

import threading
import time

from pomlia_hpc.cluster.records import sacct_states
from pomlia_hpc.cluster.states import ended_for_good
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.vocab import FINAL_STATES, REQUEUABLE_STATES

#: Seconds by which the end of a job that wrote no result may be seen late.
END_SEEN_WITHIN_S = 30.0

#: Seconds between two ``sacct`` of the watch, at least (while its youngest job is young).
END_SEEN_FIRST_S = 2.0

#: Seconds one ``sacct`` of the watch may take (then it is asked again later).
SACCT_LIMIT_S = 60.0

_LOCK = threading.Lock()  # guards everything below; never held while sacct runs
_asked_at = [-float("inf")]  # when the last sacct started (monotonic s)
_asking: list[threading.Thread | None] = [None]
_watched: dict[str, float] = {}  # job id asked about, end not known yet -> first asked (s)
_ended: dict[str, str] = {}  # job id -> the final state sacct gave


def ended_unseen(job_id: str) -> bool:
    """Whether Slurm job ``job_id`` (``123`` or an array task ``123_4``) has ended for good,
    by the last ``sacct`` answer (no waiting here); starts the next ``sacct`` in the
    background when that answer is :data:`END_SEEN_WITHIN_S` seconds old."""
    with _LOCK:
        if job_id in _ended:
            return True
        now = time.monotonic()
        _watched.setdefault(job_id, now)
        youngest = now - max(_watched.values())
        wait_s = min(max(youngest / 2, END_SEEN_FIRST_S), END_SEEN_WITHIN_S)
        busy = _asking[0] is not None and _asking[0].is_alive()
        if not busy and now - _asked_at[0] >= wait_s:
            _asked_at[0] = now
            asking = threading.Thread(
                target=_ask, args=(sorted(_watched),), name="end-watch", daemon=True
            )
            _asking[0] = asking
            asking.start()
    return False


def ended_state(job_id: str) -> str | None:
    """The final state :func:`ended_unseen` saw Slurm job ``job_id`` end in, or None while
    none was seen (never asks)."""
    with _LOCK:
        return _ended.get(job_id)


def _ask(job_ids: list[str]) -> None:
    """One ``sacct`` for ``job_ids``; records those that have ended for good."""
    try:
        states = sacct_states(job_ids, timeout_s=SACCT_LIMIT_S)
    except ClusterError:
        return  # slurmdbd out of reach or busy says nothing about the jobs: ask again later
    with _LOCK:
        for job_id in job_ids:
            st = states.get(job_id)
            if st is None or st.state not in FINAL_STATES or st.may_requeue:
                continue  # may_requeue: the controller did not say whether it was requeued
            if st.state not in REQUEUABLE_STATES or ended_for_good(st.state, st.ended_at):
                _ended[job_id] = st.state
                _watched.pop(job_id, None)
