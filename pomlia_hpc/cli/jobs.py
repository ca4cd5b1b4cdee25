"""``pomlia jobs list/show/cancel``: the job log in the registry."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import func, select

from pomlia_hpc.cli.app import STATE, app, console, err_console
from pomlia_hpc.cli.core import jobs_table
from pomlia_hpc.cli.jsonout import print_json
from pomlia_hpc.cli.listing import JsonFlag, print_rows
from pomlia_hpc.cli.polling import poll_start, refresh_for_listing, say_unsure, unsure_states
from pomlia_hpc.cli.tables import when
from pomlia_hpc.cli.usage_errors import registry_id
from pomlia_hpc.cluster.cancel import FORCED_CAUSE, GONE_FORCED_CAUSE, cancel_job_row
from pomlia_hpc.cluster.failures import log_files
from pomlia_hpc.errors import ClusterError, InputError, NotFoundError
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.registry.lookup import check_limit
from pomlia_hpc.vocab import FINAL_STATES, JobState

#: The least time (s) worth giving the ``squeue`` for a pending job's reason.
MIN_SQUEUE_S = 0.1

jobs_app = typer.Typer(
    help="List, inspect and cancel jobs recorded in the registry.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")


def _get(job_id: int) -> Job:
    with STATE.registry().session() as s:
        row = s.get(Job, job_id)
        if row is None:
            raise NotFoundError(f"job {job_id} is not in the registry (see `pomlia jobs list`)")
        return row


@jobs_app.command("list")
def list_jobs(
    limit: Annotated[int, typer.Option(help="How many jobs to show, newest first.")] = 50,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List recorded jobs, newest first (Slurm states refreshed with one sacct call).

    sacct, and squeue after it for jobs sacct does not know, are waited for at most
    cluster.list_sacct_timeout_s seconds in all (15; <home>/pomlia.yaml); then the states are
    the last recorded ones, said so, and unfinished ones marked ? (so are a CANCELLED that
    Slurm has not confirmed yet, and a NODE_FAIL or PREEMPTED of the last day, which Slurm
    may have requeued since).

    A console too narrow for the full table (80 columns) gets a narrow one: times as MM-DD
    HH:MM, the exit cause under the name, the end time under the submission time, requeues
    under the state, and no backend column (`pomlia jobs show ID` has it).

    --json keys: id, name, backend, scheduler_id, state, requeue_count, submitted_at,
    ended_at, exit_cause, folder (where its logs are: `pomlia jobs show ID` names them)."""
    check_limit(limit)
    reg = STATE.registry()
    if state is not None:
        _check_state(reg, state)
    asked = poll_start()
    problem = refresh_for_listing(reg)
    with reg.session() as s:
        q = select(Job).order_by(Job.id.desc()).limit(limit)
        if state:
            q = q.where(Job.state == state.upper())
        rows = list(s.scalars(q))
    if problem:
        # stderr with --json: stdout stays one JSON document.
        say_unsure(err_console if as_json else console, problem, rows, asked)
    if as_json:
        keys = (
            "id name backend scheduler_id state requeue_count submitted_at ended_at exit_cause "
            "folder"
        )
        print_rows([{k: getattr(r, k) for k in keys.split()} for r in rows])
        return
    unsure = [r.id for r in unsure_states(rows, asked)] if problem else []
    console.print(jobs_table(rows, f"jobs ({len(rows)})", unsure))


def _check_state(reg: Registry, state: str) -> None:
    """Refuse a ``--state`` no job can be in. Slurm has states beyond the vocabulary (a
    SUSPENDED or REQUEUED job is recorded as such), so the states recorded count too."""
    known = [s.value for s in JobState]
    if state.upper() in known:
        return
    with reg.session() as s:
        recorded = set(s.scalars(select(Job.state).distinct()))
    known += sorted(recorded - set(known))
    if state.upper() not in known:
        raise InputError(
            f"--state '{state}' is not a job state: expected one of {', '.join(known)}"
        )


