"""Why a job ended without a result, in one line: the one failure classifier of pomlia-hpc.

The executor writes :func:`exit_line` into a job's registry row (the job table's "cause"); the
AutoML driver records :func:`failure_cause` for a crashed trial. Both read the scheduler's final
state first (a cancelled or timed-out job's traceback, if any, is submitit's, not the job's),
then the job's own traceback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Causes that the scheduler's final state says by itself.
SCHEDULER_CAUSES = {
    "CANCELLED": "cancelled (scancel or preemption)",
    "TIMEOUT": "time limit reached",
    "OUT_OF_MEMORY": "out of memory (killed by the scheduler)",
    "NODE_FAIL": "node_fail",
    "PREEMPTED": "preempted",
}

#: The causes a job row takes from its final state alone (the exit code Slurm gives them, 0:0
#: for a scancel, says nothing); other states say "<STATE> (exit code N:S)".
STATE_CAUSES = {
    **{k: SCHEDULER_CAUSES[k] for k in ("CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")},
    # sacct's state of a requeued job that the controller has forgotten (cluster/requeued.py)
    "LOST": "requeued, then gone from Slurm's queue before it ran again: counted as ended, "
    "its outcome unknown",
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

#: Seconds by which Slurm may send a job's ``--signal`` earlier than asked (its resolution).
SIGNAL_EARLY_S = 60

#: What says that SIGUSR2 itself killed a job: srun's line in its error log, or sacct's
#: ExitCode of the step (``exit code:signal``; 12 is SIGUSR2 on Linux).
_USR2_KILL = re.compile(r"User defined signal 2\b")
USR2_EXIT_CODES = ("0:12",)

#: Keys of a Slurm job's row meta (``Job.meta``) that hold its time limit (minutes) and how
#: long before it the checkpoint signal was asked for (seconds); written at submission.
LIMIT_KEYS = ("time_min", "signal_delay_s")


def _limit_words(time_min: int | None, signal_delay_s: int | None) -> str:
    if time_min is None or signal_delay_s is None:
        return "its time limit"
    return f"its {time_min} min time limit (signal {signal_delay_s} s before it)"


def timeout_cause(
    traceback: str | None, attempts: int, time_min: int | None, signal_delay_s: int | None
) -> str | None:
    """The cause of a checkpointable job that submitit stopped requeueing, in words (None if
    ``traceback`` says no such thing): "timed out after N attempts" at its time limit
    (``time_min``, minutes; the USR2 came ``signal_delay_s`` seconds before it; None: not
    known), and what to change.

    ``attempts``: how many attempts of the job ran (started), the last one included, which
    timed out. It is not the number of time-outs: an earlier attempt may have been requeued
    for another reason (preemption, ``scontrol requeue``), and submitit counts only the
    time-outs; nor Slurm's requeues + 1, which also counts an attempt requeued before it
    started. Callers count the attempts that sacct gives a start time
    (:func:`pomlia_hpc.cluster.records.attempts_run`)."""
    found = _NOT_REQUEUED.search(traceback or "")
    if found is None:
        return None
    why = found.group(1).strip()
    if "timed-out" not in why:
        return f"not requeued: {why}"
    n = max(attempts, 1)  # it timed out, so at least the attempt that said so ran
    return (
        f"timed out after {n} attempt{'s' if n != 1 else ''} at "
        f"{_limit_words(time_min, signal_delay_s)}, then submitit gave up requeueing it; "
        "raise time_min"
    )


def usr2_kill_cause(
    text: str | None,
    exit_code: str | None,
    time_min: int | None,
    signal_delay_s: int | None,
) -> str | None:
    """The cause of a job that the checkpoint signal (SIGUSR2) killed before the job could
    handle it (None if neither ``text``, its log, nor ``exit_code``, sacct's, says so): with a
    short time limit the signal comes while the job starts (Slurm may send it up to
    :data:`SIGNAL_EARLY_S` seconds early)."""
    if not (_USR2_KILL.search(text or "") or exit_code in USR2_EXIT_CODES):
        return None
    when = (
        "shortly before the time limit"
        if time_min is None or signal_delay_s is None
        else f"{signal_delay_s} s before the {time_min} min time limit"
    )
    return (
        f"killed by the checkpoint signal (USR2) before it could checkpoint: it is sent {when} "
        f"(Slurm may send it up to {SIGNAL_EARLY_S} s earlier), here while the job was "
        "starting; raise time_min"
    )


def log_cause(
    text: str | None,
    *,
    exit_code: str | None = None,
    attempts: int = 1,
    limits: tuple[int, int] | None = None,
) -> str | None:
    """The cause that a failed job's log ``text`` (its traceback, or the tail of its output
    files) or sacct's ``exit_code`` names: submitit gave up requeueing it, or the checkpoint
    signal killed it; None if neither. ``attempts``: the job's attempts that ran (see
    :func:`timeout_cause`); ``limits``: its time limit (minutes) and signal delay (seconds),
    when known."""
    time_min, delay = limits if limits is not None else (None, None)
    return timeout_cause(text, attempts, time_min, delay) or usr2_kill_cause(
        text, exit_code, time_min, delay
    )


#: The last line of a job that gave up (``cluster.jobstart.final_line``): ``[12:00:00] error:
#: the job gave up: ValueError: ...``, the cause after the colon.
_GAVE_UP = re.compile(r"error: the job gave up: ([^\n]+?)\s*$", re.MULTILINE)


def gave_up_cause(text: str | None) -> str | None:
    """The cause a Slurm job wrote as its last word when it gave up (the last such line of
    its log ``text``; at most 500 characters), or None: what a failed job's row says when no
    process collected its result (its submitter is gone, or has not looked yet), where sacct
    knows only its exit code."""
    found = _GAVE_UP.findall(text or "")
    return found[-1][:500] if found else None


def job_limits(meta: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """A Slurm job's time limit (minutes) and signal delay (seconds) from its row's meta."""
    time_min, delay = ((meta or {}).get(k) for k in LIMIT_KEYS)
    if not isinstance(time_min, int) or not isinstance(delay, int):
        return None
    return time_min, delay


#: Bytes read from the end of each of a job's log files: submitit's last words are there.
LOG_TAIL_BYTES = 16384


def log_names(scheduler_id: str) -> list[str]:
    """The names of the log files job ``scheduler_id`` may have in its folder: submitit's
    ``<id>_0_log.out`` and ``.err`` (an array task's id is ``<array>_<task>``), then sbatch's
    ``slurm-<id>.out`` of a batch script submitted from that folder (``monitor schedule``)."""
    return [f"{scheduler_id}_0_log.out", f"{scheduler_id}_0_log.err", f"slurm-{scheduler_id}.out"]


def log_files(folder: str, scheduler_id: str) -> list[Path]:
    """The log files of job ``scheduler_id`` that exist in ``folder`` (see :func:`log_names`)."""
    if not folder:
        return []
    paths = [Path(folder) / name for name in log_names(scheduler_id)]
    return [p for p in paths if p.is_file()]


def log_tail(folder: str, scheduler_id: str) -> str:
    """The ends of the logs submitit's job ``scheduler_id`` wrote in ``folder`` (its
    ``<id>_0_log.err`` and ``.out``; "" for a missing or unreadable one)."""
    parts = []
    for suffix in ("err", "out"):
        path = Path(folder) / f"{scheduler_id}_0_log.{suffix}"
        try:
            with path.open("rb") as fh:
                size = fh.seek(0, 2)
                fh.seek(max(size - LOG_TAIL_BYTES, 0))
                parts.append(fh.read().decode("utf-8", "replace"))
        except OSError:
            continue
    return "\n".join(parts)
