"""Why a job ended without a result, in one line: the one failure classifier of pomlia-hpc.

The executor writes :func:`exit_line` into a job's registry row (the job table's "cause"); the
AutoML driver records :func:`failure_cause` for a crashed trial. Both read the scheduler's final
state first (a cancelled or timed-out job's traceback, if any, is submitit's, not the job's),
then the job's own traceback.
"""

from __future__ import annotations

import re

#: Causes that the scheduler's final state says by itself.
SCHEDULER_CAUSES = {
    "CANCELLED": "cancelled (scancel or preemption)",
    "TIMEOUT": "time limit reached",
    "OUT_OF_MEMORY": "out of memory (killed by the scheduler)",
    "NODE_FAIL": "node_fail",
    "PREEMPTED": "preempted",
}

_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure)\b(:.*)?$")


def exit_line(state: str, traceback: str | None) -> str:
    """The exception line of ``traceback`` (the last one that is not submitit's own), else the
    state: what the job table shows (at most 500 characters)."""
    if traceback:
        lines = [ln.strip() for ln in traceback.strip().splitlines()]
        for line in reversed(lines):
            if _EXC_LINE.match(line) and not line.startswith("submitit."):
                return line[:500]
    return state


def failure_cause(state: str, traceback: str | None, detail: str = "") -> str:
    """One line for people (at most 300 characters): the scheduler's reason for ``state``,
    memory exhaustion seen in the traceback, else ``detail`` (the job's own error line), else
    the exception line of the traceback, else the state."""
    if state in SCHEDULER_CAUSES:
        return SCHEDULER_CAUSES[state]
    tb = traceback or ""
    if "OutOfMemoryError" in tb or "CUDA out of memory" in tb:
        return "out of memory (GPU)"
    if "MemoryError" in tb:
        return "out of memory"
    return (detail or exit_line(state, traceback))[:300] or state


_NOT_REQUEUED = re.compile(r"Job not requeued because: ([^\n]*?)\.?\s*$", re.MULTILINE)


def timeout_cause(
    traceback: str | None, requeues: int, time_min: int, signal_delay_s: int
) -> str | None:
    """The cause of a checkpointable job that submitit stopped requeueing, in words (None if
    ``traceback`` says no such thing): how often it hit its time limit (``time_min``, minutes;
    the USR2 came ``signal_delay_s`` seconds before it) and what to change. ``requeues``: the
    requeues Slurm counted (the last attempt timed out as well)."""
    found = _NOT_REQUEUED.search(traceback or "")
    if found is None:
        return None
    why = found.group(1).strip()
    if "timed-out" not in why:
        return f"not requeued: {why}"
    return (
        f"timed out {requeues + 1} time(s) at its {time_min} min time limit (signal "
        f"{signal_delay_s} s before it), then submitit gave up requeueing it; raise time_min"
    )
