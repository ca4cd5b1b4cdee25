"""The loop driver: run a table of stages for one loop run, each at most once, resumably.

A :class:`~pomlia_hpc.registry.LoopRun` row holds the run's parameters (``stages["params"]``,
fixed when the run is created, e.g. the harvest window's end) and, for each finished stage, what
it produced (ids, paths, and the ``seconds`` it took). The driver walks the stage table in order
and skips every stage that has an entry; a stage's entry is written in one transaction right
after the stage returns.

Killed (SIGKILL) at any point, a rerun resumes the newest unfinished run of the slot: finished
stages are skipped, and a stage that was interrupted runs again, which is safe because every
stage looks for what it would create before creating it (same content → same dataset version;
the study resumes; a model, gate decision or promotion of this loop run is found and reused).
A driver stopped by a signal (SIGTERM, Ctrl-C) records the run ``interrupted`` with the cause;
it is resumed the same way. One driver at a time holds a run (:mod:`.claim`): a second one
that finds it held by a live driver is refused before it runs or records anything.

Test hook: ``POMLIA_LOOP_KILL_AT=STAGE:before`` (or ``:after``, i.e. after the stage's work
but before its entry is written) makes the driver SIGKILL itself there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from pomlia_hpc.errors import PomliaError
from pomlia_hpc.loop.claim import holding
from pomlia_hpc.registry import LoopRun, Registry
from pomlia_hpc.registry.schema import utcnow
from pomlia_hpc.workspace import Workspace

KILL_ENV = "POMLIA_LOOP_KILL_AT"
PARAMS = "params"
#: The status of a run stopped by a signal (SIGTERM, SIGINT): resumed like a ``running`` one.
INTERRUPTED = "interrupted"
#: Loop run statuses a later run of the slot (or of its request) resumes.
RESUMABLE = ("running", INTERRUPTED)

#: A stage's result: JSON-able; ``{"stop": reason}`` ends the run early (e.g. the gate said no).
StageOutput = dict[str, Any]
Progress = Callable[[str], None]


class LoopError(PomliaError):
    """A stage cannot go on (e.g. no labelled production images); the run is marked failed."""


@dataclass
class LoopContext:
    """What a stage gets: where to work, the run's id and parameters, earlier stages' outputs."""

    registry: Registry
    workspace: Workspace
    run_id: int
    slot: str
    params: dict[str, Any]
    outputs: dict[str, StageOutput] = field(default_factory=dict)
    progress: Progress = print

    def out(self, stage: str) -> StageOutput:
        """The output of an earlier ``stage`` (a :class:`LoopError` if it has none)."""
        if stage not in self.outputs:
            raise LoopError(f"loop run {self.run_id}: stage '{stage}' has no recorded output")
        return self.outputs[stage]

    def record(self, stage: str, output: StageOutput) -> None:
        """Replace the recorded output of an earlier ``stage`` (e.g. the redeploy's new gate
        after the slot changed), so that a resume reads the new one."""
        _record(self.registry, self.run_id, stage, output)
        self.outputs[stage] = output


Stage = tuple[str, Callable[[LoopContext], StageOutput]]


@dataclass(frozen=True)
class LoopResult:
    """How a run ended: ``done`` (all stages), ``stopped`` (a stage said stop), ``failed``."""

    run_id: int
    status: str
    outputs: dict[str, StageOutput]
    skipped: list[str]
    ran: list[str]
    message: str = ""


def _hook(stage: str, when: str) -> None:
    if os.environ.get(KILL_ENV) == f"{stage}:{when}":
        os.kill(os.getpid(), signal.SIGKILL)


def open_run(
    registry: Registry,
    slot: str,
    *,
    champion_id: int | None,
    params: dict[str, Any],
    trigger: str = "manual",
    request_id: int | None = None,
    report_id: int | None = None,
    new: bool = False,
) -> tuple[int, bool]:
    """(the id of the slot's unfinished run, or of a new one; whether it is resumed)."""
    with registry.session() as s:
        if not new:
            q = select(LoopRun).where(LoopRun.slot == slot, LoopRun.status.in_(RESUMABLE))
            if request_id is not None:
                q = q.where(LoopRun.request_id == request_id)
            row = s.scalar(q.order_by(LoopRun.id.desc()).limit(1))
            if row is not None:
                return row.id, True
        now = datetime.now(UTC)
        row = LoopRun(
            slot=slot,
            champion_id=champion_id,
            trigger=trigger,
            request_id=request_id,
            report_id=report_id,
            status="running",
            stage="",
            stages={PARAMS: {**params, "created": now.isoformat()}},
        )
        s.add(row)
        s.flush()
        return row.id, False


def _set(registry: Registry, run_id: int, **fields: Any) -> None:
    with registry.session() as s:
        row = s.get(LoopRun, run_id)
        assert row is not None
        for k, v in fields.items():
            setattr(row, k, v)
        row.updated_at = utcnow()


def _record(registry: Registry, run_id: int, stage: str, output: StageOutput) -> None:
    with registry.session() as s:
        row = s.get(LoopRun, run_id)
        assert row is not None
        row.stages = {**row.stages, stage: output}  # a new dict: SQLAlchemy sees the change
        row.updated_at = utcnow()


def run_stages(
    registry: Registry,
    workspace: Workspace,
    run_id: int,
    stages: Sequence[Stage],
    *,
    progress: Progress = print,
) -> LoopResult:
    """Run the stages of loop run ``run_id`` that have no recorded output (module docstring),
    holding the run (:func:`~pomlia_hpc.loop.claim.holding`: a
    :class:`~pomlia_hpc.loop.claim.LoopBusyError` while another live driver holds it). A
    signal that stops the driver (SIGTERM, SIGINT: raised as an exception by the caller's
    handler) records the run ``interrupted`` with its cause, and goes on."""
    with registry.session() as s:
        row = s.get(LoopRun, run_id)
        if row is None:
            raise LoopError(f"loop run {run_id} does not exist")
        slot = row.slot
    with holding(workspace, slot, run_id):
        try:
            return _run_held(registry, workspace, run_id, stages, progress)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # a stop: resumable, and says why it ended
                _interrupted(registry, run_id, exc)
            raise


def _interrupted(registry: Registry, run_id: int, exc: BaseException) -> None:
    """Record run ``run_id`` as interrupted by ``exc`` (a signal's exception), if it can."""
    # Imported here: the cluster room's signal handling pulls submitit, which registry
    # queries of the loop (``loop show``) do not need.
    from pomlia_hpc.cluster.terminate import stop_cause

    cause = stop_cause(exc) or f"stopped ({type(exc).__name__})"
    # The registry may be what went away: the run then stays `running`, resumable all the same.
    with contextlib.suppress(Exception), registry.session() as s:
        row = s.get(LoopRun, run_id)
        if row is not None and row.status == "running":
            row.status = INTERRUPTED
            row.error = f"{row.stage}: {cause}" if row.stage else cause
            row.updated_at = utcnow()
            _interrupted_here.append(Interrupted(run_id, row.slot, row.stage))


@dataclass(frozen=True)
class Interrupted:
    """A loop run this process recorded interrupted, and the stage it was at."""

    run_id: int
    slot: str
    stage: str


#: What :func:`_interrupted` recorded in this process: what the CLI's one line names.
_interrupted_here: list[Interrupted] = []


def interrupted_runs() -> list[Interrupted]:
    """The loop runs this process recorded interrupted (stopped by a signal)."""
    return list(_interrupted_here)


def _run_held(
    registry: Registry,
    workspace: Workspace,
    run_id: int,
    stages: Sequence[Stage],
    progress: Progress,
) -> LoopResult:
    with registry.session() as s:
        row = s.get(LoopRun, run_id)
        assert row is not None
        recorded = dict(row.stages)
        slot, status = row.slot, row.status
    ctx = LoopContext(
        registry,
        workspace,
        run_id,
        slot,
        dict(recorded.get(PARAMS, {})),
        {k: v for k, v in recorded.items() if k != PARAMS},
        progress,
    )
    skipped: list[str] = []
    ran: list[str] = []
    if status != "running":
        _set(registry, run_id, status="running", error=None)
    for name, fn in stages:
        if name in ctx.outputs:
            skipped.append(name)
            continue
        _hook(name, "before")
        _set(registry, run_id, stage=name)
        progress(f"loop {run_id}: {name} ...")
        t0 = time.perf_counter()
        try:
            output = fn(ctx)
        except PomliaError as exc:
            _set(registry, run_id, status="failed", error=f"{name}: {exc}")
            return LoopResult(run_id, "failed", ctx.outputs, skipped, ran, f"{name}: {exc}")
        except Exception as exc:
            _set(registry, run_id, status="failed", error=f"{name}: {traceback.format_exc()}")
            return LoopResult(run_id, "failed", ctx.outputs, skipped, ran, f"{name}: {exc!r}")
        _hook(name, "after")
        output = {**output, "seconds": round(time.perf_counter() - t0, 3)}
        _record(registry, run_id, name, output)
        ctx.outputs[name] = output
        ran.append(name)
        progress(f"loop {run_id}: {name} done: {_short(output)}")
        if "stop" in output:
            _set(registry, run_id, status="stopped", error=str(output["stop"]))
            return LoopResult(run_id, "stopped", ctx.outputs, skipped, ran, str(output["stop"]))
    _set(registry, run_id, status="done", stage="")
    return LoopResult(run_id, "done", ctx.outputs, skipped, ran)


#: Characters of a stage output's value shown in a progress line (a ``reason``: all of it).
SHOWN_CHARS = 200
#: Values shown whole, however long: the gate's reason is the answer a watcher's log is read for.
WHOLE = ("reason",)


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word, with `` …`` saying so (a cut
    mid-word read as a value: "only champion righ")."""
    if len(text) <= limit:
        return text
    head = text[: limit - 2]
    cut = head.rsplit(" ", 1)[0] if " " in head else head
    return f"{cut.rstrip(' ,;:')} …"


def _short(output: StageOutput) -> str:
    """The stage's plain outputs on one line: a ``reason`` whole, any other value cut at a word
    after :data:`SHOWN_CHARS` characters with an ellipsis (a line cut as a whole lost the end
    of a long reason, e.g. a skipped stage's hint)."""
    parts = []
    for k, v in output.items():
        if isinstance(v, (dict, list)):
            continue
        text = " ".join(str(v).split())
        parts.append(f"{k}={text if k in WHOLE else _clip(text, SHOWN_CHARS)}")
    return ", ".join(parts) or "ok"
