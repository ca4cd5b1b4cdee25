"""``pomlia init`` and ``pomlia status``."""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy import select

from pomlia_hpc.cli.app import STATE, app, console
from pomlia_hpc.cli.polling import poll_start, refresh_for_listing, say_unsure, unsure_states
from pomlia_hpc.cli.tables import ListTable, clip, shown, stack, when
from pomlia_hpc.config import load_cluster_profile
from pomlia_hpc.registry import Job
from pomlia_hpc.registry.lookup import check_limit


@app.command()
def init() -> None:
    """Create a workspace: the directory layout and the registry (idempotent)."""
    ws = STATE.workspace
    reg = STATE.prepared(create=True)  # a refused registry leaves no skeleton behind
    console.print(f"workspace [bold]{ws.home}[/] ready; registry {reg.display_url()}")


def jobs_table(rows: list[Job], title: str, unsure: Collection[int] = ()) -> Table:
    """Render job rows as a rich table (shared by ``status`` and ``jobs list``), with its
    narrow form (said in their --help). ``unsure``: the ids of rows whose state may be out of
    date (the scheduler did not answer), shown with a ``?``."""
    table = ListTable(title=title)
    whole = {"id", "scheduler id", "state", "submitted", "ended"}  # never wrapped
    for col in (
        "id",
        "name",
        "backend",
        "scheduler id",
        "state",
        "requeues",
        "submitted",
        "ended",
        "exit cause",
    ):
        table.add_column(col, overflow="fold", no_wrap=col in whole)
    narrow = table.narrow = Table(title=title)
    narrow.add_column("id", no_wrap=True)
    narrow.add_column("name\nexit cause", overflow="fold")
    narrow.add_column("scheduler id", overflow="fold")
    narrow.add_column("state", overflow="fold")
    narrow.add_column("submitted\nended", no_wrap=True)
    for r in rows:
        cause = clip(r.exit_cause or "", 200)  # whole in `jobs show`
        state = f"{r.state}?" if r.id in unsure else r.state
        table.add_row(
            str(r.id),
            r.name,
            r.backend,
            r.scheduler_id,
            state,
            str(r.requeue_count),
            when(r.submitted_at, seconds=True),
            shown(f"{r.ended_at:%H:%M:%S}" if r.ended_at else None),
            shown(cause),
        )
        requeues = f"{r.requeue_count} requeue{'s' if r.requeue_count != 1 else ''}"
        ended = r.ended_at and when(r.ended_at, narrow=True)
        if ended and r.submitted_at and ended[:5] == when(r.submitted_at, narrow=True)[:5]:
            ended = ended[6:]  # the same day: the time alone, as the full table shows it
        narrow.add_row(
            str(r.id),
            stack(r.name, cause),
            r.scheduler_id,
            stack(state, requeues if r.requeue_count else ""),
            stack(when(r.submitted_at, narrow=True), ended or ""),
        )
    return table


@app.command()
def status(
    limit: Annotated[int, typer.Option(help="How many recent jobs to show.")] = 10,
) -> None:
    """Show the workspace, registry URL and schema revision, cluster backend and the most
    recent jobs.

    A console too narrow for the jobs table (80 columns) gets the narrow one of `jobs list`.
    Slurm states as in `jobs list` (sacct and squeue waited for at most
    cluster.list_sacct_timeout_s in all)."""
    check_limit(limit)
    ws = STATE.workspace
    profile = load_cluster_profile(ws.cluster_profile)
    console.print(f"workspace : {ws.home}{'' if ws.exists else '  (not initialised: pomlia init)'}")
    reg = STATE.registry()
    console.print(f"registry  : {reg.display_url()}")
    console.print(f"schema    : revision {reg.schema_revision()}", highlight=False)
    where = f" partition={profile.partition}" if profile.partition else ""
    console.print(f"cluster   : profile '{ws.cluster_profile}' (backend {profile.backend}{where})")
    asked = poll_start()
    problem = refresh_for_listing(reg)
    with reg.session() as s:
        rows = list(s.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))
    unsure = [r.id for r in unsure_states(rows, asked)] if problem else []
    if problem:
        say_unsure(console, problem, rows, asked)
    console.print(jobs_table(rows, f"recent jobs ({len(rows)})", unsure))
