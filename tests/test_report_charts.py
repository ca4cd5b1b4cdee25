"""The report's charts: each axis labelled with its unit, integer axes with integer ticks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from pomlia_hpc.fingerprint.validation import write_curves
from pomlia_hpc.registry import Dataset, DatasetVersion, MonitorReport, Registry, Run, Task
from pomlia_hpc.report.figures import MIN_SPAN, best_so_far_figure, series_figure
from pomlia_hpc.report.pages_learn import studies_page
from pomlia_hpc.report.pages_ops import COUNT_UNIT, SHARE_UNIT, monitor_chart, monitor_panels
from pomlia_hpc.workspace import Workspace


def test_monitor_history_puts_accuracy_and_counts_on_separate_labelled_axes() -> None:
    """Accuracy (0 to 1) and prediction counts (hundreds) shared one unlabelled y axis."""
    numbers = [{"accuracy": 0.8, "predictions": 412.0}, {"accuracy": 0.7, "n": 100.0}]
    panels = monitor_panels(numbers)
    assert panels == {
        "share (0 to 1)": {"accuracy": [0.8, 0.7]},
        "count (predictions, labels)": {"n": [None, 100.0], "predictions": [412.0, None]},
    }
    times = [datetime(2026, 12, 1, 2, tzinfo=UTC), datetime(2026, 12, 2, 2, tzinfo=UTC)]
    fig = series_figure(times, panels, [False, True], "m")
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["share (0 to 1)", "count (predictions, labels)"]
    named = [[str(x.get_label()) for x in ax.get_lines()] for ax in fig.axes]
    assert [[n for n in names if not n.startswith("_")] for names in named] == [
        ["accuracy", "alarm"],  # the alarm: a marked line with a legend entry
        ["n", "predictions"],
    ]


def _xticks(fig: Figure) -> list[float]:
    """The x ticks within the axis's limits, as drawn."""
    fig.canvas.draw()
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    return [float(t) for t in ax.get_xticks() if lo <= t <= hi]


def test_trials_are_drawn_with_integer_ticks() -> None:
    """Two trials were drawn with ticks 1.0, 1.2, 1.4, ..."""
    fig = best_so_far_figure([0.5, 0.9], [False, False], "auc", "study st")
    ticks = _xticks(fig)
    assert ticks and all(t.is_integer() for t in ticks), ticks


