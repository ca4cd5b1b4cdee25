"""Retrain requests: what a monitor alarm asks of the loop (``retrain_requests`` rows).

A request's ``status`` goes ``open`` → ``taken`` (a watcher runs its loop run) → ``done`` or
``failed``; an ``open`` one may also end ``dismissed`` (by hand, ``pomlia loop dismiss``),
``obsolete`` (the slot that served its model moved to another model: the alarm was about a
model no longer served) or ``merged`` (folded into another open request of the same model).
A loop run stopped by a signal leaves its request ``taken``; the next watcher resumes it (a
later alarm makes a new request: its traffic is not in that run's fixed window).

One open request per model: an alarm while the model has an open request is added to it
(:func:`record_alarm`: ``meta["alarms"]`` counts them, ``meta["last_alarm"]`` holds the newest
one's time, report and reasons, and ``previous``, the one before; ``meta["alarm_reports"]`` the
reports of the alarms added), so five alarming monitor runs over the same traffic ask for
one retrain, not five. A report that could not be published takes its alarm back
(:func:`take_back_alarm`). The loop lives above this room and imports these names; the monitor
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
    old = dict(row.meta or {})
    last: dict[str, Any] = {
        "at": utcnow().isoformat(),
        "report_id": report_id,
        "reason": reason,
        **meta,
    }
    if old.get("last_alarm"):  # one level: what taking this alarm back restores
        last["previous"] = {k: v for k, v in old["last_alarm"].items() if k != "previous"}
    added = [*old.get("alarm_reports", []), report_id]
    # a new dict: SQLAlchemy sees the change
    row.meta = {**old, "alarms": count, "last_alarm": last, "alarm_reports": added}
    row.updated_at = utcnow()
    return AlarmRecorded(row.id, True, count)


def take_back_alarm(session: Session, report_id: int, model_id: int | None) -> None:
    """Undo what :func:`record_alarm` did for report ``report_id`` (of model ``model_id``; None:
    unknown), whose report is taken back: a request it created and that holds no other alarm
    is deleted; otherwise its alarm is taken out of the request (the count lowered, the newest
    alarm before it restored). A request it created that holds later alarms stands for them,
    its report the first later one's."""
    if model_id is not None:
        lock_requests(session, model_id)
    q = select(RetrainRequest)
    if model_id is not None:
        q = q.where(RetrainRequest.model_id == model_id)
    for row in session.scalars(q.order_by(RetrainRequest.id)).all():
        meta = dict(row.meta or {})
        added = [int(i) for i in meta.get("alarm_reports", [])]
        last = dict(meta.get("last_alarm") or {})
        created = row.monitor_report_id == report_id
        if not created and report_id not in added and last.get("report_id") != report_id:
            continue
        count = alarm_count(row)
        if created and count <= 1 and row.status == OPEN:
            session.delete(row)  # its own request, which no other alarm joined
            continue
        if created:  # later alarms joined (or a watcher took it): it stands for them now
            row.monitor_report_id = added.pop(0) if added else None
        else:
            added = [i for i in added if i != report_id]
        if last.get("report_id") == report_id:
            last = dict(last.get("previous") or {})
        meta["alarms"] = max(1, count - 1)
        meta["alarm_reports"] = added
        if last and meta["alarms"] > 1:
            meta["last_alarm"] = last
        else:  # one alarm left: the request's own, no "last" beside it
            meta.pop("last_alarm", None)
        row.meta = meta
        row.updated_at = utcnow()
