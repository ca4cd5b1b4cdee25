"""What the monitor says about the metric it tests, on a real exported model whose card names
its task's metric: a metric it does not know is tested as accuracy with a note (`monitor run`
failed on it, drift tests and all), and `monitor history` (table and --json) and the workspace
report's chart show the metric the performance test compared with its label count (they showed
accuracy alone for an AUC task)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.registry import MonitorReport, Registry
from pomlia_hpc.report.pages_ops import monitor_chart
from pomlia_hpc.workspace import Workspace
from tests.monitor_support import demo_model, images, log_predictions

LABELS = 60


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, Registry, Path]]:
    """An exported demo model 'blood' with its reference and a window of 60 labelled
    predictions; yields (workspace, registry, the bundle's card file)."""
    home = tmp_path_factory.mktemp("metric-shown") / "home"
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    bundle = demo_model(reg, ws, n_ref=120)
    x, y = images(LABELS, seed=5, split="val")
    log_predictions(ws, bundle, x, labels=y)
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
    env: tuple[Workspace, Registry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AUC task's reports listed accuracy alone, the number its alarm did not read."""
    report = _monitor(env, monkeypatch, "auc")
    got = report["performance"]["metric_test"]
    res = CliRunner().invoke(app, ["monitor", "history", "blood", "--json", "--limit", "1"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["metric"] == "auc" and row["labels"] == LABELS
    assert row["metric_value"] == got["value"] and row["reference_value"] == got["reference_value"]
    assert row["reference_n"] == 120 and row["accuracy"] == report["performance"]["accuracy"]
    table = CliRunner().invoke(app, ["monitor", "history", "blood"], env={"COLUMNS": "250"})
    assert f"auc {got['value']:.3f} (n={LABELS})" in table.output, table.output
    # the workspace report's chart of the model's reports draws the AUC too
    with env[1].session() as s:
        rows = list(s.scalars(select(MonitorReport)))
    lines = [line.get_label() for ax in monitor_chart(rows, "blood").axes for line in ax.lines]
    assert "auc" in lines, lines
