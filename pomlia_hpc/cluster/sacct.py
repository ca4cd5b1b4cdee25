"""What Slurm says about jobs: their states from accounting (``sacct``, ONE call for any number
of jobs) and which of them the controller still lists (``squeue``).

Every call has a time limit: a daemon that took the connection and never answered must not
hold the caller (:mod:`pomlia_hpc.cluster.reach` names it, exit 69).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from pomlia_hpc.cluster.reach import slurm_failure, timed_out
from pomlia_hpc.cluster.requeued import controller_states, expand_pending
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.vocab import FINAL_STATES, REQUEUABLE_STATES, JobState

#: How many times ``sacct`` was run by this process (tests check one call per poll).
SACCT_CALLS = 0


@dataclass(frozen=True)
class SchedulerState:
    """What the scheduler says about one job (or array task)."""

    state: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: str | None = None
    requeue_count: int = 0
    #: How many attempts ran: sacct's lines for the job (``-D``) with a Start time. None: not
    #: known (a state not read from sacct).
    attempts_run: int | None = None
    #: Seconds the attempts before the current one ran, each from its Start to its End.
    earlier_s: float = 0.0
    #: A NODE_FAIL or PREEMPTED that the controller could not be asked about (``squeue`` did
    #: not answer in time): Slurm may run the job again, so it has not ended for good; what
    #: decides that a job ended takes it as a poll that did not answer for this job.
    may_requeue: bool = False


def _parse_time(text: str) -> datetime | None:
    """A sacct time (the cluster's local time, no zone) as an aware UTC datetime."""
    if not text or text in ("Unknown", "None"):
        return None
    try:
        # astimezone() on a naive datetime takes it as this machine's local time, which is the
        # time zone sacct printed it in (same cluster).
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return None


def parse_sacct(text: str) -> dict[str, SchedulerState]:
    """Parse ``sacct -n -P -X -D -o JobID,State,Start,End,ExitCode`` output.

    With ``-D`` a requeued job appears once per attempt; the last line is the current attempt
    and the number of earlier lines is the requeue count. An attempt that never ran (requeued
    while it pended) has no Start: ``attempts_run`` counts those that have one.
    """
    lines: dict[str, list[list[str]]] = {}
    for raw in text.splitlines():
        fields = raw.strip().split("|")
        if len(fields) < 5 or "." in fields[0]:
            continue
        for jid in expand_pending(fields[0]):
            lines.setdefault(jid, []).append(fields)
    out: dict[str, SchedulerState] = {}
    for jid, attempts in lines.items():
        last = attempts[-1]
        state = last[1].split()[0] if last[1] else "UNKNOWN"  # "CANCELLED by 0" → CANCELLED
        out[jid] = SchedulerState(
            state=state,
            started_at=_parse_time(last[2]),
            ended_at=_parse_time(last[3]),
            exit_code=last[4] or None,
            # Until its next attempt starts, a requeued job's one line says REQUEUED.
            requeue_count=len(attempts) - (0 if state.startswith("REQUEUE") else 1),
            attempts_run=sum(_parse_time(a[2]) is not None for a in attempts),
            earlier_s=sum(_ran_s(a[2], a[3]) for a in attempts[:-1]),
        )
    return out


def _ran_s(start: str, end: str) -> float:
    """Seconds an attempt ran from sacct's Start to End (0 when it never started)."""
    begun, ended = _parse_time(start), _parse_time(end)
    return max((ended - begun).total_seconds(), 0.0) if begun and ended else 0.0


def sacct_states(job_ids: Iterable[str], timeout_s: float = 60.0) -> dict[str, SchedulerState]:
    """States of ``job_ids`` (plain ids, array task ids ``A_I`` or array ids) in one sacct call.
    Raises :class:`ClusterError` when ``sacct`` is missing, fails or takes over ``timeout_s``
    seconds. A job that ``sacct`` says is REQUEUED, or NODE_FAIL or PREEMPTED within its
    requeue window (a day; older is final), is asked of the controller too
    (:func:`~pomlia_hpc.cluster.requeued.controller_states`) within what is left of the same
    ``timeout_s``: the whole call keeps to one limit. Such a job that the
    controller lists queued or running again is given in the controller's state (it was
    requeued, not ended); when the controller cannot be asked, a NODE_FAIL or PREEMPTED one
    is marked :attr:`SchedulerState.may_requeue`."""
    global SACCT_CALLS
    ids = sorted({jid.split("_")[0] for jid in job_ids})
    if not ids:
        return {}
    cmd = [
        "sacct",
        "-n",
        "-P",
        "-X",
        "-D",
        "-o",
        "JobID,State,Start,End,ExitCode",
        "-j",
        ",".join(ids),
    ]
    SACCT_CALLS += 1
    deadline = time.monotonic() + timeout_s
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise ClusterError("sacct not found: is this a Slurm cluster node?") from exc
    except subprocess.TimeoutExpired as exc:
        raise timed_out("sacct", timeout_s) from exc
    except OSError as exc:
        raise ClusterError(f"sacct could not be run: {exc}") from exc
    if proc.returncode != 0:
        raise slurm_failure("sacct", proc.stderr, f"sacct failed ({proc.returncode})")
    states = parse_sacct(proc.stdout)
    # A requeued job that ended before its next attempt stays REQUEUED in sacct for good, and
    # one Slurm requeued after a node failure or a preemption shows that state until its next
    # attempt's line comes: the controller says which (within the same limit).
    ask = [jid for jid, st in states.items() if _controller_decides(st)]
    if ask:
        left_s = deadline - time.monotonic()
        said = controller_states(ask, left_s) if left_s > 0 else None
        for jid in ask:
            states[jid] = _with_controllers_word(states[jid], None if said is None else said[jid])
    return states


#: The controller's states of a job whose attempt is still ending (its nodes clean up):
#: neither requeued nor ended yet.
ENDING_STATES = frozenset({"COMPLETING", "SIGNALING", "STAGE_OUT"})


def _controller_decides(st: SchedulerState) -> bool:
    """Whether sacct's ``st`` for a job's last attempt needs the controller's word: one Slurm
    may have requeued (REQUEUED; NODE_FAIL or PREEMPTED that ended less than
    :data:`~pomlia_hpc.cluster.records.REQUEUE_WINDOW_S` seconds ago, or at a time sacct does
    not give). An older node failure or preemption is plainly final, as routine polls take it:
    a slow or unreachable ``squeue`` left it unsure (a poll that raised) at every look."""
    if st.state.startswith("REQUEUE"):
        return True
    if st.state not in REQUEUABLE_STATES:
        return False
    # Imported here: records imports this module.
    from pomlia_hpc.cluster import records

    if st.ended_at is None:
        return True
    return (records.utcnow() - st.ended_at).total_seconds() < records.REQUEUE_WINDOW_S


def _with_controllers_word(
    st: SchedulerState, said: tuple[str, datetime | None] | None
) -> SchedulerState:
    """``st`` (sacct's REQUEUED, NODE_FAIL or PREEMPTED) with what the controller ``said``
    (its state and end; None: it could not be asked). A REQUEUED job takes the controller's
    final state (LOST: forgotten before it ran again), else stays REQUEUED. A NODE_FAIL or
    PREEMPTED job the controller lists unfinished was requeued (a new attempt, not ended),
    unless its attempt still ends (COMPLETING: given so, not ended yet either);
    one it lists ended takes that end (cancelled while it waited to run again, say: another
    end than accounting's counts the requeue); one it
    forgot keeps accounting's final state; unasked, it is :attr:`~SchedulerState.may_requeue`."""
    if st.state.startswith("REQUEUE"):
        if said is None or said[0] not in FINAL_STATES:
            return st  # no answer, or queued again: accounting's word stands, asked again later
        return replace(st, state=said[0], ended_at=said[1] or st.ended_at)
    if said is None:
        return replace(st, may_requeue=True)
    state, end = said
    if state in ENDING_STATES:  # its attempt still ends: neither requeued nor ended yet
        return replace(st, state=state, ended_at=None)
    if state not in FINAL_STATES:  # requeued: its next attempt waits or runs
        return replace(st, state=state, ended_at=None, requeue_count=st.requeue_count + 1)
    if state == JobState.LOST:
        return st  # forgotten by the controller, so not queued: accounting's end stands
    # another end than accounting's is a later attempt's (requeued, then cancelled before it
    # started): counted, so that accounting's older end, once the controller forgets the job,
    # does not replace it
    again = int(state != st.state)
    return replace(
        st, state=state, ended_at=end or st.ended_at, requeue_count=st.requeue_count + again
    )


def squeue_ids(job_ids: Sequence[str], timeout_s: float = 60.0) -> set[str]:
    """The ids among ``job_ids`` that ``squeue`` lists (queued or running); a
    :class:`ClusterError` when it cannot answer within ``timeout_s`` seconds. Slurm answers
    an id it does not know with "Invalid job id specified" (exit 1): that id is simply not
    listed."""
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise timed_out("squeue", timeout_s) from exc
    except OSError as exc:  # not on PATH, not executable
        raise ClusterError(f"squeue could not be run: {exc}") from exc
    if proc.returncode != 0:
        if "invalid job id" in proc.stderr.lower():
            return set()
        raise slurm_failure("squeue", proc.stderr, f"squeue failed ({proc.returncode})")
    listed = listed_ids(proc.stdout)  # parsed once: a poll may ask for thousands of ids
    return {sid for sid in job_ids if sid in listed}


def listed_ids(squeue_out: str) -> set[str]:
    """The job ids that ``squeue -h -o %i`` output ``squeue_out`` lists: each line's id; a
    pending array's one line (``12_[0-3%2]``) lists its tasks (``12_0`` ... ``12_3``); and any
    task's line lists its whole array (``12``) too, since ``squeue -j 12`` prints an array's
    tasks, never ``12`` itself: a whole array still pending must not read as unknown."""
    listed: set[str] = set()
    for token in squeue_out.split():
        listed.update(expand_pending(token))
        array, sep, _task = token.partition("_")
        if sep and array.isdigit():
            listed.add(array)
    return listed
