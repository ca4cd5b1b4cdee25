"""The loop's side of retrain requests (statuses: :mod:`pomlia_hpc.monitor.requests`).

- A watcher **takes** an open request in one transaction under the model's request lock
  (:func:`take`), recording itself as the taker (``meta["taken_by"]``, a driver record);
  other open requests of the same model are merged into it then (its loop run's window, fixed
  now, holds their traffic), so one slot runs one loop for them. A taken request is taken
  again only to resume its unfinished loop run (and merges nothing: that run's window was
  fixed before the later alarms), and only while no other live watcher took it and no live
  driver holds the run. A loop run stopped by a signal leaves its request ``taken``
  (:func:`release`); ``loop run SLOT`` resuming a request's run takes the request and records
  how it ended (:func:`adopt`, :func:`settle`).
- A taken request whose driver is provably gone (:func:`abandoned`: its taker and its loop
  run's driver, by the rule ``loop show`` marks a run ``stale`` with; e.g. a watcher SIGKILLed)
  is treated as an open one: the stale rule below closes it, and a new watcher takes it over
  (one of two: the first records itself as the taker under the lock).
- A request is **obsolete** once every slot that served its model when the alarm rang has
  changed its champion since (:func:`stale_reason`): the alarm was about a model no longer
  served there, and a promotion back later must not start a retrain on that old alarm.
  :func:`retire_stale` marks them in the transaction that records a promotion or rollback;
  the watcher applies the same rule to requests recorded before that. A ``taken`` request is
  retired too when no driver is at work on it (its loop run ``interrupted``, or its driver
  gone): resuming that run would retrain on the alarm of a model the slot no longer serves.
- **Dismissed** by hand (:func:`dismiss`, ``pomlia loop dismiss``), with a reason.

Closing a request stops its interrupted loop run (status ``stopped``): a later ``loop run
SLOT`` must not resume a retrain that nobody asks for any more.
"""

from __future__ import annotations

