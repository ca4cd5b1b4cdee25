"""``pomlia pipeline run|status``: parse, call :mod:`pomlia_hpc.pipeline`, render."""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pomlia_hpc.cli.app import STATE, app, console, err_console, log_line
from pomlia_hpc.cli.pathopts import path_argument
from pomlia_hpc.cli.tables import shown

pipeline_app = typer.Typer(
    help="The whole loop from one YAML file: stages as cluster jobs, skipped when done.",
    no_args_is_help=True,
)
app.add_typer(pipeline_app, name="pipeline")


def _fmt_h(hours: float | None) -> str:
    if hours is None:
        return "?"
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:.2f} h"


def _plan_table(plan: object) -> Table:
    from pomlia_hpc.pipeline.runner import Plan
    from pomlia_hpc.pipeline.stage import PlannedJob

    assert isinstance(plan, Plan)
    table = Table(
        title=f"pipeline {plan.spec.name}: profile '{plan.profile_name}' "
        f"(backend {plan.profile.backend}), stages run {plan.mode}"
    )
    for col in ("stage", "action", "jobs", "resources per job", "est. time per job", "GPU-h"):
        table.add_column(col, overflow="fold")
    for sp in plan.stages:
        jobs: list[PlannedJob | None] = list(sp.jobs) or [None]
        first = True
        for j in jobs:
            r = j.resources if j is not None else None
            table.add_row(
                sp.stage.name if first else "",
                sp.action if first else "",
                f"{j.count_words} x {j.what}" if j is not None else "(in the stage process)",
                f"{r.cpus_per_task} CPU, {r.gpus_per_node} GPU, {r.mem_gb:g} GB, {r.time_min} min"
                if r is not None
                else "",
                _fmt_h(j.hours) if j is not None else "",
                f"{j.gpu_hours:.2f}" if j is not None else "",
            )
            first = False
    return table


