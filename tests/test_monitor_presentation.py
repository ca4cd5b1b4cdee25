"""How a recorded monitoring report reads: `monitor show`, its own HTML page and the report's
Monitor page, for a report whose accuracy was reported but not tested (too few labels)."""

from __future__ import annotations

import html as html_mod
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.monitor.figures import history_p_values
from pomlia_hpc.monitor.html import render_html
from pomlia_hpc.registry import Model, MonitorReport, Registry
from pomlia_hpc.report import build_report
from pomlia_hpc.workspace import Workspace

#: As `monitor run` wrote it for 6 predictions with 6 labels (tester's workspace).
TESTS = [
    {"name": "labels", "family": "prediction", "statistic": 0.0, "p_value": 1.0, "weight": 0.5},
    {
        "name": "confidence",
        "family": "prediction",
        "statistic": 0.43,
        "p_value": 1.0,
        "weight": 0.5,
    },
    {
        "name": "accuracy",
        "family": "performance",
        "statistic": 0.8333,
        "p_value": 0.1692,
        "weight": 0.0,
    },
]


def _report() -> dict[str, Any]:
    tests = [{**t, "rejected": False, "detail": {}} for t in TESTS]
    return {
        "model": "m",
        "model_version": "abc",
        "deployment_id": None,
        "status": "ok",
        "alarm": False,
        "alpha": 0.05,
        "reasons": [],
        "notes": ["accuracy from 6 labels is reported but not tested (at least 30 labels needed)"],
        "window": {
            "since": "2026-12-04T02:12:25.821433+00:00",
            "until": "2026-12-05T02:12:25.821433+00:00",
        },
        "volume": {"predictions": 6, "per_hour": []},
        "tests": tests,
        "performance": None,
        "reference": {"accuracy": 0.9},
        "quality": {
            "requests": 6,
            "rejected_share": 0.0,
            "rejections_by_reason": {},
            "near_constant_share": None,
            "warnings": [],
        },
    }


def _recorded(workspace: Workspace, reg: Registry) -> int:
    """A model and one monitor report of it (row and JSON file); returns the report's id."""
    report = _report()
    path = workspace.path("reports", "m", "r1", "report.json")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(report))
    with reg.session() as s:
        model = Model(name="m", path="/nowhere")
        s.add(model)
        s.flush()
        row = MonitorReport(
            model_id=model.id,
            drift={t["name"]: t for t in report["tests"]},
            metrics={"status": "ok", "window": report["window"], "predictions": 6},
            triggered=False,
            report_path=str(path),
        )
        s.add(row)
        s.flush()
        return row.id


def _text(page: str) -> str:
    return " ".join(html_mod.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_an_untested_accuracy_shows_no_p_value_in_show(
    workspace: Workspace, reg: Registry, wide_console: None
) -> None:
    rid = _recorded(workspace, reg)
    res = CliRunner().invoke(app, ["monitor", "show", str(rid)])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "accuracy" in x and "performance" in x)
    assert "not tested" in line and "0.1692" not in line, line


def test_an_untested_accuracy_shows_no_p_value_on_its_page() -> None:
    report = _report()
    ref: Any = SimpleNamespace(source="val", n=10, accuracy=0.9, label_names=["a", "b"])
    page = _text(render_html(report, [], None, ref))
    assert "accuracy 0.8333 not tested" in page and "0.1692" not in page
    # The history plot draws no p-value of it against alpha.
    assert history_p_values([], report)["accuracy"] == [None]
    assert history_p_values([], report)["labels"] == [1.0]


def test_an_untested_accuracy_shows_no_p_value_on_the_monitor_page(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    _recorded(workspace, reg)
    res = build_report(reg, workspace, tmp_path / "r")
    page = _text((res.folder / "monitor.html").read_text())
    assert "accuracy not tested" in page and "p=0.169" not in page
    with reg.session() as s:
        assert s.scalar(select(MonitorReport.id)) is not None


def test_show_gives_the_window_in_whole_seconds_utc(
    workspace: Workspace, reg: Registry, wide_console: None
) -> None:
    """The header showed `2026-12-04T02:12:25.821433+00:00`."""
    rid = _recorded(workspace, reg)
    res = CliRunner().invoke(app, ["monitor", "show", str(rid)])
    said = " ".join(res.output.split())
    assert "window 2026-12-04 02:12:25 UTC → 2026-12-05 02:12:25 UTC" in said, said
    assert ".821433" not in said


def test_the_page_shows_no_python_values_and_readable_times() -> None:
    """The page read `near-constant inputs | None`, `rejections by reason | {}` and ISO times
    with microseconds in its title and window."""
    ref: Any = SimpleNamespace(source="val", n=10, accuracy=0.9, label_names=["a", "b"])
    raw = render_html(_report(), [], None, ref)
    title = re.search(r"<title>(.*?)</title>", raw)
    assert title is not None and title.group(1) == "pomlia monitor: m 2026-12-05 02:12:25 UTC"
    page = _text(raw)
    assert "window 2026-12-04 02:12:25 UTC → 2026-12-05 02:12:25 UTC" in page
    assert "near-constant inputs -" in page and "rejections by reason none" in page
    assert "None" not in page and "{}" not in page and ".821433" not in page
    report = _report()
    report["quality"]["rejections_by_reason"] = {"too_large": 2, "not_an_image": 1}
    page = _text(render_html(report, [], None, ref))
    assert "rejections by reason not_an_image: 1, too_large: 2" in page