#: The fields of ``jobs show`` (and its --json keys, with logs and traceback), in order.
SHOW_KEYS = [
    *("id", "name", "backend", "scheduler_id", "array_job_id", "array_index", "state"),
    *("submitted_at", "started_at", "ended_at", "requeue_count", "exit_cause", "folder"),
]


@jobs_app.command("show")
def show(
    job_id: Annotated[int, typer.Argument(help="Registry id of the job.", callback=registry_id)],
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the job as one JSON object (stable keys; see --help)."),
    ] = False,
) -> None:
    """Show one job in full: its log files, and the traceback of a failure (a state sacct
    and squeue could not confirm within cluster.list_sacct_timeout_s seconds in all is
    marked ?).

    Logs: a job's stdout and stderr are <folder>/<scheduler_id>_0_log.out and .err (an array
    task's scheduler_id is <array>_<task>), a batch script's (`monitor schedule`)
    <folder>/slurm-<scheduler_id>.out; those that exist are listed, and for an array task the
    pattern of its array's logs with the count of tasks.

    --json: one object, keys id, name, backend, scheduler_id, array_job_id, array_index,
    state, submitted_at, started_at, ended_at, requeue_count, exit_cause, folder, logs (the
    paths listed), array_logs (the pattern, or null), traceback, pending_reason (squeue's
    reason why a queued Slurm job waits, e.g. JobHeldUser or Resources; else null)."""
    _get(job_id)
    started, asked = time.monotonic(), poll_start()
    problem = refresh_for_listing(STATE.registry(), [job_id])
    row = _get(job_id)
    if problem:
        say_unsure(err_console if as_json else console, problem, [row], asked)
    logs = [str(p) for p in log_files(row.folder, row.scheduler_id)]
    array_logs = _array_logs(row)
    # squeue gets what sacct left of the listing's one limit; a Slurm too busy for sacct is
    # too busy for squeue: the reason is left out then (it got another whole minute)
    left_s = STATE.workspace.list_sacct_timeout_s - (time.monotonic() - started)
    ask_squeue = _pends_on_slurm(row) and problem is None and left_s >= MIN_SQUEUE_S
    pending = _pending_reason(row.scheduler_id, left_s) if ask_squeue else None
    if as_json:
        fields = {k: getattr(row, k) for k in SHOW_KEYS}
        fields |= {"logs": logs, "array_logs": array_logs, "traceback": row.traceback}
        # one object, as every `show` prints (`data show`, `monitor show`), not a list of one
        print_json(fields | {"pending_reason": pending})
        return
    table = Table(show_header=False)
    for key in SHOW_KEYS:
        value = getattr(row, key)
        if key == "state" and problem and unsure_states([row], asked):
            value = f"{value}?"  # as last recorded: the scheduler did not answer
        # Times as `jobs list` shows them (to the second): str() gave microseconds and +00:00.
        shown = when(value, seconds=True) if isinstance(value, datetime) else value
        table.add_row(key, "-" if shown is None else str(shown))
        if key == "state" and _pends_on_slurm(row):
            table.add_row("pending_reason", _pending_words(pending))
    # Where the job's own words are: the name rule was documented for AutoML only.
    table.add_row("logs", "\n".join(logs) or _no_logs(row))
    if array_logs is not None:
        table.add_row("array_logs", array_logs)
    console.print(table)
    if row.traceback:
        console.print("[bold]traceback[/]")
        console.print(row.traceback, highlight=False, markup=False)


def _no_logs(row: Job) -> str:
    """What ``jobs show`` says of a job without log files: "none written yet" only while it
    has not started (a running or ended job's were deleted, or its folder moved)."""
    if row.started_at is None and row.state not in FINAL_STATES:
        return "- (none written yet)"
    return f"- (none in {row.folder}: deleted, or never written)"


def _array_logs(row: Job) -> str | None:
    """For an array task: the pattern of its array's log files and how many tasks the array
    recorded (``<folder>/61_<task>_0_log.out, .err (2 tasks)``); None for another job."""
    if not row.array_job_id:
        return None
    with STATE.registry().session() as s:
        q = select(func.count()).where(Job.array_job_id == row.array_job_id)
        n = s.scalar(q.where(Job.backend == row.backend)) or 0
    pattern = Path(row.folder) / f"{row.array_job_id}_<task>_0_log.out"
    return f"{pattern}, .err ({n} task{'s' if n != 1 else ''})"


