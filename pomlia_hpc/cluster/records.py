"""Job records in the registry, and the scheduler poll that keeps them current.

The submitting process writes the rows (jobs never write to the registry themselves: SQLite on a
shared file system is fragile). State of any number of Slurm jobs is read with ONE ``sacct``
call per poll, not one per job.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from pomlia_hpc.errors import ClusterError
from pomlia_hpc.registry import Job, Registry

FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
        "INTERRUPTED",
    }
)

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


def _parse_time(text: str) -> datetime | None:
    if not text or text in ("Unknown", "None"):
        return None
    try:
        # sacct prints local time without zone; the test cluster and most clusters run UTC.
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        return None


def _expand_pending(job_id: str) -> list[str]:
    """``12_[0-3,7%2]`` → ``12_0 … 12_3, 12_7``; other ids unchanged."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not m:
        return [job_id]
    base, spec = m.group(1), m.group(2).split("%")[0]
    out: list[str] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1))
    return out


def parse_sacct(text: str) -> dict[str, SchedulerState]:
    """Parse ``sacct -n -P -X -D -o JobID,State,Start,End,ExitCode`` output.

    With ``-D`` a requeued job appears once per attempt; the last line is the current attempt
    and the number of earlier lines is the requeue count.
    """
    lines: dict[str, list[list[str]]] = {}
    for raw in text.splitlines():
        fields = raw.strip().split("|")
        if len(fields) < 5 or "." in fields[0]:
            continue
        for jid in _expand_pending(fields[0]):
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
            requeue_count=len(attempts) - 1,
        )
    return out


def sacct_states(job_ids: Iterable[str]) -> dict[str, SchedulerState]:
    """States of ``job_ids`` (plain ids, array task ids ``A_I`` or array ids) in one sacct call."""
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
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError as exc:
        raise ClusterError("sacct not found: is this a Slurm cluster node?") from exc
    if proc.returncode != 0:
        raise ClusterError(f"sacct failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse_sacct(proc.stdout)


def record_submission(
    registry: Registry,
    *,
    backend: str,
    scheduler_ids: Sequence[str],
    name: str,
    folder: str,
    array_job_id: str | None = None,
    meta: dict[str, Any] | None = None,
) -> list[int]:
    """Insert one row per submitted job (or array task); returns their registry ids."""
    with registry.session() as s:
        rows = [
            Job(
                backend=backend,
                scheduler_id=sid,
                array_job_id=array_job_id,
                array_index=i if array_job_id is not None else None,
                name=name,
                folder=folder,
                state="PENDING",
                meta=meta or {},
            )
            for i, sid in enumerate(scheduler_ids)
        ]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def update_job(registry: Registry, job_id: int, **fields: Any) -> None:
    """Set ``fields`` on one job row."""
    with registry.session() as s:
        row = s.get(Job, job_id)
        if row is None:
            return
        for key, value in fields.items():
            setattr(row, key, value)


def refresh_slurm_jobs(registry: Registry, job_ids: Sequence[int] | None = None) -> int:
    """Poll Slurm once for every unfinished Slurm job row (or those in ``job_ids``).

    Returns how many rows changed. The rows' exit cause is set for jobs that ended badly.
    """
    with registry.session() as s:
        q = select(Job).where(Job.backend == "slurm")
        if job_ids is not None:
            q = q.where(Job.id.in_(job_ids))
        else:
            q = q.where(Job.state.not_in(FINAL_STATES))
        rows = list(s.scalars(q))
        if not rows:
            return 0
        states = sacct_states(r.scheduler_id for r in rows)
        changed = 0
        for row in rows:
            st = states.get(row.scheduler_id)
            if st is None:
                continue
            new = {
                "state": st.state,
                "started_at": st.started_at or row.started_at,
                "ended_at": st.ended_at if st.state in FINAL_STATES else None,
                "requeue_count": max(row.requeue_count, st.requeue_count),
            }
            if st.state in FINAL_STATES and st.state != "COMPLETED" and not row.exit_cause:
                new["exit_cause"] = f"{st.state} (exit code {st.exit_code})"
            if any(getattr(row, k) != v for k, v in new.items()):
                changed += 1
                for k, v in new.items():
                    setattr(row, k, v)
        return changed
