"""What the monitor says about the metric it tests, on a real exported model whose card names
its task's metric: a metric it does not know is tested as accuracy with a note (`monitor run`
failed on it, drift tests and all), and `monitor history` (table and --json) and the workspace
report's chart show the metric the performance test compared with its label count (they showed
accuracy alone for an AUC task); a window of late labels alone names the metric it tests."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.models.taskmetric import model_metric
from pomlia_hpc.registry import Model, MonitorReport, Registry, Task
from pomlia_hpc.report.pages_ops import monitor_chart
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import row_task
from tests.monitor_support import append_lines, demo_model, images, log_predictions

LABELS = 60
#: Late labels: predictions made this long before the fixture, labelled ``LATE`` before it.
EARLY, LATE = timedelta(hours=48), timedelta(hours=30)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, Registry, Path]]:
    """An exported demo model 'blood' with its reference and a window of 60 labelled
    predictions; 40 predictions of two days ago whose labels came 30 hours ago (outside the
    24 hours before now that the other runs test); yields (workspace, registry, the bundle's
    card file)."""
    home = tmp_path_factory.mktemp("metric-shown") / "home"
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    bundle = demo_model(reg, ws, n_ref=120)
    x, y = images(LABELS, seed=5, split="val")
    log_predictions(ws, bundle, x, labels=y)
    now = datetime.now(UTC)
    x, y = images(40, seed=6, split="val")
    early = log_predictions(ws, bundle, x, when=now - EARLY)
    late = (now - LATE).isoformat()
    feedback = [
        {"type": "feedback", "id": os.urandom(16).hex(), "time": late, "prediction_id": r["id"]}
        | {"model": "blood", "model_version": r["model_version"], "deployment": None}
        | {"label": f"class_{t}", "label_index": int(t)}
        for r, t in zip(early, y, strict=True)
    ]
    path = ws.path("logs", "predictions", "blood", "late-labels.jsonl")
    append_lines(path, *feedback)
    path.chmod(0o600)
    yield ws, reg, bundle / "card.json"
    reg.dispose()


def _monitor(
    env: tuple[Workspace, Registry, Path], monkeypatch: pytest.MonkeyPatch, metric: str
) -> dict[str, Any]:
    """`monitor run blood --json` with the card's task metric set to ``metric``: the report."""
    ws, _, card_path = env
    card = json.loads(card_path.read_text())
    card["task"]["metric"] = metric
    card_path.write_text(json.dumps(card))
    monkeypatch.setenv("POMLIA_HOME", str(ws.home))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    res = CliRunner().invoke(app, ["monitor", "run", "blood", "--json"])
    assert res.exit_code == 0, res.output
    return dict(json.loads(res.stdout))


