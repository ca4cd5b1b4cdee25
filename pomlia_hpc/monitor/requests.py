"""Retrain requests: what a monitor alarm asks of the loop (``retrain_requests`` rows).

A request's ``status`` goes ``open`` → ``taken`` (a watcher runs its loop run) → ``done`` or
``failed``; an ``open`` one may also end ``dismissed`` (by hand, ``pomlia loop dismiss``),
``obsolete`` (the slot that served its model moved to another model: the alarm was about a
model no longer served) or ``merged`` (folded into another open request of the same model).
A loop run stopped by a signal leaves its request ``taken``; the next watcher resumes it (a
later alarm makes a new request: its traffic is not in that run's fixed window).

One open request per model: an alarm while the model has an open request is added to it
(:func:`record_alarm`: ``meta["alarms"]`` counts them, ``meta["last_alarm"]`` holds the newest
one's time, report and reasons), so five alarming monitor runs over the same traffic ask for
one retrain, not five. The loop lives above this room and imports these names; the monitor
may not import the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pomlia_hpc.registry import RetrainRequest
from pomlia_hpc.registry.db import lock_name
from pomlia_hpc.registry.schema import utcnow

OPEN = "open"
TAKEN = "taken"
DONE = "done"
FAILED = "failed"
DISMISSED = "dismissed"
OBSOLETE = "obsolete"
MERGED = "merged"
#: Statuses a request never leaves.
CLOSED = (DONE, DISMISSED, OBSOLETE, MERGED)


@dataclass(frozen=True)
class AlarmRecorded:
    """Where an alarm went: a new request, or an open one it was added to (``merged``);
    ``alarms``: how many alarms the request holds now."""

    request_id: int
    merged: bool
    alarms: int


def lock_requests(session: Session, model_id: int) -> None:
    """Hold the write lock of model ``model_id``'s requests until ``session``'s transaction
    ends: an alarm merging into an open request and a watcher taking that request must not
    interleave (the alarm would be added to a request whose loop run's window is already
    fixed, and lost)."""
    lock_name(session, f"retrain-requests:{model_id}")


def alarm_count(row: RetrainRequest) -> int:
    """How many monitor alarms ``row`` holds (1 for requests from before the count)."""
    return int((row.meta or {}).get("alarms", 1))


def record_alarm(
    session: Session,
    *,
    model_id: int,
    report_id: int,
    reason: str,
    meta: dict[str, Any],
) -> AlarmRecorded:
    """Record an alarm of model ``model_id``'s monitor (report ``report_id``): added to the
    model's open request if it has one, else a new open request (module docstring)."""
    lock_requests(session, model_id)
    row = session.scalar(
        select(RetrainRequest)
        .where(RetrainRequest.model_id == model_id, RetrainRequest.status == OPEN)
        .order_by(RetrainRequest.id)
        .limit(1)
    )
    if row is None:
        row = RetrainRequest(
            model_id=model_id,
            monitor_report_id=report_id,
            reason=reason,
            meta={**meta, "alarms": 1},
        )
        session.add(row)
        session.flush()
        return AlarmRecorded(row.id, False, 1)
    count = alarm_count(row) + 1
    last = {"at": utcnow().isoformat(), "report_id": report_id, "reason": reason, **meta}
    row.meta = {**(row.meta or {}), "alarms": count, "last_alarm": last}  # a new dict: seen
    row.updated_at = utcnow()
    return AlarmRecorded(row.id, True, count)
