"""Job records in the registry, and the scheduler poll that keeps them current.

The submitting process writes the rows (jobs never write to the registry themselves: SQLite on a
shared file system is fragile). State of any number of Slurm jobs is read with ONE ``sacct``
call per poll, not one per job (:mod:`pomlia_hpc.cluster.sacct`); local jobs are polled through
``/proc`` and their result files.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select

from pomlia_hpc.cluster.batch import submit_script
from pomlia_hpc.cluster.failures import (
    STATE_CAUSES,
    gave_up_cause,
    job_limits,
    log_cause,
    log_tail,
)
from pomlia_hpc.cluster.localresult import local_cancel_cause, local_result_outcome
from pomlia_hpc.cluster.sacct import SchedulerState, sacct_states, squeue_ids
from pomlia_hpc.cluster.sacct import parse_sacct as parse_sacct  # where callers found it
from pomlia_hpc.cluster.submitit_local import CONTROLLER_META
from pomlia_hpc.errors import ClusterError, SlurmUnavailableError
from pomlia_hpc.processes import pid_alive
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.vocab import FINAL_STATES, REQUEUABLE_STATES

#: Routine polls keep asking about rows in :data:`REQUEUABLE_STATES` (the vocabulary's final
#: states after which Slurm may still requeue) for this many seconds after they ended, so that
#: a later attempt replaces the failed one.
REQUEUE_WINDOW_S = 24 * 3600.0


def utcnow() -> datetime:
    """Now, aware UTC: what the grace and requeue windows are measured against (one place, so
    tests can move it)."""
    return datetime.now(UTC)


#: ``Job.meta`` key: when ``sacct`` last answered for the row (ISO 8601, UTC), so a listing
#: whose poll fails can say how old the states it shows are.
POLLED_META = "polled_at"


#: ``Job.meta`` key: how many attempts of the job ran, as the last poll that answered counted
#: them (:attr:`SchedulerState.attempts_run`).
ATTEMPTS_META = "attempts_run"

#: ``Job.meta`` key: seconds the job's attempts before its latest ran (a requeued job's Start
#: and End are its latest attempt's; :attr:`SchedulerState.earlier_s`).
EARLIER_META = "earlier_attempts_s"


def attempts_run(row: Job, st: SchedulerState | None = None) -> int:
    """How many attempts of Slurm job ``row`` ran (started), the current one included: those
    sacct gives a start time in ``st``, else the last poll's count (meta; a completed job's at
    least requeues + 1: its short last attempt may have run after that poll), else requeues + 1."""
    if st is not None and st.attempts_run is not None:
        return st.attempts_run
    known = (row.meta or {}).get(ATTEMPTS_META)
    requeues = max(int(row.requeue_count or 0), st.requeue_count if st is not None else 0)
    floor = requeues + 1 if row.state == "COMPLETED" else 1
    return max(known, floor) if isinstance(known, int) else requeues + 1


def recorded_as_of(row: Job) -> datetime:
    """When ``row``'s state was last confirmed by the scheduler (aware UTC): the last poll
    that answered for it, else its submission."""
    text = (row.meta or {}).get(POLLED_META)
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else row.submitted_at
    except ValueError:
        return row.submitted_at


def record_submission(
    registry: Registry,
    *,
    backend: str,
    scheduler_ids: Sequence[str],
    name: str,
    folder: str,
    array_job_id: str | None = None,
    meta: dict[str, Any] | None = None,
    started: bool = False,
    row_meta: Sequence[dict[str, Any]] | None = None,
) -> list[int]:
    """Insert one row per submitted job (or array task); returns their registry ids.
    ``started``: the jobs' processes start now (a local job is launched at its submission),
    recorded as their ``started_at`` (UTC). ``row_meta``: one more dict per row, merged into
    ``meta`` (what each array task works on, for a later command to find it)."""
    extra = list(row_meta) if row_meta is not None else [{} for _ in scheduler_ids]
    if len(extra) != len(scheduler_ids):
        raise ValueError(f"row_meta: {len(extra)} entries for {len(scheduler_ids)} jobs")
    now = datetime.now(UTC)
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
                submitted_at=now,
                started_at=now if started else None,
                meta={**(meta or {}), **extra[i]},
            )
            for i, sid in enumerate(scheduler_ids)
        ]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def sbatch_script(
    registry: Registry, script: Path, *, name: str, meta: dict[str, Any] | None = None
) -> int:
    """Submit the batch script ``script`` as job ``name`` (sbatch runs in the script's folder)
    and record the job; returns its registry id. For scripts a user could also submit by hand
    (a deployment's ``serve.sbatch``); Python callables go through the executor."""
    scheduler_id = submit_script(script, name=name, singleton=False, cwd=script.parent)
    (job_id,) = record_submission(
        registry,
        backend="slurm",
        scheduler_ids=[scheduler_id],
        name=name,
        folder=str(script.parent),
        meta=meta,
    )
    return job_id


def update_job(registry: Registry, job_id: int, **fields: Any) -> None:
    """Set ``fields`` on one job row."""
    with registry.session() as s:
        row = s.get(Job, job_id)
        if row is None:
            return
        for key, value in fields.items():
            setattr(row, key, value)


#: The key of a job row's meta under which a driver job (a pipeline's stage job) records the
#: one-line cause of its own failure: sacct knows only the exit code ("FAILED (exit code 1:0)"),
#: and no other process waits on the job to read its traceback.
OWN_CAUSE_META = "own_cause"


def own_job_id(registry: Registry) -> int | None:
    """The registry id of the Slurm job this process runs in (``SLURM_JOB_ID``), or None
    outside Slurm or when no row records it."""
    sched = os.environ.get("SLURM_JOB_ID")
    if not sched:
        return None
    with registry.session() as s:
        q = select(Job.id).where(Job.backend == "slurm", Job.scheduler_id == sched)
        return s.scalars(q.order_by(Job.id.desc()).limit(1)).first()


def record_own_failure(registry: Registry, job_id: int, cause: str, traceback: str) -> None:
    """Note on the row of job ``job_id``, the job that runs this process, why it is failing:
    its one-line ``cause`` (at most 500 characters) becomes the row's exit cause once Slurm
    reports it FAILED (:func:`merge_scheduler_state`), and ``traceback`` its traceback."""
    with registry.session() as s:
        row = s.get(Job, job_id)
        if row is None:
            return
        # A new dict: the JSON column notices an assignment, not an edit in place.
        row.meta = {
            **(row.meta or {}),
            OWN_CAUSE_META: (cause.strip().splitlines() or [""])[0][:500],
        }
        row.traceback = traceback


#: Why a row was marked cancelled by ``jobs cancel --force`` (its ``exit_cause``).
FORCED_CAUSE = "marked cancelled with --force; the process itself was not signalled"

#: Why a row was marked cancelled by ``--force`` while ``sacct`` could not answer and
#: ``squeue`` no longer listed the job (its ``exit_cause``): it had ended, how is unknown.
GONE_FORCED_CAUSE = (
    "marked cancelled with --force: it had already ended (squeue no longer listed it) but "
    "sacct could not say how; nothing was signalled"
)

#: The causes of rows marked CANCELLED by ``jobs cancel --force``: marks that say nothing was
#: signalled, which Slurm's own cause replaces when it reports CANCELLED too
#: (:func:`merge_scheduler_state`). Rows marked so before :data:`UNCONFIRMED_META` existed
#: carry only this cause, which :func:`cancel_unconfirmed` counts as the marker.
FORCED_CAUSES = (FORCED_CAUSE, GONE_FORCED_CAUSE)

#: ``Job.meta`` key of a Slurm row that pomlia marked CANCELLED itself (a ``scancel`` it
#: sent, ``jobs cancel --force``, a stopping driver) while Slurm has not confirmed how the
#: job ended: when it was marked (ISO 8601, UTC). Routine polls keep asking about such a row
#: for :data:`REQUEUE_WINDOW_S` seconds after the mark, and the first final state Slurm
#: reports replaces the mark and drops the key (:func:`refresh_slurm_jobs`): a job that had in
#: fact COMPLETED or FAILED before the ``scancel`` (which exits 0 for it) is recorded so.
UNCONFIRMED_META = "cancel_unconfirmed"


def cancel_unconfirmed(row: Job, now: datetime | None = None) -> bool:
    """Whether ``row`` is a Slurm row CANCELLED on pomlia's word only (:data:`UNCONFIRMED_META`,
    or a :data:`FORCED_CAUSES` cause) that routine polls still ask Slurm about (marked less
    than :data:`REQUEUE_WINDOW_S` seconds before ``now``, default :func:`utcnow`)."""
    if row.backend != "slurm" or row.state != "CANCELLED":
        return False
    if not _marked_unconfirmed(row.meta, row.exit_cause):
        return False
    since = (now or utcnow()) - timedelta(seconds=REQUEUE_WINDOW_S)
    return row.ended_at is None or row.ended_at >= since


def polled_still(row: Job, now: datetime | None = None) -> bool:
    """Whether routine polls still ask Slurm about ``row``, so that its recorded state may be
    out of date after a poll that failed: an unfinished Slurm row, one that ended in a
    requeuable state (NODE_FAIL, PREEMPTED: Slurm may run it again) less than
    :data:`REQUEUE_WINDOW_S` seconds before ``now`` (default :func:`utcnow`), and one CANCELLED
    on pomlia's word only (:func:`cancel_unconfirmed`)."""
    if row.backend != "slurm":
        return False
    now = now or utcnow()
    if row.state in REQUEUABLE_STATES:
        since = now - timedelta(seconds=REQUEUE_WINDOW_S)
        return row.ended_at is None or row.ended_at >= since
    return row.state not in FINAL_STATES or cancel_unconfirmed(row, now)


def _marked_unconfirmed(meta: dict[str, Any] | None, cause: str | None) -> bool:
    """Whether a CANCELLED row's ``meta`` and ``cause`` say the cancel is pomlia's word only."""
    return UNCONFIRMED_META in (meta or {}) or cause in FORCED_CAUSES


def _set_cancelled(row: Job, cause: str, now: datetime) -> None:
    """Record ``row`` CANCELLED by ``cause`` at ``now``; a Slurm row as not yet confirmed."""
    row.state, row.exit_cause, row.ended_at = "CANCELLED", cause, now
    if row.backend == "slurm":  # a new dict: the JSON column notices an assignment only
        row.meta = {**(row.meta or {}), UNCONFIRMED_META: now.isoformat(timespec="seconds")}


def mark_cancelled(registry: Registry, job_id: int, cause: str = "cancelled by user") -> bool:
    """Record that job row ``job_id`` was cancelled (``cause``: by whom or what), unless it
    had already ended. A Slurm row is marked :data:`UNCONFIRMED_META` until a poll records
    the final state Slurm reports.

    Returns whether the row was changed."""
    with registry.session() as s:
        row = s.get(Job, job_id)
        if row is None or row.state in FINAL_STATES:
            return False
        _set_cancelled(row, cause, datetime.now(UTC))
        return True


def mark_all_cancelled(
    registry: Registry, job_ids: Iterable[int], cause: str = "cancelled by user"
) -> int:
    """:func:`mark_cancelled` for several rows in one transaction (a driver being killed has
    seconds left); returns how many rows were changed."""
    now, n = datetime.now(UTC), 0
    with registry.session() as s:
        for job_id in job_ids:
            row = s.get(Job, job_id)
            if row is not None and row.state not in FINAL_STATES:
                _set_cancelled(row, cause, now)
                n += 1
    return n


def merge_scheduler_state(row: Job, st: SchedulerState) -> dict[str, Any]:
    """The fields of ``row`` that change when the scheduler reports ``st`` (empty: none).

    A final row does not go back to an unfinished state unless Slurm started a new attempt
    (more requeues) or the row ended in a requeuable state: an answer without either was read
    before the row's end (a cancellation, say) was recorded. Nor does it take the end of an
    earlier attempt than it has seen (fewer requeues), unless it is pomlia's unconfirmed mark.
    A row pomlia marked CANCELLED takes the final state Slurm reports, with Slurm's end and
    cause; when Slurm says CANCELLED too, the mark's cause (who cancelled) stays, unless it is
    a ``jobs cancel --force`` one (:data:`FORCED_CAUSES`: nothing was signalled, so someone
    else cancelled it).
    """
    final = st.state in FINAL_STATES
    forced = row.exit_cause in FORCED_CAUSES  # a mark of ours, not Slurm's word: Slurm's wins
    if (
        row.state in FINAL_STATES
        and not final
        and row.state not in REQUEUABLE_STATES
        and st.requeue_count <= row.requeue_count
    ):
        return {}
    if (
        row.state in FINAL_STATES
        and final
        and st.requeue_count < row.requeue_count
        and not _marked_unconfirmed(row.meta, row.exit_cause)
    ):
        # An earlier attempt's end: sacct's last line of a job requeued after a node failure
        # and cancelled before its next attempt started, once the controller forgot it.
        return {}
    started = st.started_at or row.started_at
    if st.started_at is None and st.requeue_count > 0:
        # Its latest attempt has not run (requeued, then waiting or cancelled): an earlier
        # attempt's Start is not its own (what those ran is EARLIER_META), nor its cost's.
        started = None
    new: dict[str, Any] = {
        "state": st.state,
        "started_at": started,
        "ended_at": st.ended_at if final else None,
        "requeue_count": max(row.requeue_count, st.requeue_count),
    }
    if not final or st.state == "COMPLETED":
        new["exit_cause"] = None  # a failed earlier attempt no longer explains anything
    elif forced or not row.exit_cause or row.state != st.state:
        # A cancelled, timed-out or OOM-killed job's exit code (0:0) says nothing: its state does.
        said_by_state = STATE_CAUSES.get(st.state)
        new["exit_cause"] = said_by_state or f"{st.state} (exit code {st.exit_code})"
        if st.state == "FAILED" and row.backend == "slurm":
            # What the job's own log says (submitit gave up requeueing it, the checkpoint
            # signal killed it) explains more than an exit code; nobody else may record it
            # when the job's driver is gone.
            tail = log_tail(row.folder, row.scheduler_id)
            said = log_cause(
                tail,
                exit_code=st.exit_code,
                attempts=attempts_run(row, st),
                limits=job_limits(row.meta),
            )
            own = (row.meta or {}).get(OWN_CAUSE_META)  # the job's own word: record_own_failure
            # then its log's last word (no process may collect its traceback), else the code
            new["exit_cause"] = said or own or gave_up_cause(tail) or new["exit_cause"]
    return {k: v for k, v in new.items() if getattr(row, k) != v}


def refresh_slurm_jobs(
    registry: Registry,
    job_ids: Sequence[int] | None = None,
    *,
    lost: bool = False,
    timeout_s: float = 60.0,
    final_only: bool = False,
) -> int:
    """Poll Slurm once for every unfinished Slurm job row (or those in ``job_ids``).

    Unfinished includes rows that ended in a requeuable state less than
    :data:`REQUEUE_WINDOW_S` seconds ago, and rows pomlia marked CANCELLED that Slurm has not
    confirmed (:func:`cancel_unconfirmed`) as long ago at most: Slurm's final state replaces
    the mark. Returns how many rows changed. No transaction is open while ``sacct`` runs (up
    to a minute), so other registry users are never blocked.
    With ``lost``, an unfinished row that ``sacct`` does not know and ``squeue`` does not list
    either is recorded ``LOST`` (one ``squeue`` call for those; what `pomlia jobs` shows).
    ``timeout_s``: how long ``sacct`` may take, and ``squeue`` after it with ``lost``: both
    keep to that one limit (then :class:`ClusterError`). ``final_only``: answers in an
    unfinished state are ignored (read before a ``scancel`` took effect).
    A NODE_FAIL or PREEMPTED that the controller could not be asked about
    (:attr:`SchedulerState.may_requeue`: Slurm may run the job again) changes nothing in its
    row; the other rows are recorded, then a :class:`SlurmUnavailableError` says so.
    """
    targets = _slurm_targets(registry, job_ids)
    if not targets:
        return 0
    deadline = time.monotonic() + timeout_s
    states = sacct_states((sid for _, sid in targets), timeout_s)
    # To the microsecond: a listing tells the rows this poll confirmed from earlier ones
    changed, polled = 0, datetime.now(UTC).isoformat(timespec="microseconds")
    with registry.session() as s:
        for rid, sid in targets:
            st = states.get(sid)
            row = s.get(Job, rid) if st is not None else None
            if row is None or st is None or (final_only and st.state not in FINAL_STATES):
                continue
            if st.may_requeue:
                continue  # not ended, perhaps: as a poll that did not answer for this row
            counted = {ATTEMPTS_META: st.attempts_run} if st.attempts_run is not None else {}
            earlier = {EARLIER_META: round(st.earlier_s, 1)} if st.earlier_s else {}
            row.meta = {**(row.meta or {}), POLLED_META: polled, **counted, **earlier}
            new = merge_scheduler_state(row, st)
            if st.state in FINAL_STATES or "state" in new:  # Slurm's word, no longer ours
                row.meta = {k: v for k, v in row.meta.items() if k != UNCONFIRMED_META}
            if new:
                changed += 1
                for k, v in new.items():
                    setattr(row, k, v)
    missing = [(rid, sid) for rid, sid in targets if sid not in states]
    if lost and missing:
        queued = _squeue_within([sid for _, sid in missing], deadline, timeout_s)
        changed += len(_record_lost(registry, [(r, i) for r, i in missing if i not in queued]))
    unsure = sorted({sid for _, sid in targets if sid in states and states[sid].may_requeue})
    if unsure:
        raise SlurmUnavailableError(
            f"squeue did not answer in time whether Slurm requeued job(s) {', '.join(unsure)} "
            "(sacct: ended by a node failure or a preemption); their rows were left as they "
            "were"
        )
    return changed


def _slurm_targets(registry: Registry, job_ids: Sequence[int] | None) -> list[tuple[int, str]]:
    """(registry id, Slurm id) of the rows :func:`refresh_slurm_jobs` asks about: those of
    ``job_ids``, else the unfinished Slurm rows, those that ended in a requeuable state and
    those CANCELLED on pomlia's word only (:func:`cancel_unconfirmed`), the last two less than
    :data:`REQUEUE_WINDOW_S` seconds ago."""
    with registry.session() as s:
        q = select(Job.id, Job.scheduler_id, Job.state, Job.meta, Job.exit_cause)
        q = q.where(Job.backend == "slurm")
        if job_ids is not None:
            q = q.where(Job.id.in_(job_ids))
        else:
            since = utcnow() - timedelta(seconds=REQUEUE_WINDOW_S)
            recent = or_(Job.ended_at.is_(None), Job.ended_at >= since)
            requeuable = and_(Job.state.in_(REQUEUABLE_STATES), recent)
            cancelled = and_(Job.state == "CANCELLED", recent)  # the marked ones: below
            q = q.where(or_(Job.state.not_in(FINAL_STATES), requeuable, cancelled))
        return [
            (rid, sid)
            for rid, sid, state, meta, cause in s.execute(q)
            if job_ids is not None or state != "CANCELLED" or _marked_unconfirmed(meta, cause)
        ]


def _squeue_within(job_ids: Sequence[str], deadline: float, timeout_s: float) -> set[str]:
    """:func:`squeue_ids` within what is left until ``deadline`` (a poll's one limit of
    ``timeout_s`` seconds, which its ``sacct`` has used part of), in tenths of a second as its
    error would say them; a :class:`~pomlia_hpc.errors.SlurmUnavailableError` when not even
    one is left."""
    left_s = math.floor((deadline - time.monotonic()) * 10) / 10
    if left_s <= 0:
        raise SlurmUnavailableError(
            f"squeue: not asked whether {len(job_ids)} job(s) sacct does not know are still "
            f"queued: sacct took the whole {timeout_s:g} s"
        )
    return squeue_ids(job_ids, left_s)


def mark_lost(registry: Registry, job_ids: Sequence[int]) -> list[int]:
    """Record as ``LOST`` (ended) the unfinished Slurm rows among ``job_ids`` that neither
    ``sacct`` nor ``squeue`` knows (e.g. purged from accounting): without this they counted
    as queued forever. Both are asked because a job just submitted may be missing from
    ``sacct`` for a moment, never from ``squeue``. Returns the rows marked; a
    :class:`ClusterError` when either command cannot answer (then nothing is marked)."""
    with registry.session() as s:
        q = select(Job.id, Job.scheduler_id).where(
            Job.backend == "slurm", Job.id.in_(job_ids), Job.state.not_in(FINAL_STATES)
        )
        targets = [(rid, sid) for rid, sid in s.execute(q)]
    if not targets:
        return []
    known = sacct_states(sid for _, sid in targets)
    missing = [(rid, sid) for rid, sid in targets if sid not in known]
    if not missing:
        return []
    queued = squeue_ids([sid for _, sid in missing])
    return _record_lost(registry, [(rid, sid) for rid, sid in missing if sid not in queued])


def _record_lost(registry: Registry, lost: Sequence[tuple[int, str]]) -> list[int]:
    """Record the unfinished rows of ``lost`` (registry id, Slurm id) as ``LOST``; returns
    the ids of the rows changed."""
    now, marked = datetime.now(UTC), []
    with registry.session() as s:
        for rid, sid in lost:
            row = s.get(Job, rid)
            if row is not None and row.state not in FINAL_STATES:
                row.state, row.ended_at = "LOST", now
                row.exit_cause = (
                    f"Slurm no longer knows job {sid} (neither squeue nor sacct lists it): "
                    "counted as ended, its outcome unknown"
                )
                marked.append(rid)
    return marked


def this_host() -> str:
    """The name local jobs record as their host (a pid means nothing on another machine)."""
    return socket.gethostname()


def is_local_job_process(pid: int, folder: str | None) -> bool:
    """Whether ``pid`` runs submitit's local job controller (for the job ``folder``, if given).

    Guards against signalling, or taking for a running job, an unrelated process that reuses
    the pid of a job that has ended."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return "submitit" in cmdline and (folder is None or folder in cmdline)


def refresh_local_jobs(registry: Registry, job_ids: Sequence[int] | None = None) -> int:
    """Bring unfinished local job rows of this host up to date (RUNNING, COMPLETED, FAILED;
    CANCELLED with its cause when the job's controller was interrupted).

    Only the submitting process's ``result()`` records the traceback; this poll tells a
    ``pomlia jobs list`` in another process whether the job still runs. Returns how many rows
    changed."""
    host = this_host()
    with registry.session() as s:
        q = select(Job).where(Job.backend == "local", Job.state.not_in(FINAL_STATES))
        if job_ids is not None:
            q = q.where(Job.id.in_(job_ids))
        rows = [r for r in s.scalars(q) if (r.meta or {}).get("host") == host]
        changed = 0
        for row in rows:
            new: dict[str, Any]
            if not row.scheduler_id.isdigit():
                continue
            if is_local_job_process(int(row.scheduler_id), row.folder):
                new = {"state": "RUNNING"}
            else:
                outcome = local_result_outcome(row.folder, row.scheduler_id)
                started = (row.meta or {}).get(CONTROLLER_META)
                cancelled = local_cancel_cause(row.folder, row.scheduler_id, started)
                if outcome == "success":
                    new = {"state": "COMPLETED", "exit_cause": None}
                elif cancelled is not None:
                    # Stopped by a signal: an error it raised on the way out is not the cause.
                    new = {"state": "CANCELLED", "exit_cause": cancelled}
                else:
                    cause = "error raised" if outcome == "error" else "ended without a result"
                    new = {"state": "FAILED", "exit_cause": f"FAILED ({cause})"}
                new["ended_at"] = datetime.now(UTC)
            if row.state != new["state"]:
                changed += 1
                for k, v in new.items():
                    setattr(row, k, v)
        return changed


def refresh_jobs(
    registry: Registry,
    job_ids: Sequence[int] | None = None,
    *,
    lost: bool = False,
    timeout_s: float = 60.0,
) -> int:
    """:func:`refresh_slurm_jobs` (with its ``lost`` and ``timeout_s``) and
    :func:`refresh_local_jobs`; returns rows changed."""
    slurm = refresh_slurm_jobs(registry, job_ids, lost=lost, timeout_s=timeout_s)
    return slurm + refresh_local_jobs(registry, job_ids)


def refresh_jobs_within(
    registry: Registry,
    job_ids: Sequence[int] | None = None,
    *,
    timeout_s: float,
    lost: bool = False,
) -> str | None:
    """:func:`refresh_jobs` for a command that must not hang on a busy Slurm: ``sacct`` (and
    ``squeue`` after it, with ``lost``) may take at most ``timeout_s`` seconds together, and
    the local jobs are polled either way. Returns None when the Slurm rows' states are
    current, else why they are not, in words ("sacct did not answer within 15 s"): those rows
    then keep their recorded states, :func:`recorded_as_of` says how old."""
    problem = None
    try:
        refresh_slurm_jobs(registry, job_ids, lost=lost, timeout_s=timeout_s)
    except ClusterError as exc:
        problem = str(exc)
    refresh_local_jobs(registry, job_ids)  # this host's jobs: no scheduler to wait for
    return problem
