"""The loop's side of retrain requests (statuses: :mod:`pomlia_hpc.monitor.requests`).

- A watcher **takes** an open request in one transaction under the model's request lock
  (:func:`take`); other open requests of the same model are merged into it then (its loop run's
  window, fixed now, holds their traffic), so one slot runs one loop for them.
- A request is **obsolete** once every slot that served its model when the alarm rang has
  changed its champion since (:func:`stale_reason`): the alarm was about a model no longer
  served there, and a promotion back later must not start a retrain on that old alarm.
  :func:`retire_stale` marks them in the transaction that records a promotion or rollback;
  the watcher applies the same rule to requests recorded before that.
- **Dismissed** by hand (:func:`dismiss`, ``pomlia loop dismiss``), with a reason.

Closing a request stops its interrupted loop run (status ``stopped``): a later ``loop run
SLOT`` must not resume a retrain that nobody asks for any more.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pomlia_hpc.errors import InputError
from pomlia_hpc.loop.claim import held_message, holder
from pomlia_hpc.loop.driver import RESUMABLE
from pomlia_hpc.monitor.requests import (
    CLOSED,
    DISMISSED,
    MERGED,
    OBSOLETE,
    OPEN,
    TAKEN,
    alarm_count,
    lock_requests,
)
from pomlia_hpc.registry import LoopRun, Model, Promotion, Registry, RetrainRequest
from pomlia_hpc.registry.lookup import not_found
from pomlia_hpc.registry.schema import utcnow
from pomlia_hpc.workspace import Workspace


@dataclass(frozen=True)
class Pending:
    """A request a watcher may act on: open, or taken with a resumable loop run (``run_id``)."""

    id: int
    model_id: int
    reason: str
    report_id: int | None
    status: str
    run_id: int | None
    run_slot: str | None


@dataclass(frozen=True)
class Taken:
    """The outcome of :func:`take`: taken (with the ids merged into it), or why not."""

    taken: bool
    merged: tuple[int, ...] = ()
    why_not: str = ""


def pending(registry: Registry) -> list[Pending]:
    """Open requests, and taken ones whose loop run did not finish (a killed watcher)."""
    out = []
    with registry.session() as s:
        rows = s.scalars(
            select(RetrainRequest)
            .where(RetrainRequest.status.in_((OPEN, TAKEN)))
            .order_by(RetrainRequest.id)
        ).all()
        for r in rows:
            run = s.scalar(
                select(LoopRun)
                .where(LoopRun.request_id == r.id, LoopRun.status.in_(RESUMABLE))
                .order_by(LoopRun.id.desc())
                .limit(1)
            )
            if r.status == TAKEN and run is None:
                continue  # its loop run ended: failed, retried by hand (`pomlia loop run`)
            run_id, slot = (run.id, run.slot) if run is not None else (None, None)
            out.append(
                Pending(r.id, r.model_id, r.reason, r.monitor_report_id, r.status, run_id, slot)
            )
    return out


def stale_reason(session: Session, req: RetrainRequest) -> str | None:
    """Why ``req`` is obsolete (one phrase), or None. It is when the model was the champion
    of at least one slot when the request was recorded, and each such slot has served another
    model since (even if it serves the model again now: the alarm was about its traffic then).
    A model no slot served then (served directly, ``pomlia serve MODEL``) is never stale."""
    slots = session.scalars(
        select(Promotion.slot).where(Promotion.model_id == req.model_id).distinct()
    ).all()
    changes = []
    for slot in sorted(slots):
        then = session.scalar(
            select(Promotion)
            .where(Promotion.slot == slot, Promotion.created_at <= req.created_at)
            .order_by(Promotion.id.desc())
            .limit(1)
        )
        if then is None or then.model_id != req.model_id:
            continue  # the slot did not serve the model when the alarm rang
        moved = session.scalar(
            select(Promotion)
            .where(
                Promotion.slot == slot,
                Promotion.created_at > req.created_at,
                Promotion.model_id != req.model_id,
            )
            .order_by(Promotion.id)
            .limit(1)
        )
        if moved is None:
            return None  # a slot still serves the model the alarm was about
        changes.append((slot, moved))
    if not changes:
        return None
    slot, moved = changes[0]
    model, new = session.get(Model, req.model_id), session.get(Model, moved.model_id)
    return (
        f"slot {slot} moved from {model.name if model else req.model_id} to "
        f"{new.name if new else moved.model_id} ({moved.kind}, promotion {moved.id} at "
        f"{moved.created_at:%Y-%m-%d %H:%M:%S}) after this alarm"
    )


def _close(session: Session, row: RetrainRequest, status: str, **meta: Any) -> None:
    """Close ``row`` with ``status`` and ``meta``; its interrupted loop run is stopped."""
    row.status = status
    row.meta = {**(row.meta or {}), **meta, "closed_at": utcnow().isoformat()}
    row.updated_at = utcnow()
    session.execute(
        update(LoopRun)
        .where(LoopRun.request_id == row.id, LoopRun.status.in_(RESUMABLE))
        .values(status="stopped", error=f"retrain request {row.id} {status}", updated_at=utcnow())
    )


def retire_stale(session: Session, slot: str) -> list[int]:
    """Mark obsolete the open requests of models that served ``slot`` and are stale now (call
    it in the transaction that records the slot's new champion); returns their ids."""
    models = session.scalars(
        select(Promotion.model_id).where(Promotion.slot == slot).distinct()
    ).all()
    retired = []
    for model_id in sorted(models):
        lock_requests(session, model_id)
        for row in session.scalars(
            select(RetrainRequest).where(
                RetrainRequest.model_id == model_id, RetrainRequest.status == OPEN
            )
        ).all():
            reason = stale_reason(session, row)
            if reason is not None:
                _close(session, row, OBSOLETE, outcome=f"obsolete: {reason}")
                retired.append(row.id)
    return retired


def retire_if_stale(registry: Registry, request_id: int) -> str | None:
    """Mark request ``request_id`` obsolete if it is open and stale; returns the reason."""
    with registry.session() as s:
        row = s.get(RetrainRequest, request_id)
        if row is None:
            return None
        lock_requests(s, row.model_id)
        s.refresh(row)
        if row.status != OPEN:
            return None
        reason = stale_reason(s, row)
        if reason is not None:
            _close(s, row, OBSOLETE, outcome=f"obsolete: {reason}")
        return reason


def take(registry: Registry, request_id: int, slot: str) -> Taken:
    """Take request ``request_id`` for ``slot``: an open one (or a taken one whose loop run is
    resumable) becomes ``taken``, and the model's other open requests are merged into it."""
    with registry.session() as s:
        row = s.get(RetrainRequest, request_id)
        if row is None:
            return Taken(False, why_not="it is no longer in the registry")
        lock_requests(s, row.model_id)
        s.refresh(row)  # as it is under the lock: another watcher may have taken it
        if row.status not in (OPEN, TAKEN):
            return Taken(False, why_not=f"it is {row.status} now")
        row.status = TAKEN
        row.meta = {**(row.meta or {}), "slot": slot, "taken_at": utcnow().isoformat()}
        row.updated_at = utcnow()
        merged = []
        for other in s.scalars(
            select(RetrainRequest).where(
                RetrainRequest.model_id == row.model_id,
                RetrainRequest.status == OPEN,
                RetrainRequest.id != row.id,
            )
        ).all():
            _close(s, other, MERGED, merged_into=row.id, outcome=f"merged into request {row.id}")
            merged.append(other.id)
        if merged:
            alarms = alarm_count(row) + sum(1 for _ in merged)
            row.meta = {**row.meta, "alarms": alarms, "merged": merged}
        return Taken(True, tuple(merged))


def finish(registry: Registry, request_id: int, status: str, **meta: Any) -> None:
    """Record how the request's loop run ended (``done``, ``failed``) or that it goes back to
    ``open`` (its loop run was interrupted: the next watcher resumes it)."""
    with registry.session() as s:
        row = s.get(RetrainRequest, request_id)
        if row is not None:
            row.status = status
            row.meta = {**(row.meta or {}), **meta}
            row.updated_at = utcnow()


def dismiss(registry: Registry, workspace: Workspace, request_id: int, reason: str) -> str:
    """Close request ``request_id`` by hand (``dismissed``, with ``reason``); returns its
    status before. Refused (:class:`InputError`) for a closed request and for one whose loop
    run a live watcher is driving (stop that watcher first)."""
    with registry.session() as s:
        row = s.get(RetrainRequest, request_id)
        if row is None:
            known = [
                str(i) for i in s.scalars(select(RetrainRequest.id).order_by(RetrainRequest.id))
            ]
            raise not_found("retrain request", request_id, known)
        lock_requests(s, row.model_id)
        s.refresh(row)
        if row.status in CLOSED:
            raise InputError(
                f"retrain request {request_id} is {row.status} already: nothing to dismiss"
            )
        for run in s.scalars(
            select(LoopRun).where(LoopRun.request_id == row.id, LoopRun.status.in_(RESUMABLE))
        ).all():
            held = holder(workspace, run.slot, run.id)
            if held is not None:
                raise InputError(
                    f"retrain request {request_id}: {held_message(run.slot, run.id, held)}; "
                    f"stop that watcher first (`kill {held.pid}` on {held.host}; its run is "
                    "recorded interrupted), then dismiss the request"
                )
        was = row.status
        _close(s, row, DISMISSED, outcome=f"dismissed: {reason}")
        return was


@dataclass(frozen=True)
class RequestView:
    """One request as ``loop show`` lists it."""

    id: int
    model: str
    status: str
    text: str


def requests_of_slot(registry: Registry, slot: str) -> list[RequestView]:
    """The requests of models that served ``slot`` or whose loop runs ran on it, oldest first."""
    with registry.session() as s:
        models = set(s.scalars(select(Promotion.model_id).where(Promotion.slot == slot)))
        linked = set(
            s.scalars(
                select(LoopRun.request_id).where(
                    LoopRun.slot == slot, LoopRun.request_id.is_not(None)
                )
            )
        )
        rows = s.scalars(
            select(RetrainRequest)
            .where(RetrainRequest.model_id.in_(models) | RetrainRequest.id.in_(linked))
            .order_by(RetrainRequest.id)
        ).all()
        names = {m.id: m.name for m in s.scalars(select(Model).where(Model.id.in_(models)))}
        return [_view(r, names.get(r.model_id, str(r.model_id))) for r in rows]


def _view(r: RetrainRequest, model: str) -> RequestView:
    meta = r.meta or {}
    alarms = alarm_count(r)
    last = (meta.get("last_alarm") or {}).get("at")
    head = f"{alarms} alarm{'s' if alarms != 1 else ''}" + (
        f" (last {str(last)[:19].replace('T', ' ')})" if last else ""
    )
    parts = [f"model {model}", head, r.reason]
    if meta.get("loop_run_id") is not None:
        parts.append(f"loop run {meta['loop_run_id']}")
    if meta.get("outcome"):
        parts.append(str(meta["outcome"]))
    return RequestView(r.id, model, r.status, "; ".join(p for p in parts if p))


def dismiss_hint(request_ids: Sequence[int]) -> str:
    """The command that closes the requests a watcher cannot act on."""
    return "; ".join(f"`pomlia loop dismiss {shlex.quote(str(i))}`" for i in request_ids)