import os
import shlex
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pomlia_hpc.automl.liveness import (
    CREATE_TIME_TOLERANCE_S,
    DriverRecord,
    driver_gone,
    may_take_over,
    record_from,
    slurm_restarts,
    this_process,
)
from pomlia_hpc.errors import InputError
from pomlia_hpc.loop.claim import driver_record, held_message, holder
from pomlia_hpc.loop.driver import INTERRUPTED, RESUMABLE, LoopResult
from pomlia_hpc.monitor.requests import (
    CLOSED,
    DISMISSED,
    DONE,
    FAILED,
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


def pending(registry: Registry, workspace: Workspace) -> list[Pending]:
    """Open requests, and taken ones whose loop run did not finish (a killed watcher) or
    whose watcher is gone before it started one (:func:`abandoned`)."""
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
            if r.status == TAKEN and run is None and not abandoned(s, r, workspace, requeue=True):
                continue  # its loop run ended (failed: retried by hand), or starts now
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


def _resumable_runs(session: Session, request_id: int) -> list[LoopRun]:
    """The loop runs of request ``request_id`` that a driver may resume (running, interrupted)."""
    return list(
        session.scalars(
            select(LoopRun).where(LoopRun.request_id == request_id, LoopRun.status.in_(RESUMABLE))
        ).all()
    )


#: ``meta`` key of a taken request: the record (:class:`DriverRecord`) of the process that
#: took it, so that the liveness rule of loop runs tells a watcher at work from a killed one.
TAKER = "taken_by"


def _taker(row: RetrainRequest) -> DriverRecord | None:
    """The process that took ``row`` (None: not recorded, e.g. taken before takers were)."""
    return record_from((row.meta or {}).get(TAKER))


def _mine(record: DriverRecord) -> bool:
    """Whether ``record`` is this process (which may take again what it took itself): its host,
    pid and, when both are known, its start (boot-relative ticks, else the start time within
    the tolerance of :func:`~pomlia_hpc.automl.liveness.driver_gone`). Host and pid alone are
    not enough: a restarted container's watcher is pid 1 on the same host name again."""
    if (record.host, record.pid) != (socket.gethostname(), os.getpid()):
        return False
    me = this_process()
    if record.proc_ticks is not None and me.proc_ticks is not None:
        return record.proc_ticks == me.proc_ticks
    if record.proc_start is not None and me.proc_start is not None:
        return abs(record.proc_start - me.proc_start) < CREATE_TIME_TOLERANCE_S
    return True  # a record from before start ids: the pid decides


def _why_gone(record: DriverRecord, requeue: bool) -> str | None:
    """Why the driver (or taker) of ``record`` is gone, by the rule ``loop show`` marks a run
    ``stale`` with (:func:`~pomlia_hpc.automl.liveness.driver_gone`), or None. With
    ``requeue``, also when its Slurm job ended or was requeued (the rule a new driver takes a
    run over by, :func:`~pomlia_hpc.automl.liveness.may_take_over`; it may ask ``sacct``)."""
    why = driver_gone(record)
    job = os.environ.get("SLURM_JOB_ID") or None
    if why is None and requeue and may_take_over(record, job, slurm_restarts()):
        why = f"its driver (pid {record.pid} on {record.host}): its Slurm job ended or restarted"
    return why


def _taker_at_work(row: RetrainRequest, requeue: bool = False) -> DriverRecord | None:
    """Another process that took ``row`` and is at work (not gone by :func:`_why_gone`)."""
    taker = _taker(row)
    if taker is None or _mine(taker) or _why_gone(taker, requeue) is not None:
        return None
    return taker


def abandoned(
    session: Session, row: RetrainRequest, workspace: Workspace, *, requeue: bool = False
) -> str | None:
    """Why taken request ``row`` provably has no driver any more (one phrase), or None while
    one may be at work. Provably gone, by the rule ``loop show`` marks a run ``stale`` with
    (:func:`~pomlia_hpc.automl.liveness.driver_gone`; with ``requeue`` also the Slurm rule of
    a take-over, :func:`_why_gone`): the process that took it, unless it is this one, and the
    driver of each of its unfinished loop runs: ``interrupted`` (its driver let go) and held by
    no live driver, or ``running`` with its driver gone (SIGKILL, a lost node; by its taker
    when its driver never held it). With no loop run ever, by its taker."""
    if _taker_at_work(row, requeue) is not None:
        return None  # about to start its loop run, or at work on it
    taker = _taker(row)
    taker_gone = _why_gone(taker, requeue) if taker is not None and not _mine(taker) else None
    runs = _resumable_runs(session, row.id)
    if not runs:
        ever = session.scalar(select(LoopRun.id).where(LoopRun.request_id == row.id).limit(1))
        # Its run ended (a failed one is retried by hand), or the taker is this process.
        return None if ever is not None or taker_gone is None else taker_gone
    whys = []
    for run in runs:
        record = driver_record(workspace, run.slot, run.id)
        gone = _why_gone(record, requeue) if record is not None else taker_gone
        if record is not None and gone is None:
            return None  # a live driver holds it
        if run.status == INTERRUPTED:
            whys.append(f"loop run {run.id} interrupted")
        elif gone is not None:
            whys.append(f"loop run {run.id}: {gone}")
        else:
            return None  # running, never held, taken by this process or before takers
    return "; ".join(whys)


def _may_retire(session: Session, row: RetrainRequest, workspace: Workspace) -> bool:
    """Whether ``row`` is one the stale rule may close: open, or taken with no driver at work
    any more (:func:`abandoned`): a driver at work finishes its own run."""
    if row.status == OPEN:
        return True
    return row.status == TAKEN and abandoned(session, row, workspace) is not None


def retire_stale(session: Session, slot: str, workspace: Workspace) -> list[int]:
    """Mark obsolete the open requests of models that served ``slot`` and are stale now, and
    the taken ones no driver works on any more (:func:`abandoned`; call it in the transaction
    that records the slot's new champion); returns their ids."""
    models = session.scalars(
        select(Promotion.model_id).where(Promotion.slot == slot).distinct()
    ).all()
    retired = []
    for model_id in sorted(models):
        lock_requests(session, model_id)
        for row in session.scalars(
            select(RetrainRequest).where(
                RetrainRequest.model_id == model_id, RetrainRequest.status.in_((OPEN, TAKEN))
            )
        ).all():
            if not _may_retire(session, row, workspace):
                continue
            reason = stale_reason(session, row)
            if reason is not None:
                _close(session, row, OBSOLETE, outcome=f"obsolete: {reason}")
                retired.append(row.id)
    return retired


def retire_if_stale(registry: Registry, request_id: int, workspace: Workspace) -> str | None:
    """Mark request ``request_id`` obsolete if it is stale and open (or taken with no driver at
    work any more, :func:`abandoned`); returns the reason."""
    with registry.session() as s:
        row = s.get(RetrainRequest, request_id)
        if row is None:
            return None
        lock_requests(s, row.model_id)
        s.refresh(row)
        if not _may_retire(s, row, workspace):
            return None
        reason = stale_reason(s, row)
        if reason is not None:
            _close(s, row, OBSOLETE, outcome=f"obsolete: {reason}")
        return reason


def take(registry: Registry, request_id: int, slot: str, workspace: Workspace) -> Taken:
    """Take request ``request_id`` for ``slot`` (this process recorded as its taker): an open
    one becomes ``taken`` and the model's other open requests are merged into it, as into a
    taken one whose taker is gone before it started a loop run (:func:`abandoned`); a taken
    one with a loop run running or interrupted is taken over (to resume that run; nothing
    merged) unless another live watcher took it or a live driver holds the run. Decided under
    the model's request lock, so of two watchers only one takes it: the second finds the
    first recorded as the taker, alive."""
    with registry.session() as s:
        row = s.get(RetrainRequest, request_id)
        if row is None:
            return Taken(False, why_not="it is no longer in the registry")
        lock_requests(s, row.model_id)
        s.refresh(row)  # as it is under the lock: another watcher may have taken it
        if row.status not in (OPEN, TAKEN):
            return Taken(False, why_not=f"it is {row.status} now")
        taken = {"slot": slot, "taken_at": utcnow().isoformat(), TAKER: asdict(this_process())}
        # Checked in this transaction: a list read earlier may predate another's take.
        if row.status == TAKEN and (why_not := _held(s, row, workspace)) is not None:
            return Taken(False, why_not=why_not)
        if row.status == TAKEN and _resumable_runs(s, row.id):
            row.meta = {**(row.meta or {}), **taken}
            row.updated_at = utcnow()
            return Taken(True)  # its run's window is fixed: later alarms are not merged
        row.status = TAKEN
        row.meta = {**(row.meta or {}), **taken}
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


def _held(session: Session, row: RetrainRequest, workspace: Workspace) -> str | None:
    """Why taken request ``row`` cannot be taken over (its :attr:`Taken.why_not`), or None:
    by the rules :func:`~pomlia_hpc.loop.claim.holding` lets a new driver take a run over by."""
    taker = _taker_at_work(row, requeue=True)
    if taker is not None:
        return f"another watcher took it (pid {taker.pid} on {taker.host} is at work)"
    runs = _resumable_runs(session, row.id)
    if not runs:
        if abandoned(session, row, workspace, requeue=True) is None:
            return "another watcher took it (no loop run to resume)"
        return None
    for run in runs:
        if (record := holder(workspace, run.slot, run.id)) is not None:
            return held_message(run.slot, run.id, record)
    return None


def finish(registry: Registry, request_id: int, status: str, **meta: Any) -> None:
    """Record how the request's loop run ended (``done``, ``failed``)."""
    with registry.session() as s:
        row = s.get(RetrainRequest, request_id)
        if row is not None:
            row.status = status
            row.meta = {**(row.meta or {}), **meta}
            row.updated_at = utcnow()


def settle(registry: Registry, request_id: int, result: LoopResult) -> None:
    """Record the end of request ``request_id``'s loop run: ``failed`` with its reason (retry
    by hand with ``loop run SLOT``), else ``done`` (also when the gate stopped it)."""
    if result.status == "failed":
        finish(registry, request_id, FAILED, loop_run_id=result.run_id, outcome=result.message)
    else:
        outcome = f"{result.status} {result.message}".strip()
        finish(registry, request_id, DONE, loop_run_id=result.run_id, outcome=outcome)


def release(registry: Registry, request_id: int) -> None:
    """After a stop (a signal) of the request's driver: the request stays ``taken`` while its
    loop run can be resumed (its window is fixed; the next watcher resumes it), and is
    ``open`` again when no run was started (nothing fixed: later alarms may join it). A
    request another process has taken over meanwhile (this one was shutting down) is left as
    that process recorded it."""
    with registry.session() as s:
        row = s.get(RetrainRequest, request_id)
        if row is None:
            return
        lock_requests(s, row.model_id)
        s.refresh(row)
        if row.status != TAKEN:
            return
        taker = _taker(row)
        if taker is not None and not _mine(taker):
            return  # no longer ours to let go
        if _resumable_runs(s, row.id):
            outcome = "interrupted; resumed by the next watch"
        else:
            row.status, outcome = OPEN, "stopped before its loop run started"
        # It let go: no taker at work, whatever becomes of this process.
        meta = {k: v for k, v in (row.meta or {}).items() if k != TAKER}
        row.meta = {**meta, "outcome": outcome}
        row.updated_at = utcnow()


def adopt(registry: Registry, run_id: int) -> int | None:
    """Take the request of loop run ``run_id`` (being resumed by ``loop run SLOT``): an open
    or taken request becomes ``taken``; returns its id, or None (no request, or a closed one)."""
    with registry.session() as s:
        run = s.get(LoopRun, run_id)
        row = s.get(RetrainRequest, run.request_id) if run and run.request_id else None
        if run is None or row is None:
            return None
        lock_requests(s, row.model_id)
        s.refresh(row)
        if row.status not in (OPEN, TAKEN):
            return None
        row.status = TAKEN
        row.meta = {
            **(row.meta or {}),
            "slot": run.slot,
            "taken_at": utcnow().isoformat(),
            TAKER: asdict(this_process()),
        }
        row.updated_at = utcnow()
        return row.id


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
