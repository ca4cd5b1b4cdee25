"""``pomlia runs list``: the registry's training runs (AutoML trials), and what to do about a
study whose driver stopped before it finished."""

from __future__ import annotations

import math
import shlex
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from pomlia_hpc.cli.app import STATE, app, console, err_console
from pomlia_hpc.cli.listing import JsonFlag, print_rows
from pomlia_hpc.cli.tables import ListTable, shown, stack
from pomlia_hpc.vocab import METRICS, RunStatus

runs_app = typer.Typer(help="Training runs (AutoML trials) in the registry.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


def fmt(x: float | None, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals; the empty text for a missing or undefined value."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


#: A metric that is undefined for a run (AUC on a split of one class) in the table.
UNDEFINED = "n/a"


def _defined(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _metrics(values: dict[str, Any]) -> str:
    """A run's metrics on one split, named, with the images they were computed on: ``acc
    0.912 auc 0.981 (n=412)`` (f1_macro too). A metric the split has a key for but no value
    (``None``: undefined, e.g. AUC with one class; NaN in older records) reads ``auc n/a``:
    leaving it out looked like a metric not computed. The count is left out only where the
    record has none (runs recorded before it was kept): an AUC of 1.000 from 2 images read
    like one from 400."""
    text = " ".join(
        f"{k} {fmt(values[k]) if _defined(values[k]) else UNDEFINED}"
        for k in METRICS
        if k in values
    )
    n = values.get("n")
    if text and isinstance(n, int) and not isinstance(n, bool):
        text += f" (n={n})"
    return text


def _split_json(values: Any) -> Any:
    """A split's metrics for --json: an undefined one (NaN in older records) is null, as JSON
    has no NaN."""
    if not isinstance(values, dict):
        return values
    return {k: (v if not isinstance(v, float) or _defined(v) else None) for k, v in values.items()}


@runs_app.command("list")
def runs_list(
    task: Annotated[str | None, typer.Option("--task", help="Only runs of this task.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Only runs of this study.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List training runs with configuration, budget, metrics, cost, status and job.

    Cost: the trial job's wall time from its start to its end in seconds, start-up included,
    whatever the status (Slurm: the job's Start to End).

    --json keys: id, task, study, status, epochs, config, val, test, objective, cost_s,
    train_s (of cost_s, the training call's own seconds; null for a crash, or a run recorded
    before it was kept), job (the registry's job id, as `pomlia jobs show/cancel` take),
    scheduler_id (Slurm's job id or the local pid), error (the whole text), cause (its first
    line, which the table shows whole), traceback (the rest: the job's traceback), created_at,
    software (the versions the trial job trained with: python, pomlia, packages, torch_build;
    null for a crash, or a run recorded before they were kept), history (per epoch: epoch,
    train_loss, seconds, as the trial recorded them; null for a crash); a missing value is
    null, and so is a metric undefined for the run (val.auc of a split of one class; the table
    shows n/a). A console too narrow for the full table (80 columns) gets 6 columns: the error
    under the configuration, val and test metrics in one column, two values stacked in the
    others."""
    from pomlia_hpc.automl.folders import study_names  # not .study: that imports torch
    from pomlia_hpc.automl.records import list_runs, settle_cancelled

    known = study_names(STATE.workspace) if study is not None else []
    rows = list_runs(STATE.registry(), task=task, study=study, limit=limit, known_studies=known)
    gone = _gone_drivers(rows)
    # The trials a gone driver's cancel took along (its jobs ended CANCELLED) are recorded
    # cancelled rather than shown running (stale) forever.
    settled = settle_cancelled(STATE.registry(), [r for r in rows if r.study in gone])
    if settled:
        rows = list_runs(STATE.registry(), task=task, study=study, limit=limit, known_studies=known)
    if as_json:
        print_rows(
            [
                {"id": r.id, "task": r.task, "study": r.study, "status": r.status}
                | {"epochs": r.epochs, "config": r.config}
                | {k: _split_json(r.metrics.get(k)) for k in ("val", "test", "objective")}
                | {"cost_s": r.cost_s, "train_s": r.metrics.get("train_s")}
                | {"job": r.job, "scheduler_id": r.scheduler_id}
                | {"error": r.error}
                | dict(zip(("cause", "traceback"), cause_and_traceback(r.error), strict=True))
                | {"created_at": r.created_at, "software": r.metrics.get("software")}
                # The losses, so that two studies run with the same seed can be compared run by
                # run from here (docs/guide/reproducibility.md), not only from the registry.
                | {"history": r.metrics.get("history")}
                for r in rows
            ]
        )
        return
    table = _runs_table(rows, gone)
    console.print(table)
    _stale_hints(gone, settled, rows)
    _unfinished_hints(rows, gone)


def cause_and_traceback(error: str | None) -> tuple[str | None, str | None]:
    """A run's recorded ``error`` as its one-line cause (``FAILED: <exception line>``) and the
    traceback recorded after it (None for a missing one)."""
    if not error:
        return None, None
    first, _, rest = error.strip().partition("\n")
    return first.strip(), rest.strip() or None


def _runs_table(rows: list[Any], gone: dict[str, tuple[str, str]]) -> ListTable:
    """The runs as a table, with its narrow form (said in ``runs list --help``)."""
    from pomlia_hpc.automl.records import config_summary

    title = f"runs ({len(rows)})"
    table = ListTable(title=title)
    for col in (
        "id",
        "task",
        "study",
        "configuration",
        "epochs",
        "status",
        "val",
        "test",
        "cost (s)",
        "job",
        "error",
    ):
        table.add_column(col, overflow="fold", no_wrap=col in ("id", "job"))
    narrow = table.narrow = Table(title=title)
    narrow.add_column("id", no_wrap=True)
    for col in ("task\nstudy", "configuration\nerror", "status\nepochs", "metrics", "job\ncost"):
        narrow.add_column(col, overflow="fold")
    for r in rows:
        val, test = r.metrics.get("val") or {}, r.metrics.get("test") or {}
        unfinished = r.status in (RunStatus.RUNNING, RunStatus.PENDING) and r.study in gone
        status = f"{r.status} (stale)" if unfinished else str(r.status)
        error = cause_and_traceback(r.error)[0] or ""  # whole: the column wraps
        table.add_row(
            str(r.id),
            shown(r.task),
            shown(r.study),
            config_summary(r.config),
            shown(fmt(r.epochs, 0)),
            Text(status, style="yellow") if unfinished else status,
            shown(_metrics(val)),  # a running run has none yet: `-`, as every missing value
            shown(_metrics(test)),
            shown(fmt(r.cost_s, 1)),
            shown(r.job),
            shown(error),
        )
        epochs = fmt(r.epochs, 0)
        if epochs:
            epochs += " epoch" if r.epochs == 1 else " epochs"
        narrow.add_row(
            str(r.id),
            stack(shown(r.task), r.study or ""),
            stack(config_summary(r.config), error),
            Text(stack(status, epochs), "yellow" if unfinished else ""),
            shown(stack(*(f"{k} {_metrics(v)}" for k, v in (("val", val), ("test", test)) if v))),
            # A cost of 0.0 is a cost (a trial that failed at once): shown, not left out.
            stack(shown(r.job), f"{fmt(r.cost_s, 1)} s" if r.cost_s is not None else ""),
        )
    return table


def _stale_hints(gone: dict[str, tuple[str, str]], settled: list[int], rows: list[Any]) -> None:
    """Per study whose driver is gone: why, and how to take it up (a pipeline's study: run
    its pipeline again; else ``automl run --resume``). Worded after what ``rows`` (as shown,
    after settling) say: "stay 'running'" under a row that says cancelled misled."""
    from pomlia_hpc.automl.folders import owning_pipeline

    for name, (task_name, why) in sorted(gone.items()):
        owner = owning_pipeline(STATE.workspace, name)
        how = (
            f"run pipeline {owner} again (`pomlia pipeline status {shlex.quote(owner)}`)"
            if owner is not None
            else f"resume it with `pomlia automl run {shlex.quote(task_name)} --study "
            f"{shlex.quote(name)} --resume`"
        )
        live = sum(
            r.study == name and r.status in (RunStatus.RUNNING, RunStatus.PENDING) for r in rows
        )
        ended = sum(r.study == name and r.id in settled for r in rows)
        said = f"{ended} run(s) cancelled with it are recorded 'cancelled'; " if ended else ""
        if live:
            said += f"{live} unfinished run(s) stay 'running' until it is taken up; "
        err_console.print(
            f"[yellow]stale:[/] study {name}: {why}; {said}{how}",
            soft_wrap=True,
            highlight=False,
        )


def _unfinished_hints(rows: list[Any], gone: dict[str, tuple[str, str]]) -> None:
    """Per study whose runs all ended but whose driver stopped before the study's end (a
    hang-up, Ctrl-C or kill after the last trial): its best model is not registered and
    nothing else says so; a resume (or its pipeline) records it."""
    from pomlia_hpc.automl.folders import owning_pipeline
    from pomlia_hpc.automl.liveness import stopped_unfinished

    busy = {r.study for r in rows if r.status in (RunStatus.RUNNING, RunStatus.PENDING)}
    tasks = {r.study: r.task or "TASK" for r in rows if r.study}
    for name in sorted(set(tasks) - busy - set(gone)):
        why = stopped_unfinished(STATE.workspace, name)
        if why is None:
            continue
        owner = owning_pipeline(STATE.workspace, name)
        how = (
            f"run pipeline {owner} again"
            if owner is not None
            else f"`pomlia automl run {shlex.quote(tasks[name])} --study {shlex.quote(name)} "
            "--resume` registers it"
        )
        err_console.print(
            f"[yellow]unfinished:[/] study {name}: its trials ended but {why} before it "
            f"registered the best model and wrote its summary; {how}",
            soft_wrap=True,
            highlight=False,
        )


def _gone_drivers(rows: list[Any]) -> dict[str, tuple[str, str]]:
    """The studies among ``rows`` with unfinished runs whose driver is gone (killed, its node
    lost), as study -> (task, why): nothing else would ever finish those runs."""
    from pomlia_hpc.automl.liveness import driver_gone, read_driver

    gone: dict[str, tuple[str, str]] = {}
    for r in rows:
        if r.study in gone or not r.study or r.status not in (RunStatus.RUNNING, RunStatus.PENDING):
            continue
        record = read_driver(STATE.workspace, r.study)
        why = driver_gone(record) if record is not None else None
        if why is not None:
            gone[r.study] = (r.task or "TASK", why)  # a deleted task: not "None"
    return gone