def test_a_metric_the_monitor_does_not_know_is_tested_as_accuracy_with_a_note(
    env: tuple[Workspace, Registry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card naming a metric the monitor does not test ('balanced_acc': a task record written
    by another version, or edited) made `monitor run` exit 2 with "metric 'balanced_acc' is
    not known" naming no model or file, and a nightly chain tested nothing, drift included."""
    report = _monitor(env, monkeypatch, "balanced_acc")
    perf = report["performance"]
    assert perf["metric"] == "acc" and perf["labels"] == LABELS
    weighted = {t["name"]: t["weight"] for t in report["tests"] if t["family"] == "performance"}
    assert list(weighted) == ["accuracy"] and weighted["accuracy"] > 0
    assert {"mmd", "ks"} <= {t["name"] for t in report["tests"]}  # the drift tests ran
    note = report["notes"][0]
    assert "'balanced_acc'" in note and str(env[2]) in note, note
    assert "accuracy is tested instead" in note and "acc, auc, f1_macro" in note, note
    page = Path(report_path(env[1], report)).with_name("report.html").read_text()
    assert "balanced_acc" in page


def report_path(reg: Registry, report: dict[str, Any]) -> str:
    """The JSON file of the newest recorded report (the one ``report`` is)."""
    with reg.session() as s:
        row = s.scalars(select(MonitorReport).order_by(MonitorReport.id.desc()).limit(1)).one()
        assert row.metrics["window"] == report["window"]
        return row.report_path


def test_history_shows_the_metric_the_monitor_tested_with_its_label_count(
    env: tuple[Workspace, Registry, Path], monkeypatch: pytest.MonkeyPatch, wide_console: None
) -> None:
    """An AUC task's reports listed accuracy alone, the number its alarm did not read. (The
    task's metric comes from the bundle's card, recorded at export from a task, and an AUC
    task's labelled predictions keep their probabilities through the log's join.)"""
    report = _monitor(env, monkeypatch, "auc")
    got = report["performance"]["metric_test"]
    assert report["performance"]["metric"] == "auc" and got["labels"] == LABELS
    # the model has no task record: its card decides, as for the gate, and the report says so
    assert report["notes"][0] == (
        f"model blood has no task record: auc, the metric the bundle's card ({env[2]}) names, "
        "is tested by the monitor and compared by the champion/challenger gate"
    ), report["notes"]
    weighted = {t["name"]: t["weight"] for t in report["tests"] if t["family"] == "performance"}
    assert weighted["auc"] > 0 and weighted["accuracy"] == 0
    page = Path(report_path(env[1], report)).with_name("report.html").read_text()
    assert "auc (the task's metric, which is tested)" in page
    res = CliRunner().invoke(app, ["monitor", "history", "blood", "--json", "--limit", "1"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["metric"] == "auc" and row["labels"] == LABELS
    assert row["metric_value"] == got["value"] and row["reference_value"] == got["reference_value"]
    assert row["reference_n"] == 120 and row["accuracy"] == report["performance"]["accuracy"]
    # wide_console: COLUMNS does not reach the console made at import, and the table wrapped
    # the cell where the report's path was long (CI: "auc 0.398" and "(n=60)" on two lines).
    table = CliRunner().invoke(app, ["monitor", "history", "blood"])
    assert f"auc {got['value']:.3f} (n={LABELS})" in table.output, table.output
    shown = CliRunner().invoke(app, ["monitor", "show", str(row["id"])])
    assert f"{LABELS} predictions, {LABELS} labels (auc tested)" in shown.output, shown.output
    # the workspace report's chart of the model's reports draws the AUC too
    with env[1].session() as s:
        rows = list(s.scalars(select(MonitorReport)))
    lines = [line.get_label() for ax in monitor_chart(rows, "blood").axes for line in ax.lines]
    assert "auc" in lines, lines


def test_a_window_of_late_labels_alone_names_the_metric_it_tests(
    env: tuple[Workspace, Registry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Labels that came a day after their predictions, in a window without traffic: an AUC
    task's report said both "auc: its test decides; accuracy is ... not tested" and "only the
    accuracy on the labels that arrived in it is tested"."""
    ws, _, card_path = env
    # the late labels' own hour (the fixture's log times are its own, not this test's)
    late = datetime.fromisoformat(_late_time(ws))
    since, until = (late + timedelta(minutes=m) for m in (-30, 30))
    card = json.loads(card_path.read_text())
    card["task"]["metric"] = "auc"
    card_path.write_text(json.dumps(card))
    monkeypatch.setenv("POMLIA_HOME", str(ws.home))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    args = ["monitor", "run", "blood", "--json"]
    args += ["--since", since.isoformat(), "--until", until.isoformat()]
    res = CliRunner().invoke(app, args)
    assert res.exit_code in (0, 1), res.output
    report = json.loads(res.stdout)
    assert report["volume"]["predictions"] == 0 and report["performance"]["labels"] == 40
    assert report["performance"]["metric"] == "auc"
    notes = " ".join(report["notes"])
    assert "only the auc on the labels that arrived in it is tested" in notes, notes
    assert "only the accuracy" not in notes, notes


def _late_time(ws: Workspace) -> str:
    """The time the fixture's late labels carry."""
    path = ws.path("logs", "predictions", "blood", "late-labels.jsonl")
    return str(json.loads(path.read_text().splitlines()[0])["time"])


def test_the_task_record_decides_the_metric_as_for_the_gate_and_a_differing_card_is_said(
    env: tuple[Workspace, Registry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitor took the metric from the bundle's card (written at export), the gate from
    the task record: a bundle exported before cards recorded the metric (and reused by every
    later export of the same weights) was tested by accuracy, without a word, while the gate
    compared the task's AUC. The record now decides for both, and the card's other metric, or
    its lack of one, is named in a note."""
    ws, reg, card_path = env
    task_id = row_task(reg, "blood-task")
    with reg.session() as s:
        s.execute(update(Task).where(Task.id == task_id).values(metric="auc"))
        s.execute(update(Model).where(Model.name == "blood").values(task_id=task_id))
    try:
        card = json.loads(card_path.read_text())
        card["task"].pop("metric", None)  # as an export before cards recorded it
        card_path.write_text(json.dumps(card))
        monkeypatch.setenv("POMLIA_HOME", str(ws.home))
        monkeypatch.delenv("POMLIA_DB_URL", raising=False)
        res = CliRunner().invoke(app, ["monitor", "run", "blood", "--json"])
        assert res.exit_code in (0, 1), res.output
        report = json.loads(res.stdout)
        assert report["performance"]["metric"] == "auc"
        note = report["notes"][0]
        assert f"the bundle's card ({card_path}) names no task metric" in note, note
        assert "its task blood-task's record 'auc': auc is tested" in note, note
    finally:
        with reg.session() as s:  # the other tests' model has no task
            s.execute(update(Model).where(Model.name == "blood").values(task_id=None))


def test_a_card_naming_the_task_metric_in_another_case_gets_no_note() -> None:
    """A card's `AUC` for a task recorded as `auc` (the metric is read in any case) was said
    in a note as a card naming another metric than its task's."""
    same = model_metric("m", {"task": {"metric": "AUC"}}, "card.json", ("t", "auc"))
    assert (same.metric, same.note) == ("auc", None)
    other = model_metric("m", {"task": {"metric": "acc"}}, "card.json", ("t", "auc"))
    assert other.metric == "auc" and other.note is not None and "names 'acc'" in other.note
