"""``pomlia task add/list``: learning tasks (a dataset version, a metric, a task type)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pomlia_hpc.cli.app import STATE, app, console
from pomlia_hpc.cli.listing import JsonFlag, print_rows
from pomlia_hpc.vocab import task_type_choices

task_app = typer.Typer(
    help="Register learning tasks (dataset version, metric, task type).", no_args_is_help=True
)
app.add_typer(task_app, name="task")


@task_app.command("add")
def task_add(
    name: Annotated[str, typer.Argument(help="Task name (unique).")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset NAME or NAME@VERSION.")],
    metric: Annotated[str, typer.Option("--metric", help="acc, auc or f1_macro (any case).")],
    task_type: Annotated[
        str | None,
        typer.Option(
            "--task-type",
            help=f"One of {task_type_choices()} (one other than the dataset's is refused).",
            show_default="the dataset's",
        ),
    ] = None,
) -> None:
    """Register task NAME: a dataset version, the metric to optimise and the task type."""
    from pomlia_hpc.automl.defined import (
        classes_left_out,
        one_class_splits,
        undefined_on_test,
    )
    from pomlia_hpc.automl.tasks import add_task, task_dataset
    from pomlia_hpc.data.leakage import duplicate_warning

    reg = STATE.registry()
    row = add_task(reg, name, dataset, metric, task_type)
    version, ref = task_dataset(reg, row)
    console.print(
        f"task [bold]{row.name}[/] (id {row.id}): {ref}, {row.task_type}, metric {row.metric}"
    )
    warning = duplicate_warning(version.fingerprint or {})
    if warning:
        console.print(f"[yellow]warning:[/] dataset {ref}: {escape(warning)}")
    left_out = classes_left_out(version.meta, row.metric)
    if left_out:
        console.print(f"[yellow]warning:[/] dataset {ref}: {escape(left_out)}")
    one_class = one_class_splits(version.meta, row.metric)
    if one_class:
        console.print(f"[yellow]warning:[/] dataset {ref}: {escape(one_class)}")
    undefined = undefined_on_test(version.meta, row.metric)
    if undefined:
        console.print(
            f"[yellow]warning:[/] dataset {ref}: {escape(undefined)} (AutoML picks its trials "
            f"by val; their test {row.metric} will read n/a)"
        )


@task_app.command("list")
def task_list(as_json: JsonFlag = False) -> None:
    """List the registered tasks. --json keys: id, name, dataset, task_type, metric."""
    from pomlia_hpc.automl.tasks import list_tasks

    tasks = list_tasks(STATE.registry())
    if as_json:
        print_rows(
            [
                {"id": t.id, "name": t.name, "dataset": ref, "task_type": t.task_type}
                | {"metric": t.metric}
                for t, ref in tasks
            ]
        )
        return
    table = Table(title="tasks")
    for col in ("id", "name", "dataset", "type", "metric"):
        table.add_column(col)
    for t, ref in tasks:
        table.add_row(str(t.id), t.name, ref, t.task_type, t.metric)
    console.print(table)