@pipeline_app.command("run")
def run(
    file: Annotated[Path, path_argument(help="The pipeline file (YAML).")],
    cluster: Annotated[
        str | None,
        typer.Option("--cluster", help="Cluster profile (else the global --cluster / config)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (stages, jobs, GPU-hours) only.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="On Slurm: wait for the stage jobs to end (a poll that sacct does not answer "
            "within cluster.list_sacct_timeout_s is logged and retried).",
        ),
    ] = False,
    in_process: Annotated[
        bool,
        typer.Option(
            "--in-process",
            help="Run the stages here even on Slurm (inside a driver job such as "
            "jobs/pipeline.sbatch); their own jobs still go to the cluster.",
        ),
    ] = False,
) -> None:
    """Run PIPELINE.yaml: every stage whose outputs are missing or out of date.

    On a local profile the stages run here, one after the other. On a Slurm profile every
    stage becomes one job chained with afterok (or one driver job, execution.mode: driver),
    and the command returns; `pomlia pipeline status NAME` shows the stages. Running it again
    skips finished stages and resumes at a failed one; while its jobs are still queued or
    running, it follows them (--wait) or says so, and `pomlia pipeline cancel NAME` stops them.
    A stage job's log, which tells the stage's story, is <home>/jobs/<scheduler id>_0_log.out
    and .err (`pomlia jobs show ID`, ID the `job` of `pipeline status`, names them).
    """
    from pomlia_hpc.config import read_yaml
    from pomlia_hpc.pipeline import runner
    from pomlia_hpc.pipeline.lock import check_not_locked
    from pomlia_hpc.pipeline.spec import load_pipeline

    spec = load_pipeline(file)
    data = read_yaml(file)  # as validated: what the stage jobs will read (the snapshot)
    if cluster is not None:
        STATE.cluster = cluster
    ws = STATE.workspace
    reg = STATE.prepared()
    ctx = runner.context_for(ws, reg, spec, log=log_line)
    # Refusals and a run already under way are said before the plan, not after it.
    if not dry_run and _attached(ctx, data, ws.cluster_profile, wait):
        return
    if not dry_run:
        check_not_locked(ctx.folder)
    plan = runner.make_plan(ctx, ws.cluster_profile, in_process=in_process)
    console.print(_plan_table(plan))
    a = spec.estimate
    console.print(
        f"estimated GPU-hours of the stages to run: {plan.gpu_hours:.2f}"
        + (" (some sizes unknown before ingest: '?')" if plan.unknown_estimates else "")
        + f"; assumed per GPU: encoder {a.train_images_per_s:g} img/s, extraction "
        f"{a.extract_images_per_s:g} img/s, trials {a.classifier_images_per_s:g} img/s "
        "(set them under 'estimate:')",
        highlight=False,
    )
    if plan.driver is not None:
        r = plan.driver.resources
        console.print(
            f"plus {plan.driver.count_words} x {plan.driver.what}: {r.cpus_per_task} CPU, "
            f"{r.mem_gb:g} GB, {r.time_min} min",
            highlight=False,
        )
    if dry_run:
        return
    if plan.mode == "in-process":
        outcome = runner.run_in_process(ctx, plan, data=data, source=str(file))
        ran = [s for s, o in outcome.items() if o == "done"]
        console.print(
            f"[green]pipeline {spec.name} finished[/]: {len(ran)} stage(s) ran"
            + (f" ({', '.join(ran)})" if ran else "")
            + f", {len(outcome) - len(ran)} skipped (up to date)"
        )
        _print_status(ctx)
        return
    jobs = runner.submit_file(ctx, plan, data, str(file))
    if not jobs:
        console.print(f"[green]pipeline {spec.name}: every stage is up to date[/]")
        return
    for stage, info in jobs.items():
        console.print(f"  {stage}: job {info['job']} (Slurm {info['scheduler_id']})")
    console.print(f"watch it with: pomlia pipeline status {shlex.quote(spec.name)}")
    if wait:
        _wait(ctx)


def _attached(ctx: object, data: dict[str, object], profile: str, wait: bool) -> bool:
    """When this pipeline's jobs are queued or running: for the same file and profile (the
    same command run again, e.g. after Ctrl-C of --wait), say so and follow them with
    ``wait`` (True: nothing left to do); for another one, refuse (exit 2)."""
    from pomlia_hpc.cli.polling import poll_start, say_unsure, unsure_states, waiting_said
    from pomlia_hpc.errors import PomliaError
    from pomlia_hpc.pipeline import runner

    assert isinstance(ctx, runner.StageContext)
    asked = poll_start()
    with waiting_said(ctx.workspace.list_sacct_timeout_s):
        live, problem = runner.live_jobs(ctx)
    if not live:
        return False
    name = shlex.quote(ctx.spec.name)
    if problem:  # counted as live as recorded: a second submission could run stages twice
        say_unsure(console, problem, live, asked)
    unsure = {r.id for r in unsure_states(live, asked)} if problem else set()
    jobs = ", ".join(
        f"{r.name} ({r.scheduler_id}, {r.state}{'?' if r.id in unsure else ''})" for r in live
    )
    if not runner.same_submission(ctx, data, profile):
        raise PomliaError(
            f"pipeline '{ctx.spec.name}' has jobs of another version of its file or another "
            f"profile queued or running: {jobs}",
            hint=f"wait for them (pomlia pipeline status {name}), or cancel them: "
            f"pomlia pipeline cancel {name}",
        )
    console.print(f"pipeline {ctx.spec.name} is already running: {jobs}", highlight=False)
    if wait:
        _wait(ctx)
    else:
        console.print(f"watch it with: pomlia pipeline status {name}")
    return True


def _status_rows(ctx: object) -> Sequence[object]:
    """The stages' status, saying on stderr when ``sacct`` keeps it waiting (at most the
    workspace's ``cluster.list_sacct_timeout_s`` seconds)."""
    from pomlia_hpc.cli.polling import waiting_said
    from pomlia_hpc.pipeline import runner

    assert isinstance(ctx, runner.StageContext)
    with waiting_said(ctx.workspace.list_sacct_timeout_s):
        return list(runner.pipeline_status(ctx))


def _wait(ctx: object) -> None:
    """Follow the pipeline's jobs until none is queued or running (exit 1 when a stage failed
    or was cancelled). A poll that ``sacct`` did not answer ends nothing: the states it
    could not confirm are logged with a ``?`` and asked again at the next poll."""
    from pomlia_hpc.pipeline import runner

    last, said = "", ""
    while True:
        rows = [r for r in _status_rows(ctx) if isinstance(r, runner.StageStatus)]
        problem = next((r.unsure for r in rows if r.unsure), "")
        if problem and problem != said:
            log_line(f"{problem}; states marked ? are as last recorded, asked again next poll")
        said = problem
        line = ", ".join(f"{r.stage}={r.state}{'?' if r.unsure else ''}" for r in rows)
        if line != last:
            log_line(line)
            last = line
        # An unconfirmed job is unfinished as recorded: it is waited for, not taken as ended.
        active = [r for r in rows if r.job is not None and r.job_state not in runner.FINAL_STATES]
        if not active:
            break
        time.sleep(2.0)
    _print_status(ctx, rows)
    if any(r.state in ("failed", "cancelled") for r in rows):
        raise typer.Exit(1)


def _print_status(ctx: object, rows: Sequence[object] | None = None) -> None:
    """The status table of ``ctx``'s pipeline, from ``rows`` (default: asked now); states
    that Slurm did not confirm are marked ``?`` and said above the table."""
    from pomlia_hpc.cli.polling import say_unsure_as_of
    from pomlia_hpc.pipeline import runner

    assert isinstance(ctx, runner.StageContext)
    rows = rows if rows is not None else _status_rows(ctx)
    stages = [r for r in rows if isinstance(r, runner.StageStatus)]
    unsure = [r for r in stages if r.unsure]
    if unsure:
        as_of = min((r.as_of for r in unsure if r.as_of is not None), default=None)
        say_unsure_as_of(console, unsure[0].unsure, as_of)
    table = Table(title=f"pipeline {ctx.spec.name} ({ctx.folder})")
    for col in ("stage", "state", "job", "Slurm/pid", "job state", "started", "ended", "detail"):
        table.add_column(col, overflow="fold")
    style = {"done": "green", "failed": "red", "running": "yellow", "stale": "yellow"}
    for r in stages:
        mark = "?" if r.unsure else ""  # as last recorded: Slurm did not confirm it
        # The stage's own job (its log tells the stage's story), then the jobs it submitted.
        own = f"stage {r.job}" if r.stage_job else ""
        table.add_row(
            r.stage,
            f"[{style.get(r.state, 'white')}]{r.state}{mark}[/]",
            shown("; ".join(w for w in (own, r.children) if w)),
            shown(r.scheduler_id),
            shown(r.job_state + mark if r.job_state else ""),
            shown(r.started_at[11:19]),
            shown(r.ended_at[11:19]),
            shown(r.detail),
        )
    console.print(table)


@pipeline_app.command("status")
def status(
    name: Annotated[
        str | None,
        typer.Argument(help="Pipeline name or file.", show_default="the only one in the workspace"),
    ] = None,
) -> None:
    """Show each stage of a pipeline: done / stale / failed / running / pending (with Slurm's
    reason) / requeued / cancelled, with its job's state (an empty table when no pipeline has
    run in the workspace).

    NAME and FILE give the same answer: the stage records compared with the pipeline file as
    it is now (for NAME, the file its last run was started from), so a stage whose part of
    the file changed since it ran shows as stale. sacct is waited for at most
    cluster.list_sacct_timeout_s seconds (15; <home>/pomlia.yaml); a state it did not
    confirm is the last recorded one, marked ?.
    """
    from pomlia_hpc.pipeline import runner

    ws = STATE.workspace
    if name is None and not runner.known_pipelines(ws):
        # Nothing has run: an empty listing (exit 0), as every other listing shows it.
        table = Table(title=f"pipelines (0) in {ws.home}")
        for col in ("pipeline", "stage", "state"):
            table.add_column(col)
        console.print(table)
        console.print("no pipeline has run here; start one with `pomlia pipeline run FILE`")
        return
    spec = runner.status_spec(ws, name)
    _print_status(runner.context_for(ws, STATE.registry(), spec))


@pipeline_app.command("cancel")
def cancel(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
) -> None:
    """Cancel the queued and running stage jobs of pipeline NAME (Slurm chain or driver job).

    A running stage job cancels the jobs it submitted (training, extraction, trials) as it
    stops; each job is recorded CANCELLED. Run the pipeline again to resume it.
    """
    from pomlia_hpc.pipeline import runner

    outcome = runner.cancel_pipeline(STATE.workspace, STATE.registry(), name)
    for r in outcome.cancelled:
        console.print(f"cancelled job {r.id} {r.name} (Slurm {r.scheduler_id})", highlight=False)
    if not outcome.cancelled:
        console.print(f"pipeline {name}: no job queued or running; nothing cancelled")
    if outcome.unconfirmed is None:
        return
    # sacct could not say how the jobs stand: what was done rests on squeue's word
    said = [outcome.unconfirmed]
    if outcome.cancelled:
        said.append("the jobs above were cancelled as squeue listed them queued or running")
    said += [
        f"job {r.id} {r.name} (Slurm {r.scheduler_id}) is not listed by squeue: it has "
        "ended, its end recorded once sacct answers"
        for r in outcome.passed_over
    ]
    err_console.print(f"[yellow]warning:[/] {escape('; '.join(said))}", highlight=False)