def _pends_on_slurm(row: Job) -> bool:
    return row.backend == "slurm" and row.state == "PENDING"


def _pending_reason(scheduler_id: str, timeout_s: float) -> str | None:
    """Slurm's reason why job ``scheduler_id`` still pends, as squeue gives it (None if
    squeue cannot say within ``timeout_s`` seconds)."""
    from pomlia_hpc.cluster.refusal import pending_reasons

    try:
        reason = pending_reasons([scheduler_id], timeout_s).get(scheduler_id)
    except ClusterError:
        return None
    return reason if reason not in (None, "", "None") else None  # "None": not judged yet


def _pending_words(reason: str | None) -> str:
    """A pending reason as the table shows it (``-`` when unknown)."""
    from pomlia_hpc.cluster.refusal import never_starts

    if reason and never_starts(reason):
        return f"{reason} (Slurm will never start it: lower its request)"
    return reason or "-"


@jobs_app.command("cancel")
def cancel(
    job_id: Annotated[int, typer.Argument(help="Registry id of the job.", callback=registry_id)],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="A job that cannot be signalled from here (a local job of another host, one "
            "scancel refuses) is marked CANCELLED in the registry; its process is not touched. "
            "So is a Slurm job that squeue no longer lists while sacct does not answer; one "
            "neither answers for is scancel-ed. Slurm's final state replaces such a mark once "
            "sacct answers.",
        ),
    ] = False,
) -> None:
    """Cancel a job (scancel on Slurm, SIGINT to a local process). A Slurm job that neither
    squeue nor sacct knows any more is recorded LOST (ended).

    When sacct does not answer (slurmdbd down) but squeue does, a job squeue lists is
    cancelled all the same, with a warning that sacct could not confirm its state; one it
    does not list is no longer queued or running: nothing is cancelled (exit 69), or with
    --force its row is marked CANCELLED (nothing signalled)."""
    row = _get(job_id)
    outcome = cancel_job_row(STATE.registry(), job_id, force=force)
    ended = outcome.ended
    if ended == JobState.LOST:
        console.print(
            f"job {job_id} ({row.backend} {row.scheduler_id}) is not known to Slurm any more "
            "(neither squeue nor sacct lists it): recorded LOST, nothing was cancelled"
        )
        return
    if ended is not None:
        console.print(f"job {job_id} already ended ({ended})")
        return
    after = _get(job_id)
    if after.exit_cause == GONE_FORCED_CAUSE:
        err_console.print(
            f"[yellow]warning:[/] {escape(outcome.unconfirmed or 'sacct did not answer')}; "
            f"job {job_id} ({row.backend} {row.scheduler_id}) had already ended (squeue no "
            "longer lists it): marked CANCELLED in the registry with --force, nothing was "
            "signalled; how it ended is unknown",
            highlight=False,
        )
        return
    if after.exit_cause == FORCED_CAUSE:
        console.print(
            f"[yellow]warning:[/] job {job_id} ({row.backend} {row.scheduler_id}) could not be "
            "signalled from here; it is marked CANCELLED in the registry, but its process "
            "(if it still runs) was not touched"
        )
        return
    console.print(f"job {job_id} ({row.backend} {row.scheduler_id}) cancelled")
    if outcome.unconfirmed is not None and not outcome.listed:
        err_console.print(
            f"[yellow]warning:[/] {escape(outcome.unconfirmed)}; job {job_id} was scancel-ed "
            "with --force without Slurm saying whether it still ran: recorded CANCELLED until "
            "sacct answers, then as Slurm says it ended",
            highlight=False,
        )
    elif outcome.unconfirmed is not None:
        err_console.print(
            f"[yellow]warning:[/] {escape(outcome.unconfirmed)}; job {job_id} was cancelled "
            "on squeue's word that it was still queued or running",
            highlight=False,
        )
