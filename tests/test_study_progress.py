"""Progress of a study run by a pipeline or the loop: :class:`TrialLog` logs a line each time a
trial changes status (the pipeline's automl stage and the loop's printed nothing until the
study ended, however many hours that took)."""

from __future__ import annotations

import math

from pomlia_hpc.automl.study import StudyView, TrialLog, TrialView, trial_line


def _trial(run_id: int, status: str, objective: float | None = None, cause: str = "") -> TrialView:
    return TrialView(
        run_id, "k", "small_cnn lr=1.0e-03 adamw bs=64", 3, status, objective, None, None, "", cause
    )


def _view(*trials: TrialView) -> StudyView:
    return StudyView("s", "acc", list(trials), None, 0, 4, None)


def test_trial_log_says_each_status_change_once() -> None:
    lines: list[str] = []
    log = TrialLog(lines.append, prefix="  ")
    log(_view(_trial(1, "running"), _trial(2, "running")))
    log(_view(_trial(1, "running"), _trial(2, "running")))  # nothing changed: nothing said
    log(_view(_trial(1, "ok", 0.9123), _trial(2, "crashed", cause="OutOfMemoryError")))
    assert lines == [
        "  run 1 small_cnn lr=1.0e-03 adamw bs=64, 3 epochs: running [0/4 ended]",
        "  run 2 small_cnn lr=1.0e-03 adamw bs=64, 3 epochs: running [0/4 ended]",
        "  run 1 small_cnn lr=1.0e-03 adamw bs=64, 3 epochs: ok val acc 0.912 [2/4 ended]",
        "  run 2 small_cnn lr=1.0e-03 adamw bs=64, 3 epochs: crashed (OutOfMemoryError) "
        "[2/4 ended]",
    ]


def test_trial_line_leaves_out_an_undefined_metric() -> None:
    assert "val" not in trial_line(_trial(1, "ok", math.nan), "auc")
