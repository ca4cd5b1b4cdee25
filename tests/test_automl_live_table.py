"""`automl run`'s live table: its narrow form, its elapsed time, and its count of epochs (what
the trials trained, not the budget they were given)."""

from __future__ import annotations

import io
import re

import pytest

from pomlia_hpc.automl.study import StudyRunner
from pomlia_hpc.automl.study.view import TrialView
from pomlia_hpc.cli.app import MessageConsole
from pomlia_hpc.cli.automl import study_table
from pomlia_hpc.progress import progress
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_study, tiny_task


@pytest.mark.usefixtures("wide_console")
def test_a_trial_cancelled_early_counts_the_epochs_it_ran(
    workspace: Workspace, reg: Registry
) -> None:
    """`study s3: 1/1 trials, 40 epochs` for a trial cancelled after ~9 s, before its first
    epoch ended: the title counted its whole budget."""
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = tiny_study(reg, workspace, "blood", "s3", n_trials=2)
    runner = StudyRunner(reg, workspace, spec)
    view = TrialView(1, "k1", "small_cnn", 40, "cancelled", None, None, 9.0, "7")
    runner.views[1] = view
    runner.views[2] = TrialView(2, "k2", "small_cnn", 3, "ok", 0.5, 0.4, 30.0, "8")
    assert runner.spent() == 43  # the budget given out (what --budget-epochs limits)
    assert runner.epochs_run() == 3
    title = str(study_table(runner.view()).title)
    assert "2/2 trials, 3 epochs run" in title, title


def test_the_live_table_keeps_words_whole_at_80_columns(
    workspace: Workspace, reg: Registry
) -> None:
    """At 80 columns the header wrapped mid-word (`configu`/`ration`) and a run took 5 lines
    (`small_c`/`nn`/`lr=6.6e`/`-04 sgd`/`bs=128`); there was no elapsed time."""
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = tiny_study(reg, workspace, "blood", "s4", n_trials=2)
    runner = StudyRunner(reg, workspace, spec)
    summary = "small_cnn lr=6.6e-04 sgd bs=128"
    runner.views[1] = TrialView(1, "k1", summary, 9, "ok", 0.51, 0.47, 31.2, "12")
    runner.views[2] = TrialView(2, "k2", summary, 27, "running", None, None, None, "13")
    buf = io.StringIO()
    screen = MessageConsole(file=buf, force_terminal=True, width=80, color_system=None)
    from pomlia_hpc.cli.automl import study_reporter

    with progress("study s4", 2, unit="trials", console=screen, live_view=True) as bar:
        study_reporter(bar)(runner.view())
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())  # cursor codes of the live view
    assert "configuration" in text and "configu\n" not in text, text
    assert "small_cnn" in text and "lr=6.6e-04" in text, text
    assert "elapsed" in text, text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert sum(summary in line for line in text.splitlines()) >= 2, text  # one line per summary


def test_the_live_table_shows_the_images_each_metric_was_computed_on(
    workspace: Workspace, reg: Registry
) -> None:
    """The live table showed `val acc 1.000` without its image count (`runs list` shows n=),
    and a finished trial whose metric is undefined (AUC on a split of one class) read `-`,
    as a crashed one."""
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = tiny_study(reg, workspace, "blood", "s5", n_trials=3)
    runner = StudyRunner(reg, workspace, spec)
    ok = {"val_n": 40, "test_n": 50}
    runner.views[1] = TrialView(1, "k1", "small_cnn", 3, "ok", 0.51, 0.47, 3.0, "1", **ok)
    runner.views[2] = TrialView(2, "k2", "small_cnn", 3, "ok", None, None, 3.0, "2", **ok)
    runner.views[3] = TrialView(3, "k3", "small_cnn", 3, "crashed", None, None, 1.0, "3")
    buf = io.StringIO()
    wide = MessageConsole(file=buf, force_terminal=False, width=200, color_system=None)
    wide.print(study_table(runner.view()))
    text = buf.getvalue()
    assert "val acc (n=40)" in text and "test acc (n=50)" in text, text
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "│ small" in line}
    assert "n/a" in rows["2"] and "n/a" not in rows["3"], text
    # trials scored on different numbers of images: the count in each cell instead
    runner.views[3] = TrialView(
        3, "k3", "small_cnn", 3, "ok", 0.6, 0.5, 1.0, "3", val_n=20, test_n=25
    )
    buf.seek(0), buf.truncate()
    wide.print(study_table(runner.view()))
    text = buf.getvalue()
    assert "0.600 (n=20)" in text and "0.510 (n=40)" in text and "val acc (n=" not in text, text
