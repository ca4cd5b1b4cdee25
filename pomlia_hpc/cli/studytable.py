"""The live table of an AutoML study (`pomlia automl run`): its trials, their metrics with the
images each was computed on, and the best so far, with a narrow form for an 80-column terminal."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table
from rich.text import Text

from pomlia_hpc.cli.tables import ListTable, shown, stack
from pomlia_hpc.progress import duration
from pomlia_hpc.vocab import RunStatus


def fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def with_n(value: float | None, n: Any) -> str:
    """``0.912 (n=40)``: a metric with the images it was computed on, as the table's cells and
    `runs list` show it (an AUC of 1.000 from 2 images read like one from 400); the count is
    left out where none was recorded."""
    counted = isinstance(n, int) and not isinstance(n, bool)
    return fmt(value) + (f" (n={n})" if counted and value is not None else "")


def epochs_word(n: int) -> str:
    """``epoch`` for 1 (``1 epoch``), else ``epochs``."""
    return "epoch" if n == 1 else "epochs"


_STYLE = {
    RunStatus.OK: "green",
    RunStatus.CRASHED: "red",
    RunStatus.CANCELLED: "magenta",
    RunStatus.RUNNING: "yellow",
    RunStatus.PENDING: "dim",
}


def _counts(trials: Any, key: str) -> set[int]:
    """The distinct image counts (``val_n`` or ``test_n``) the trials recorded."""
    return {n for t in trials if (n := getattr(t, key, None)) is not None}


def _head(counts: set[int]) -> str:
    """`` (n=40)`` for a column whose trials all scored the same number of images."""
    return f" (n={next(iter(counts))})" if len(counts) == 1 else ""


def _metric_cell(trial: Any, value: float | None, n: int | None, counts: set[int]) -> str:
    """A trial's metric: `-` for none yet (running, crashed, cancelled), `n/a` for one that
    finished with the metric undefined (AUC on a split of one class), as `runs list` says;
    its image count beside it where the column's header cannot give one."""
    text = fmt(value) or ("n/a" if trial.status == RunStatus.OK else "-")
    return text + (f" (n={n})" if n is not None and len(counts) > 1 else "")


def study_table(view: Any, elapsed_s: float | None = None) -> ListTable:
    """The live table of a study (a :class:`~pomlia_hpc.automl.study.StudyView`), with its
    narrow form for an 80-column terminal; ``elapsed_s``: the driver's time so far (s)."""
    # epochs the trials ran (a trial cancelled after 9 s counted its whole budget), and
    # against --budget-epochs the epochs given out, which that option limits
    budget = f" ({view.spent_epochs}/{view.budget_epochs} given out)" if view.budget_epochs else ""
    best = view.best
    caption = (
        f"best so far: run {best.run_id} ({best.summary}, {best.epochs} ep) "
        f"val {view.metric} {with_n(best.objective, getattr(best, 'val_n', None))}, "
        f"test {with_n(best.test, getattr(best, 'test_n', None))}"
        if best
        else "best so far: none yet"
    )
    runs = f"{len(view.search)}/{view.n_trials} trials"
    if len(view.search) < len(view.trials):  # the final training of the best is not a trial
        runs += " + final training"
    took = f", {duration(elapsed_s)} elapsed" if elapsed_s is not None else ""
    run = f"{view.run_epochs} {epochs_word(view.run_epochs)} run"
    title = f"study {view.name}: {runs}, {run}{budget}{took}"
    table = ListTable(title=title, caption=caption)
    # The images each metric was computed on: one count per split in the header (every trial
    # scores the same split), per cell where trials differ (an AUC of 1.000 from 2 images read
    # like one from 400).
    val_n, test_n = _counts(view.trials, "val_n"), _counts(view.trials, "test_n")
    val_head, test_head = f"val {view.metric}{_head(val_n)}", f"test {view.metric}{_head(test_n)}"
    for col in ("run", "configuration", "epochs", "status", val_head):
        table.add_column(col, overflow="fold")
    for col in (test_head, "cost (s)", "job", "cause"):
        table.add_column(col, overflow="fold")
    # The narrow form: words whole at 80 columns (`configu`/`ration` and 5 lines per run
    # before), the status under the epochs, val over test, the cause under the configuration.
    narrow = table.narrow = Table(title=title, caption=caption)
    both = f"val/test {view.metric}" + (_head(val_n) if val_n == test_n else "")
    for col in ("run", "configuration", "epochs", both, "cost (s)"):
        narrow.add_column(col, overflow="fold")
    for t in view.trials[-30:]:
        mark = " *" if best is not None and t.run_id == best.run_id else ""
        epochs = f"{t.start_epoch}→{t.epochs}" if t.start_epoch else str(t.epochs)
        status = Text(t.status, style=_STYLE.get(t.status, ""))
        cost, cause = fmt(t.cost_s, 1), t.cause
        val = _metric_cell(t, t.objective, getattr(t, "val_n", None), val_n)
        test = _metric_cell(t, t.test, getattr(t, "test_n", None), test_n)
        table.add_row(
            f"{t.run_id}{mark}",
            t.summary,
            epochs,
            status,
            val,
            test,
            shown(cost),
            shown(t.job),
            shown(cause),  # whole: the column wraps (a cut cause named half the device)
        )
        narrow.add_row(
            stack(f"{t.run_id}{mark}", f"job {t.job}" if t.job else ""),
            stack(t.summary, cause),
            Text(stack(epochs, t.status), style=_STYLE.get(t.status, "")),
            stack(val, test),
            shown(cost),
        )
    return table
