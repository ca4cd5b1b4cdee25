"""Progress of a study run by a pipeline or the loop: :class:`TrialLog` logs a line each time a
trial changes status (the pipeline's automl stage and the loop's printed nothing until the
study ended, however many hours that took)."""

from __future__ import annotations

import io
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pomlia_hpc.automl.study import StudyView, TrialLog, TrialView, run_study, trial_line
from pomlia_hpc.cli.automl import study_reporter, study_table
from pomlia_hpc.progress import progress
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_study, tiny_task

# Jobs run in this process (debug executor) set torch's thread count: put back after.
pytestmark = pytest.mark.usefixtures("restore_torch_threads")


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


def test_trial_log_without_counts_is_automl_runs_plain_lines() -> None:
    lines: list[str] = []
    log = TrialLog(lines.append, counts=False)  # `automl run`: its bar line has the counts
    log(_view(_trial(1, "running")))
    log(_view(_trial(1, "ok", 0.5)))
    assert lines == [
        "run 1 small_cnn lr=1.0e-03 adamw bs=64, 3 epochs: running",
        "run 1 small_cnn lr=1.0e-03 adamw bs=64, 3 epochs: ok val acc 0.500",
    ]


def test_a_cancelled_trial_says_cancelled_once() -> None:
    for cause, said in [
        ("cancelled (scancel or preemption)", "cancelled (scancel or preemption)"),
        ("cancelled by user", "cancelled by user"),
        ("", "cancelled"),
    ]:
        line = trial_line(_trial(2, "cancelled", cause=cause), "acc")
        assert line == f"run 2 small_cnn lr=1.0e-03 adamw bs=64, 3 epochs: {said}"
    crashed = trial_line(_trial(3, "crashed", cause="time limit reached"), "acc")
    assert crashed.endswith("3 epochs: crashed (time limit reached)")


def test_trial_line_leaves_out_an_undefined_metric() -> None:
    assert "val" not in trial_line(_trial(1, "ok", math.nan), "auc")


def test_a_trial_job_says_which_trial_it_is_and_stamps_its_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial's output file (named by the scheduler's id) said only `epoch 1/2 loss ...`:
    not which run, study or configuration, nor when."""
    from pomlia_hpc.automl import trial
    from pomlia_hpc.automl.engine import TrainRequest
    from pomlia_hpc.automl.space import TrainConfig

    class Result:
        def to_dict(self) -> dict[str, Any]:
            return {"start_epoch": 0}

    def fake_train(req: TrainRequest, progress: Any) -> Result:
        progress(1, 2, {"train_loss": 0.25, "seconds": 1.5})
        return Result()

    monkeypatch.setattr(trial, "train", fake_train)
    req = TrainRequest(
        store_path="x",
        task_type="multi-class",
        config=TrainConfig(lr=1e-3, optimizer="adamw", batch_size=64),
        epochs=2,
        workdir=str(tmp_path),
        model_path=str(tmp_path / "m.pt"),
        lineage={"run_id": 7, "study": "s1", "dataset": "blood@abc"},
    )
    trial.TrialJob(req, str(tmp_path / "result.json"))()
    lines = capsys.readouterr().out.splitlines()
    stamp = r"\[\d\d:\d\d:\d\d\] "
    assert re.fullmatch(
        stamp + r"trial: run 7 of study s1 on blood@abc, small_cnn lr=1\.0e-03 adamw bs=64, "
        r"to 2 epochs",
        lines[0],
    ), lines
    assert re.fullmatch(stamp + r"epoch 1/2 loss 0\.2500 \(1\.5 s\)", lines[1]), lines


def test_the_final_training_is_not_counted_as_a_trial_beyond_trials() -> None:
    """`--trials 2` ran 3 jobs (the final training of the best) and said "3/2 trials"."""
    trials = [_trial(i, "ok", 0.5) for i in range(1, 5)]
    trials.append(replace(_trial(5, "ok", 0.5), final=True))
    console = Console(width=200, record=True)
    console.print(study_table(_view(*trials)))
    assert "s: 4/4 trials + final training" in console.export_text()
    lines: list[str] = []
    TrialLog(lines.append)(_view(*trials))
    assert lines[-2].endswith("[4/4 ended]") and lines[-1].endswith("[final training]")


def test_the_final_training_is_a_stage_of_its_own_not_a_third_of_two_trials() -> None:
    """`--trials 2`: the final training of the best made the progress say `3/2 trials
    (150%)`; it says `2/2 trials` and names the final training (run 1's, to 9 epochs)."""
    out = io.StringIO()
    best = _trial(1, "ok", 0.9)
    search = [best, _trial(2, "ok", 0.5)]
    final = replace(best, run_id=3, epochs=9, status="running", final=True)
    with progress("study s", 2, unit="trials", stream=out, every_s=3600) as bar:
        update = study_reporter(bar)
        update(replace(_view(_trial(1, "running")), n_trials=2))  # no best yet
        update(replace(_view(*search), n_trials=2, best=best))
        update(replace(_view(*search, final), n_trials=2, best=best))
        update(replace(_view(*search, replace(final, status="ok")), n_trials=2, best=best))
    text = out.getvalue()
    assert "3/2" not in text and "150%" not in text, text
    assert "study s: 2/2 trials; final training of run 1 to 9 epochs (run 3)" in text, text
    assert "study s: 2/2 trials (100%)" in text and "(run 3): ok" in text, text
    console = Console(width=200, record=True)
    console.print(study_table(_view(*search, final)))
    assert "s: 2/4 trials + final training" in console.export_text()


@pytest.mark.slow
def test_a_studys_own_views_mark_its_final_training(workspace: Workspace, reg: Registry) -> None:
    """The driver's live views (not only those read back from the registry) say which run is
    the final training: `automl run` showed `3/2 trials` during it."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    spec = tiny_study(
        reg, workspace, "blood", "fin", optimizer="smac", n_trials=1, min_epochs=1,
        max_epochs=2, eta=2, initial_configs=[], final_full_budget=True,
    )  # fmt: skip
    seen: list[StudyView] = []
    run_study(reg, workspace, spec, poll_s=0.2, on_update=seen.append)
    finals = {t.run_id for v in seen for t in v.trials if t.final}
    (final,) = finals
    assert all(t.final == (t.run_id == final) for v in seen for t in v.trials)
    assert len(seen[-1].search) == 1 and seen[-1].final_stage().startswith("final training")


def test_the_best_so_far_names_the_images_its_metrics_were_computed_on() -> None:
    """The trial cells said `0.900 (n=2)` where trials scored different splits, but the best so
    far (the table's caption, the progress note) said `val acc 0.900` with no count: an AUC
    of 1.000 from 2 images read like one from 400 exactly where the study's answer is shown."""
    best = replace(_trial(1, "ok", 0.9), test=0.8, val_n=2, test_n=60)
    other = replace(_trial(2, "ok", 0.5), val_n=40, test_n=60)
    view = replace(_view(best, other), best=best)
    console = Console(width=250, record=True)
    console.print(study_table(view))
    text = " ".join(console.export_text().split())
    assert "best so far: run 1 (" in text and "val acc 0.900 (n=2), test 0.800 (n=60)" in text
    out = io.StringIO()
    with progress("study s", 4, unit="trials", stream=out, every_s=3600) as bar:
        study_reporter(bar)(view)
    assert "best run 1 val acc 0.900 (n=2)" in out.getvalue(), out.getvalue()
