"""``pomlia loop watch``: run the loop for every retrain request the monitor records.

The monitor's alarm writes a ``retrain_requests`` row for the model it watched (status
``open``; later alarms while it is open are added to it, :mod:`pomlia_hpc.monitor.requests`).
For each open request whose model a deployment slot serves now, the watcher marks it ``taken``
(merging the model's other open requests into it) and runs (or resumes) that slot's loop run
for the request, linked to the request and its monitor report; when the run ends the request
is ``done`` (with the run's id and outcome in its ``meta``), or ``failed`` with the reason
(retry by hand with ``pomlia loop run SLOT``). At most one loop per slot per pass.

- A request taken by a watcher that was killed (its driver gone by the rule ``loop show``
  marks a run ``stale`` with) is taken over and its loop run resumed, or started if it had
  none; one that another live watcher took, or whose loop run another live driver holds
  (:mod:`.claim`), is skipped, with one line saying who.
- A request whose alarm no longer applies (the slot moved to another model since) is closed
  as ``obsolete`` (:func:`~pomlia_hpc.loop.requests.stale_reason`); one for a model no slot
  serves, and none did when it rang, is left open and reported once per watcher
  (``pomlia loop dismiss ID`` closes it).
- A signal that stops the watcher (SIGTERM, SIGINT) records the loop run ``interrupted`` and
  leaves its request ``taken``: the next watcher resumes that run, and later alarms make a new
  request (their traffic is not in the run's fixed window). A slot that moves on meanwhile
  retires the request (``obsolete``) and stops the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from pomlia_hpc.errors import InputError, PomliaError
from pomlia_hpc.loop import requests
from pomlia_hpc.loop.api import run_loop
from pomlia_hpc.loop.claim import LoopBusyError, held_message, holder
from pomlia_hpc.loop.driver import LoopResult, Progress
from pomlia_hpc.loop.stages import LoopSettings, check_settings
from pomlia_hpc.monitor.requests import FAILED
from pomlia_hpc.registry import Model, Promotion, Registry
from pomlia_hpc.workspace import Workspace


@dataclass(frozen=True)
class Handled:
    """One request the watcher acted on: the loop run's result, or (``result`` None) the
    error that stopped it before a loop run existed."""

    request_id: int
    slot: str
    result: LoopResult | None
    error: str = ""

    @property
    def failed(self) -> bool:
        """Whether the request's loop failed (or could not start)."""
        return self.result is None or self.result.status == "failed"

    @property
    def message(self) -> str:
        """The loop run's status and message (or the error), for one line."""
        if self.result is None:
            return f"failed before a loop run: {self.error}"
        tail = f": {self.result.message}" if self.result.message else ""
        return f"loop run {self.result.run_id} {self.result.status}{tail}"


@dataclass
class WatchState:
    """What a watcher remembers across passes: the requests it reported as having no slot
    (said once, not on every pass)."""

    reported: set[int] = field(default_factory=set)


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


def _model_name(registry: Registry, model_id: int) -> str:
    with registry.session() as s:
        row = s.get(Model, model_id)
        return row.name if row is not None else str(model_id)


def _skip_reason(
    registry: Registry,
    workspace: Workspace,
    req: requests.Pending,
    slot: str | None,
    state: WatchState,
    busy: set[str],
) -> str | None:
    """Why the watcher does not act on ``req`` in this pass (None: it does); the empty string
    for a request already reported (nothing more to say)."""
    if stale := requests.retire_if_stale(registry, req.id, workspace):
        return f"obsolete, closed: {stale}"
    if slot is None:
        if req.id in state.reported:
            return ""
        state.reported.add(req.id)
        return (
            f"no deployment slot serves model {_model_name(registry, req.model_id)} (id "
            f"{req.model_id}); left open ({requests.dismiss_hint([req.id])} closes it)"
        )
    if slot in busy:
        return f"slot {slot} ran a loop in this pass already; left for the next pass"
    if req.run_id is not None and req.run_slot is not None:
        held = holder(workspace, req.run_slot, req.run_id)
        if held is not None:
            return f"{held_message(req.run_slot, req.run_id, held)}; skipped"
    return None


def consume(
    registry: Registry,
    workspace: Workspace,
    settings: LoopSettings | None = None,
    *,
    progress: Progress = print,
    run: Callable[..., LoopResult] = run_loop,
    state: WatchState | None = None,
) -> list[Handled]:
    """One pass over the pending requests (module docstring)."""
    state = state or WatchState()
    handled: list[Handled] = []
    busy: set[str] = set()
    for req in requests.pending(registry, workspace):
        slot = slot_serving(registry, req.model_id)
        skip = _skip_reason(registry, workspace, req, slot, state, busy)
        if skip is not None:
            if skip:
                progress(f"retrain request {req.id}: {skip}")
            continue
        assert slot is not None
        got = requests.take(registry, req.id, slot, workspace)
        if not got.taken:
            progress(f"retrain request {req.id}: not taken, {got.why_not}")
            continue
        if got.merged:
            ids = ", ".join(str(i) for i in got.merged)
            progress(f"retrain request {req.id}: request(s) {ids} of the same model merged into it")
        busy.add(slot)
        progress(f"retrain request {req.id} ({req.reason}): loop for slot {slot}")
        done = _run_one(registry, workspace, settings, req, slot, run, progress)
        if done is not None:
            handled.append(done)
    return handled


def _run_one(
    registry: Registry,
    workspace: Workspace,
    settings: LoopSettings | None,
    req: requests.Pending,
    slot: str,
    run: Callable[..., LoopResult],
    progress: Progress,
) -> Handled | None:
    """Run (or resume) the loop for taken request ``req`` and record how it ended; None when
    another live driver holds its loop run (left to that one)."""
    try:
        result = run(
            registry,
            workspace,
            slot,
            settings,
            trigger="monitor",
            request_id=req.id,
            report_id=req.report_id,
            progress=progress,
        )
    except LoopBusyError as exc:  # another watcher got the run first: it finishes the request
        progress(f"retrain request {req.id}: {exc}; skipped")
        return None
    except PomliaError as exc:  # before any loop run existed (e.g. no training data)
        progress(f"retrain request {req.id}: failed: {exc}")
        requests.finish(registry, req.id, FAILED, outcome=str(exc))
        return Handled(req.id, slot, None, str(exc))
    except BaseException:
        # A stop (SIGTERM, SIGINT): the run was recorded interrupted; the request stays taken
        # (the run's window is fixed) for the next watcher to resume, or a change of slot to
        # retire; open again only when no run was started.
        requests.release(registry, req.id)
        raise
    out = Handled(req.id, slot, result)
    if result.status == "failed":
        # Left failed: not retried in a tight loop; `pomlia loop run SLOT` retries it by hand.
        progress(f"retrain request {req.id}: {out.message}")
    requests.settle(registry, req.id, result)
    return out


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
    state = WatchState()
    handled = consume(registry, workspace, settings, progress=progress, state=state)
    while not once:
        time.sleep(interval_s)
        handled += consume(registry, workspace, settings, progress=progress, state=state)
    return handled
