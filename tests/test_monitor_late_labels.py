"""Feedback labels come days after the prediction: a window tests the labels that *arrived*
in it (its predictions' and older ones', looked up within ``--label-lookback``), so nightly
windows count every label once; labels it cannot test are counted by why
(docs/guide/monitor.md, "Which labels a window tests")."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.predlog import log_dir
from pomlia_hpc.workspace import Workspace
from tests.monitor_support import (
    MonitorEnv,
    append_lines,
    demo_workspace,
    images,
    label,
    log_predictions,
    with_empty_log,
)

runner = CliRunner()
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitorEnv]:
    """One workspace with an exported demo model 'blood' and its reference (export is slow)."""
    yield from demo_workspace(tmp_path_factory, "late-labels")


@pytest.fixture
def fresh(env: MonitorEnv, monkeypatch: pytest.MonkeyPatch) -> MonitorEnv:
    """``env`` with an empty prediction log, selected for the CLI."""
    return with_empty_log(env, monkeypatch)


def start_day() -> datetime:
    """Midnight UTC a week ago: the windows below are days in the past."""
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - 7 * DAY


def report_of(since: datetime, until: datetime, *more: str) -> dict[str, Any]:
    window = ["--since", since.isoformat(), "--until", until.isoformat()]
    res = runner.invoke(app, ["monitor", "run", "blood", *window, "--json", *more])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    out = res.stdout
    return dict(json.loads(out[out.index("{") :]))


def feedback(ws: Workspace, name: str, *labels: dict[str, Any]) -> None:
    """Log feedback records as a later server process would (a file of their own)."""
    append_lines(log_dir(ws.path("logs"), "blood") / f"{name}.jsonl", *labels)


def test_nightly_windows_count_every_late_label_once(
    fresh: tuple[Workspace, Registry, Path],
) -> None:
    """Three days of 20 predictions, labels 0-3 days later; each night's run sees only the
    labels logged before it. Every label is tested in exactly one nightly report (before,
    only those logged by the night of their prediction's window were, about 1 in 6 here)."""
    ws, _reg, bundle = fresh
    d0 = start_day()
    rng = np.random.default_rng(1)
    arriving: list[tuple[datetime, dict[str, Any]]] = []
    for day in range(3):
        x, y = images(20, seed=day)
        at = d0 + day * DAY + timedelta(hours=12)
        for rec, true in zip(log_predictions(ws, bundle, x, when=at), y, strict=True):
            when = at + timedelta(hours=float(rng.uniform(0, 72)))
            arriving.append((when, label(rec, when, int(true))))
    tested = []
    for night in range(1, 7):
        # The labels logged up to this night; the next ones are not written yet.
        since, until = d0 + (night - 1) * DAY, d0 + night * DAY
        today = [line for when, line in arriving if since <= when < until]
        if today:
            feedback(ws, f"labels-{night}", *today)
        perf = report_of(since, until)["performance"] or {"labels": 0}
        assert perf["labels"] == len(today)
        assert perf.get("unmatched_feedback", 0) == 0
        tested.append(perf["labels"])
    assert sum(tested) == len(arriving) == 60
    # A later rerun of a window tests the same labels as its nightly run.
    assert report_of(d0 + DAY, d0 + 2 * DAY)["performance"]["labels"] == tested[1]


def test_labels_not_tested_are_counted_by_why(fresh: tuple[Workspace, Registry, Path]) -> None:
    """``unmatched_feedback`` counts labels of unknown prediction ids only (it counted labels
    of every prediction outside the window); a label of another model's prediction, one
    beyond the look-back and a replacement of an earlier window's label are counted apart."""
    ws, _reg, bundle = fresh
    d0 = start_day()
    x, _y = images(4)
    old = log_predictions(ws, bundle, x[:1], when=d0 - 3 * DAY)[0]
    day1 = log_predictions(ws, bundle, x[1:], when=d0 + timedelta(hours=6))
    since, until = d0 + DAY, d0 + 2 * DAY
    at = since + timedelta(hours=3)
    other = {**day1[2], "model": "blood-old", "id": os.urandom(16).hex()}
    append_lines(log_dir(ws.path("logs"), "blood") / "other-model.jsonl", other)
    feedback(
        ws,
        "labels",
        label(day1[0], d0 + timedelta(hours=8), 1),  # first label, in the window before
        label(day1[0], at, 2, replaces=True),  # its correction: tested there already
        label(day1[1], at, 3),  # a late label of an earlier prediction: tested
        label({**day1[1], "id": "f" * 32}, at, 0),  # an id no server returned
        label(other, at, 0),  # a prediction of another model (the feedback names ours)
        label(old, at, 0),  # 4 days after its prediction
    )
    perf = report_of(since, until, "--label-lookback", "2d")["performance"]
    assert perf["labels"] == 1 and perf["labels_outside_window"] == 1
    assert perf["unmatched_feedback"] == 2  # the made-up id and the one beyond the look-back
    assert perf["labels_other_model"] == 1 and perf["labels_corrected"] == 1
    wider = report_of(since, until, "--label-lookback", "7d")
    assert wider["performance"]["labels"] == 2 and wider["performance"]["unmatched_feedback"] == 1
    assert any("prediction ids not in this model's log" in n for n in wider["notes"])


def test_a_label_taken_after_a_promotion_counts_for_the_model_that_predicted(
    fresh: tuple[Workspace, Registry, Path],
) -> None:
    """A slot's server that now serves another model logs a late label under that model's
    name; the label is of the old model's prediction and is tested in the old model's report
    (it was skipped as a record of another model)."""
    ws, _reg, bundle = fresh
    d0 = start_day()
    x, _y = images(3)
    preds = log_predictions(ws, bundle, x, when=d0 + timedelta(hours=12))
    at = d0 + DAY + timedelta(hours=1)
    feedback(ws, "after-promotion", *[{**label(p, at, 0), "model": "blood-2"} for p in preds])
    report = report_of(d0 + DAY, d0 + 2 * DAY)
    assert report["performance"]["labels"] == 3
    assert report["log"]["other_models"] == {}
    assert any("only the accuracy" in n for n in report["notes"])


def test_a_window_whose_labels_are_all_wrong_is_reported(
    fresh: tuple[Workspace, Registry, Path],
) -> None:
    """An accuracy of 0 (every label wrong: the case an alarm is for) is a report with its
    interval from 0; the run failed drawing the accuracy plot (a negative error bar)."""
    ws, _reg, bundle = fresh
    d0 = start_day()
    x, _y = images(3)
    preds = log_predictions(ws, bundle, x, when=d0 + timedelta(hours=12))
    at = d0 + timedelta(hours=13)
    wrong = [label(p, at, (p["output"]["label_index"] + 1) % 8) for p in preds]
    feedback(ws, "all-wrong", *wrong)
    perf = report_of(d0, d0 + DAY)["performance"]
    assert perf["labels"] == 3 and perf["accuracy"] == 0.0 and perf["interval_95"][0] == 0.0


def test_a_bad_label_lookback_is_one_clear_message(fresh: tuple[Workspace, Registry, Path]) -> None:
    res = runner.invoke(app, ["monitor", "run", "blood", "--label-lookback", "soon"])
    assert isinstance(res.exception, PomliaError)
    assert "--label-lookback 'soon' is not valid; expected a duration" in str(res.exception)
