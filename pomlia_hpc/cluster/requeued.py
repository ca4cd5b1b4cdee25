"""The end of a requeued Slurm job that ended before its next attempt started.

Slurm 22.05 records a requeue in accounting as the attempt's line ``REQUEUED``, and the next
attempt's line only once that attempt starts: a job cancelled while it waited to run again
(``scancel`` between the requeue and the next start) stays ``REQUEUED`` in ``sacct`` for good,
while the controller says CANCELLED. pomlia took it for a job about to run again: the driver
waiting on it (an AutoML trial, a pipeline stage) waited for ever, and ``jobs list`` showed it
queued. :func:`controller_final_states` asks the controller (``squeue --states=all``, which
keeps an ended job for ``MinJobAge``, 300 s by default) about such jobs. One it no longer
lists at all (asked later than that: a driver restarted late) never ran again and is gone:
it counts as ended, ``LOST`` (how it ended is unknown), not as queued for ever.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime

from pomlia_hpc.vocab import FINAL_STATES, JobState


def controller_final_states(
    job_ids: Sequence[str], timeout_s: float
) -> dict[str, tuple[str, datetime | None]]:
    """The final state and end time (aware UTC, None when not given) that ``squeue`` gives
    for those of ``job_ids`` that have ended, ``LOST`` (no end) for those it does not list
    (forgotten by the controller: a queued job is always listed); jobs still queued or
    running are left out, and so is everything when ``squeue`` cannot answer within
    ``timeout_s`` seconds (the caller keeps what accounting said and asks again later)."""
    said = controller_states(job_ids, timeout_s) or {}
    return {jid: st for jid, st in said.items() if st[0] in FINAL_STATES}


def controller_states(
    job_ids: Sequence[str], timeout_s: float
) -> dict[str, tuple[str, datetime | None]] | None:
    """The state and end time (aware UTC, None when not given) that ``squeue --states=all``
    gives for each of ``job_ids``: a final state for one that has ended within ``MinJobAge``,
    an unfinished one (``PENDING``, ``RUNNING``, ...) for one queued or running, ``LOST`` (no
    end) for one it does not list (forgotten: a queued job is always listed). None when
    ``squeue`` cannot answer within ``timeout_s`` seconds."""
    if not job_ids:
        return {}
    try:
        proc = subprocess.run(
            ["squeue", "-h", "--states=all", "-o", "%i|%T|%e", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    # One id the controller does not know fails ("Invalid job id specified"); among several
    # such an id is left out.
    if proc.returncode != 0 and "invalid job id" not in proc.stderr.lower():
        return None
    out: dict[str, tuple[str, datetime | None]] = {}
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        jid, _, rest = line.strip().partition("|")
        state, _, end = rest.partition("|")
        for task in expand_pending(jid):  # a pending array's line (12_[3-5]): its tasks
            out[task] = (state, _end_time(end))
    return {jid: out.get(jid, (JobState.LOST, None)) for jid in job_ids}


def expand_pending(job_id: str) -> list[str]:
    """``12_[0-3,7%2]`` (how Slurm prints an array's tasks that have not started) → ``12_0
    … 12_3, 12_7``; other ids unchanged."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not m:
        return [job_id]
    base, spec = m.group(1), m.group(2).split("%")[0]
    out: list[str] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1))
    return out


def _end_time(text: str) -> datetime | None:
    """squeue's end time (the cluster's local time, no zone) as aware UTC."""
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:  # "N/A", "Unknown"
        return None