def test_epochs_are_drawn_with_integer_ticks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One epoch was drawn with ticks 0.96, 0.98, 1.00, ..."""
    drawn: list[Figure] = []
    real = plt.close

    def keep(fig: Any = None) -> None:
        drawn.append(fig)

    monkeypatch.setattr(plt, "close", keep)
    write_curves(tmp_path, {"train": [0.7], "val": [0.8], "best_epoch": 1, "objective": "x"})
    monkeypatch.setattr(plt, "close", real)
    ticks = _xticks(drawn[0])
    assert ticks and all(t.is_integer() for t in ticks), ticks
    real(drawn[0])


def _report(
    created: datetime, until: str, status: str, n: int, labels: int | None
) -> MonitorReport:
    perf = None if labels is None else {"labels": labels, "accuracy": 0.25}
    return MonitorReport(
        model_id=1,
        drift={},
        metrics={
            "status": status,
            "window": {"since": until, "until": until},
            "predictions": n,
            "performance": perf,
        },
        triggered=status == "alarm",
        created_at=created,
    )


def _x_dates(line: Any) -> list[datetime]:
    return [mdates.num2date(x) for x in mdates.date2num(line.get_xdata())]


def test_monitor_history_is_drawn_over_each_window_end() -> None:
    """The chart was drawn over when each report was made (a January window between two
    December reports, its 0 predictions drawn; two reports of one minute with one tick label;
    no year or zone), the share panel auto-scaled, no labels series, an alarm a pale line with
    no legend entry."""
    dec5 = datetime(2026, 12, 5, 11, 16, tzinfo=UTC)
    items = [
        _report(dec5, "2026-12-05T11:16:11+00:00", "ok", 13, 12),
        _report(dec5.replace(minute=18), "2026-01-02T00:00:00+00:00", "empty", 0, None),
        _report(dec5.replace(minute=19), "2026-12-05T11:19:03+00:00", "alarm", 53, 52),
    ]
    fig = monitor_chart(items, "m")
    top, bottom = fig.axes
    assert "UTC" in bottom.get_xlabel()
    assert [ax.get_ylabel() for ax in fig.axes] == [SHARE_UNIT, COUNT_UNIT]
    assert top.get_ylim() == (0.0, 1.0) and bottom.get_ylim()[0] == 0.0
    lines = {str(x.get_label()): x for x in bottom.get_lines()}
    ends = [
        datetime(2026, 1, 2, tzinfo=UTC),
        datetime(2026, 12, 5, 11, 16, 11, tzinfo=UTC),
        datetime(2026, 12, 5, 11, 19, 3, tzinfo=UTC),
    ]
    assert [d.replace(microsecond=0) for d in _x_dates(lines["predictions"])] == ends
    # the empty window is no 0 on the chart, but marked
    assert np.isnan(lines["predictions"].get_ydata()[0])
    assert list(lines["labels"].get_ydata()[1:]) == [12.0, 52.0]
    legend = [t.get_text() for t in top.get_legend().get_texts()]
    assert "alarm" in legend and any(t.startswith("empty window") for t in legend)


def test_one_trial_and_equal_trials_keep_the_metric_range() -> None:
    """One trial drew no best-so-far line (a one-point step) on a -0.04..0.04 axis; two equal
    trials blew the axis up to 0.112-0.124."""
    one = best_so_far_figure([0.0], [False], "auc", "s", (0.0, 1.0))
    ax = one.axes[0]
    best = [x for x in ax.get_lines() if x.get_label() == "best so far"]
    assert best and best[0].get_marker() not in ("None", None, "")
    lo, hi = ax.get_ylim()
    assert lo <= 0.0 and hi >= 1.0
    equal = best_so_far_figure([0.1176, 0.1176], [False, False], "loss", "s").axes[0]
    lo, hi = equal.get_ylim()
    assert hi - lo >= MIN_SPAN


def test_studies_are_newest_first_and_titled_with_task_and_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Studies were listed in the order of their first trial (s2 before s1, whose trial is the
    newest), and their figures titled only ``study s1``."""
    import pomlia_hpc.report.figures as figures

    ws = Workspace(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'r.db'}", cluster_profile="debug")
    ws.create()
    reg = Registry.open(ws.db_url)
    with reg.session() as s:
        ds = Dataset(name="blood")
        s.add(ds)
        s.flush()
        v = DatasetVersion(dataset_id=ds.id, version="abc123", store_path="/x")
        s.add(v)
        s.flush()
        task = Task(name="t", dataset_version_id=v.id, metric="acc", task_type="multiclass")
        s.add(task)
        s.flush()
        for study in ("s2", "s2", "s1"):
            s.add(
                Run(
                    task_id=task.id, study=study, config={}, metrics={"objective": 0.5}, status="ok"
                )
            )
    titles: list[str] = []
    real = figures.best_so_far

    def spy(*a: Any) -> bytes:
        titles.append(a[3])
        return real(*a)

    monkeypatch.setattr(figures, "best_so_far", spy)
    page = studies_page(reg, ws, tmp_path) or ""
    assert page.index("<h2>Study s1</h2>") < page.index("<h2>Study s2</h2>")
    assert titles == ["study s1: task t, data blood@abc123", "study s2: task t, data blood@abc123"]


def test_the_monitor_table_lists_the_newest_reports_and_the_chart_all(
    workspace: Workspace, reg: Registry, tmp_path: Path, browser: Any, monkeypatch: Any
) -> None:
    """The monitor page listed every report of every model: an hourly monitor of 3 models
    for 4 months (9,000 reports) made a 2 MB page, growing for ever, where the help and the
    guide say the pages are bounded."""
    from datetime import timedelta

    from pomlia_hpc.registry import Model
    from pomlia_hpc.report import build_report, pages_ops

    monkeypatch.setattr(pages_ops, "MAX_REPORT_ROWS", 3, raising=False)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    with reg.session() as s:
        model = Model(name="champ", path="/m.pt", lineage={})
        s.add(model)
        s.flush()
        for i in range(5):
            s.add(
                MonitorReport(
                    model_id=model.id,
                    drift={},
                    metrics={"status": "ok", "predictions": 100 + i, "accuracy": 0.9},
                    triggered=False,
                    created_at=start + timedelta(hours=i),
                )
            )
    res = build_report(reg, workspace, tmp_path / "r")
    seen = browser.check(res.folder / "monitor.html")
    assert not seen.console_errors and not seen.broken_images
    cells = browser.driver.execute_script(
        "return Array.from(document.querySelectorAll('tbody tr')).map(r => r.cells[4].innerText)"
    )
    assert cells == ["102", "103", "104"]  # the newest 3 predictions counts, oldest first
    assert (
        "The newest 3 of 5 reports; 2 older not listed (the chart shows them all): "
        "pomlia monitor history champ --limit 5." in seen.text
    )


def test_a_figure_that_fails_to_draw_is_closed_all_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chart whose drawing raised was left open in pyplot's registry: each one kept its
    memory until the process ended (and pyplot warns after 20)."""
    from pomlia_hpc.report.figures import figure_bytes

    fig = plt.figure()
    number = fig.number

    def fails(*_a: Any, **_k: Any) -> None:
        raise ValueError("cannot draw")

    monkeypatch.setattr(fig, "savefig", fails)
    with pytest.raises(ValueError, match="cannot draw"):
        figure_bytes(fig)
    assert number not in plt.get_fignums()
