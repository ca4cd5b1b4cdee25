"""``pomlia loop watch``: run the loop for every retrain request the monitor records.

The monitor's alarm writes a ``retrain_requests`` row for the model it watched (status
``open``). For each open request whose model a deployment slot serves now, the watcher marks it
``taken`` and runs (or resumes) that slot's loop run for the request, linked to the request and
its monitor report; when the run ends the request is ``done`` (with the run's id and outcome in
its ``meta``). A request taken by a driver that was killed is picked up again and its loop run
resumed. A request for a model no slot serves is left open and reported; one whose loop run
failed is marked ``failed`` (retry by hand with ``pomlia loop run SLOT``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select

from pomlia_hpc.errors import InputError, PomliaError
from pomlia_hpc.loop.api import run_loop
from pomlia_hpc.loop.driver import LoopResult, Progress
from pomlia_hpc.loop.stages import LoopSettings, check_settings
from pomlia_hpc.registry import LoopRun, Promotion, Registry, RetrainRequest
from pomlia_hpc.registry.schema import utcnow
from pomlia_hpc.workspace import Workspace


@dataclass(frozen=True)
class Handled:
    """One request the watcher acted on, and the loop run's result."""

    request_id: int
    slot: str
    result: LoopResult


def slot_serving(registry: Registry, model_id: int) -> str | None:
    """The slot whose newest promotion is ``model_id`` (None if no slot serves it now)."""
    with registry.session() as s:
        slots = set(s.scalars(select(Promotion.slot).where(Promotion.model_id == model_id)))
        for slot in sorted(slots):
            newest = s.scalar(
                select(Promotion).where(Promotion.slot == slot).order_by(Promotion.id.desc())
            )
            if newest is not None and newest.model_id == model_id:
                return slot
    return None


def _pending(registry: Registry) -> list[RetrainRequest]:
    """Open requests, and taken ones whose loop run did not finish (a killed watcher)."""
    with registry.session() as s:
        rows = list(
            s.scalars(
                select(RetrainRequest)
                .where(RetrainRequest.status.in_(("open", "taken")))
                .order_by(RetrainRequest.id)
            )
        )
        out = []
        for r in rows:
            if r.status == "taken":
                running = s.scalar(
                    select(LoopRun.id).where(
                        LoopRun.request_id == r.id, LoopRun.status == "running"
                    )
                )
                if running is None:
                    continue
            out.append(r)
        return out


def _mark(registry: Registry, request_id: int, status: str, **meta: object) -> None:
    with registry.session() as s:
        row = s.get(RetrainRequest, request_id)
        if row is not None:
            row.status = status
            row.meta = {**(row.meta or {}), **meta}
            row.updated_at = utcnow()


def consume(
    registry: Registry,
    workspace: Workspace,
    settings: LoopSettings | None = None,
    *,
    progress: Progress = print,
    run: Callable[..., LoopResult] = run_loop,
) -> list[Handled]:
    """One pass over the pending requests (module docstring)."""
    handled = []
    for req in _pending(registry):
        slot = slot_serving(registry, req.model_id)
        if slot is None:
            progress(f"retrain request {req.id}: no deployment slot serves model {req.model_id}")
            continue
        _mark(registry, req.id, "taken", slot=slot)
        progress(f"retrain request {req.id} ({req.reason}): loop for slot {slot}")
        try:
            result = run(
                registry,
                workspace,
                slot,
                settings,
                trigger="monitor",
                request_id=req.id,
                report_id=req.monitor_report_id,
                progress=progress,
            )
        except PomliaError as exc:  # before any loop run existed (e.g. no training data)
            progress(f"retrain request {req.id}: {exc}")
            _mark(registry, req.id, "failed", outcome=str(exc))
            continue
        if result.status == "failed":
            # Left taken with no running loop run: it is not retried in a tight loop; the
            # next `pomlia loop watch` reports it, `pomlia loop run` retries it by hand.
            _mark(registry, req.id, "failed", loop_run_id=result.run_id, outcome=result.message)
        else:
            _mark(
                registry,
                req.id,
                "done",
                loop_run_id=result.run_id,
                outcome=f"{result.status} {result.message}".strip(),
            )
        handled.append(Handled(req.id, slot, result))
    return handled


def check_interval(interval_s: float, *, once: bool = False) -> None:
    """One :class:`InputError` for an interval between looks that is not a positive, finite
    number of seconds (a negative one was a crash at the first sleep, 0 a busy loop). With
    ``once`` (one look, no wait) 0 is accepted too."""
    if once and interval_s == 0:
        return
    if not 0 < interval_s < math.inf:  # NaN too
        raise InputError(
            f"--interval {interval_s}: expected a number of seconds > 0"
            + (" (or 0: --once never waits)" if once else "")
        )


def watch(
    registry: Registry,
    workspace: Workspace,
    settings: LoopSettings | None = None,
    *,
    interval_s: float = 60.0,
    once: bool = False,
    progress: Progress = print,
) -> list[Handled]:
    """Consume requests now and then every ``interval_s`` seconds (only once with ``once``).
    The interval and ``settings`` are checked first: bad ones would fail every request."""
    check_interval(interval_s, once=once)
    check_settings(settings or LoopSettings())
    handled = consume(registry, workspace, settings, progress=progress)
    while not once:
        time.sleep(interval_s)
        handled += consume(registry, workspace, settings, progress=progress)
    return handled
