"""The monitoring report's time figures, checked on the matplotlib objects they return: the
p-value history draws each test's own threshold (its Holm share of alpha, as the report's
table) and marks rejected points; the history sits on a UTC time axis of window ends with one
panel and the legend outside it; the volume shows every hour of the window, empty ones at 0."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_rgba

from pomlia_hpc.monitor.figures import (
    REJECTED_COLOUR,
    history_figure,
    thresholds,
    volume_bars,
    volume_figure,
)

UNTIL = "2026-12-05T11:19:03.749661+00:00"


def _test(name: str, p: float, weight: float, rejected: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "family": "input",
        "statistic": 0.5,
        "p_value": p,
        "weight": weight,
        "rejected": rejected,
        "detail": {},
    }


def _report(tests: list[dict[str, Any]], until: str = UNTIL, hours: float = 1) -> dict[str, Any]:
    end = datetime.fromisoformat(until)
    return {
        "alpha": 0.05,
        "window": {"since": (end - timedelta(hours=hours)).isoformat(), "until": until},
        "tests": tests,
        "volume": {"predictions": 0, "per_hour": []},
    }


#: The tester's alarm: weighted Holm with accuracy tested (shares 0.0025 and 0.0375).
ALARM = [
    _test("mmd", 0.000999, 0.05, rejected=True),
    _test("ks", 0.00109, 0.05, rejected=True),
    _test("classifier", 0.004, 0.05),  # above its share, below 0.05: not rejected
    _test("labels", 8.9e-05, 0.05, rejected=True),
    _test("confidence", 1.0, 0.05),
    _test("accuracy", 0.57, 0.75),
]


def _legend_texts(fig: Any) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_each_test_is_drawn_against_its_own_holm_share() -> None:
    report = _report(ALARM)
    assert thresholds(report) == pytest.approx(
        {"mmd": 0.0025, "ks": 0.0025, "classifier": 0.0025, "labels": 0.0025}
        | {"confidence": 0.0025, "accuracy": 0.0375}
    )
    fig = history_figure([], report)
    assert fig is not None
    ax = fig.axes[0]
    levels = sorted(
        line.get_ydata()[0] for line in ax.get_lines() if "threshold" in str(line.get_label())
    )
    assert levels == pytest.approx([0.0025, 0.0375])  # not the family-wise 0.05
    texts = _legend_texts(fig)
    assert any("Holm share" in t and t.endswith("accuracy") for t in texts)
    assert not any(t.startswith("alpha") for t in texts)
    plt.close(fig)


def test_rejected_points_are_marked_and_in_the_legend() -> None:
    fig = history_figure([], _report(ALARM))
    assert fig is not None
    ring = to_rgba(REJECTED_COLOUR)
    rejected, other = [], []
    for coll in fig.axes[0].collections:
        ys = [float(y) for _, y in coll.get_offsets()]
        rings = [tuple(c) for c in coll.get_edgecolors()]
        (rejected if ring in rings else other).extend(ys)
    assert sorted(rejected) == pytest.approx([8.9e-05, 0.000999, 0.00109])
    assert sorted(other) == pytest.approx([0.004, 0.57, 1.0])
    assert any(t.startswith("rejected") for t in _legend_texts(fig))
    plt.close(fig)


def test_an_untested_test_is_not_in_the_legend() -> None:
    tests = [_test("labels", 1.0, 0.5), _test("confidence", 1.0, 0.5), _test("accuracy", 0.17, 0)]
    fig = history_figure([], _report(tests))
    assert fig is not None
    texts = _legend_texts(fig)
    assert "labels" in texts and "confidence" in texts
    assert "accuracy" not in texts and not any(t.endswith(": accuracy") for t in texts)
    plt.close(fig)


def test_the_history_is_on_a_time_axis_with_one_panel_and_the_legend_outside() -> None:
    past = [
        SimpleNamespace(
            id=1,
            drift={"mmd": _test("mmd", 0.5, 0.2)},
            metrics={"window": {"since": "x", "until": "2026-12-04T02:00:00+00:00"}},
            created_at=None,
        ),
        # Recorded before the metrics kept the window: its creation time stands in.
        SimpleNamespace(
            id=2,
            drift={"mmd": _test("mmd", 0.3, 0.2)},
            metrics={},
            created_at=datetime(2026, 12, 5),
        ),
    ]
    fig = history_figure(past, _report([_test("mmd", 0.01, 1.0)]))
    assert fig is not None
    assert len(fig.axes) == 1  # no "statistic / its max" panel
    ax = fig.axes[0]
    mmd = ax.get_lines()[0]  # the first drawn: mmd's p-values
    expected = [
        datetime(2026, 12, 4, 2, tzinfo=UTC),
        datetime(2026, 12, 5, tzinfo=UTC),
        datetime.fromisoformat(UNTIL),
    ]
    assert list(mmd.get_xdata()) == pytest.approx([mdates.date2num(t) for t in expected])
    assert "2026-12-05 11:19:03 UTC" in ax.get_title()
    assert "UTC" in ax.get_xlabel()
    fig.canvas.draw()
    assert all("now" not in t.get_text() and "#" not in t.get_text() for t in ax.get_xticklabels())
    legend_box = ax.get_legend().get_window_extent()
    assert legend_box.x0 >= ax.get_window_extent().x1  # beside the axes, over no data
    plt.close(fig)


def test_every_hour_of_the_window_is_drawn_at_its_time() -> None:
    report = _report([], until="2026-12-05T11:19:03+00:00", hours=24)
    report["volume"] = {
        "predictions": 26,
        "per_hour": [["2026-12-05T06:00", 13], ["2026-12-05T11:00", 13]],
    }
    width, hours = volume_bars(report)
    assert width == 1 and len(hours) == 25  # 11:19 yesterday to 11:19 today touches 25 clock hours
    assert hours[0] == (datetime(2026, 12, 4, 11, tzinfo=UTC), 0)
    assert sum(n for _, n in hours) == 26 and sum(1 for _, n in hours if n) == 2
    fig = volume_figure(report)
    assert fig is not None
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == 25
    busy = [b for b in bars if b.get_height() > 0]
    assert [b.get_height() for b in busy] == [13, 13]
    assert busy[1].get_x() - busy[0].get_x() == pytest.approx(5 / 24)  # 5 h apart, not touching
    assert busy[0].get_x() == pytest.approx(mdates.date2num(datetime(2026, 12, 5, 6, tzinfo=UTC)))
    assert busy[0].get_width() == pytest.approx(1 / 24)
    since = datetime(2026, 12, 4, 11, 19, 3, tzinfo=UTC)
    assert ax.get_xlim() == pytest.approx(
        (mdates.date2num(since), mdates.date2num(since + timedelta(hours=24)))
    )
    assert "UTC" in ax.get_xlabel()
    plt.close(fig)


@pytest.mark.parametrize(
    ("since", "until", "width", "bars"),
    [
        ("2026-11-05T11:19:03+00:00", "2026-12-05T11:19:03+00:00", 24, 31),  # 30 days
        ("2023-12-05T00:00:00+00:00", "2026-12-05T00:00:00+00:00", 168, 157),  # 3 years
        ("0001-01-01T00:00:00+00:00", "2026-12-05T00:00:00+00:00", 168 * 212, 499),
        ("9999-12-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00", 24, 31),
    ],
)
def test_a_long_window_draws_a_bar_a_day_or_a_week(
    since: str, until: str, width: int, bars: int
) -> None:
    """A window of years (a backfill's `--since`) built and drew a bar per hour: minutes and
    gigabytes; a window ending at the end of year 9999 overflowed the hours after it."""
    report = _report([], until=until, hours=24)
    report["window"]["since"] = since
    last = datetime.fromisoformat(until) - timedelta(hours=1)  # the window's last hour
    report["volume"] = {"predictions": 5, "per_hour": [[f"{last:%Y-%m-%dT%H}:00", 5]]}
    got_width, got = volume_bars(report)
    assert (got_width, len(got)) == (width, bars)
    assert sum(n for _, n in got) == 5  # the last hour's predictions in a bar
    fig = volume_figure(report)
    assert fig is not None and len(fig.axes[0].patches) == bars
    plt.close(fig)


def test_a_window_without_predictions_has_no_volume_figure() -> None:
    assert volume_figure(_report([], hours=24)) is None


@pytest.mark.parametrize(
    "p_values", [(1e-6, 0.004, 1.0), (0.02, 0.09), (0.03, 0.5)], ids=["decades", "narrow", "one"]
)
def test_p_value_ticks_are_plain_numbers_over_any_range(p_values: tuple[float, ...]) -> None:
    """The log axis's labels are plain numbers (math text is parsed anew at every draw: a third
    of drawing the figure), decades and the ticks a narrow range labels between them alike."""
    # Weights summing to 1: thresholds inside the range (0.025 in the narrow one, no decade).
    tests = [_test(f"t{i}", p, 1 / len(p_values)) for i, p in enumerate(p_values)]
    fig = history_figure([], _report(tests))
    assert fig is not None
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [
        t.get_text()
        for t in ax.yaxis.get_ticklabels(which="both")
        if t.get_visible() and t.get_text()
    ]
    assert labels, p_values  # some tick is labelled whatever the range
    assert not [s for s in labels if "$" in s], labels
    assert all(float(s.replace("\N{MINUS SIGN}", "-")) > 0 for s in labels), labels
    plt.close(fig)
