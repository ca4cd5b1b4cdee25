"""The monitoring report's time figures, as matplotlib figures (``html`` embeds them as PNGs):
each test's p-value over the history of reports, against the threshold the report judged it
by, and the predictions per hour of the window.

Both draw on a real time axis in UTC: reports come at irregular times (a rerun, a missed
night) and hours without predictions are an outage to see, not a gap to close up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from pomlia_hpc.monitor.history import is_tested
from pomlia_hpc.plotting import new_figure
from pomlia_hpc.registry import MonitorReport
from pomlia_hpc.times import as_utc

#: Where p-values are clipped on the log axis (a p-value of 0 cannot be drawn).
P_FLOOR = 1e-6
#: Ring colour of a rejected test's point.
REJECTED_COLOUR = "#c0392b"
#: At most this many ticks on a time axis.
MAX_TICKS = 10
_THRESHOLD_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)))


def _history_points(
    past: Sequence[MonitorReport], report: dict[str, Any]
) -> tuple[list[datetime | None], list[dict[str, Any]]]:
    """(window end per report, {test name: test dict} per report), oldest first, current last."""
    times, tests = [], []
    for row in past:
        window = (row.metrics or {}).get("window") or {}
        # Reports recorded before the window was kept in the metrics: their creation time.
        times.append(as_utc(window.get("until")) or as_utc(row.created_at))
        tests.append(dict(row.drift or {}))
    times.append(as_utc(report["window"]["until"]))
    tests.append({t["name"]: t for t in report["tests"]})
    return times, tests


def history_times(past: Sequence[MonitorReport], report: dict[str, Any]) -> list[datetime | None]:
    """Each report's window end (UTC), oldest first, ``report`` last: the history plot's x."""
    return _history_points(past, report)[0]


def history_p_values(
    past: Sequence[MonitorReport], report: dict[str, Any]
) -> dict[str, list[float | None]]:
    """The p-value of each test per report (oldest first, ``report`` last), as the history
    plot draws them against their thresholds: None where the test did not run or was not
    tested (its p-value means nothing, :func:`~pomlia_hpc.monitor.history.is_tested`)."""
    _, tests = _history_points(past, report)
    names = sorted({n for t in tests for n in t})
    out: dict[str, list[float | None]] = {}
    for name in names:
        found = [t.get(name) for t in tests]
        out[name] = [
            t.get("p_value") if isinstance(t, dict) and is_tested(t) else None for t in found
        ]
    return out


def thresholds(report: dict[str, Any]) -> dict[str, float]:
    """Each tested test's threshold in ``report``: its share of the family-wise alpha
    (``weight * alpha``, the first step of the weighted Holm procedure; the report's table
    shows the same "alpha share"). Tests that were not tested have none."""
    return {t["name"]: t["weight"] * report["alpha"] for t in report["tests"] if is_tested(t)}


def _num(when: datetime) -> float:
    """A time as matplotlib's date number (days), so axes take floats (and type-check)."""
    return float(mdates.date2num(when))


def _xlim(times: Sequence[datetime]) -> tuple[float, float]:
    """Time limits with a margin, at least an hour wide (one report is one instant)."""
    lo, hi = min(times), max(times)
    pad = max((hi - lo) * 0.05, timedelta(minutes=10))
    return _num(lo - pad), _num(hi + pad)


def _draw_thresholds(ax: Any, report: dict[str, Any], drawn: set[str]) -> list[Line2D]:
    """One black line per distinct threshold (tests often share one), named by its tests."""
    by_value: dict[float, list[str]] = {}
    for name, value in thresholds(report).items():
        if name in drawn:
            by_value.setdefault(value, []).append(name)
    handles = []
    for i, (value, names) in enumerate(sorted(by_value.items())):
        style = _THRESHOLD_STYLES[i % len(_THRESHOLD_STYLES)]
        label = (
            f"this report's threshold {value:.3g} (Holm share of alpha {report['alpha']:g}): "
            + ", ".join(names)
        )
        handles.append(ax.axhline(max(value, P_FLOOR), color="k", ls=style, lw=1, label=label))
    return handles


def history_figure(past: Sequence[MonitorReport], report: dict[str, Any]) -> Figure | None:
    """Each test's p-value (log axis) at each report's window end (UTC), with the threshold
    the current report judged it by (its Holm share of alpha; a line per distinct value);
    rejected points are filled and ringed red, the others hollow. Only tests with a point
    are drawn and listed. None when no report has a tested p-value."""
    times, tests = _history_points(past, report)
    p_values = history_p_values(past, report)
    with new_figure(figsize=(9, 3.6)) as (fig, ax):
        test_handles: list[Any] = []
        drawn: set[str] = set()
        shown: list[datetime] = []
        for i, name in enumerate(sorted(p_values)):
            pts = [
                (when, max(p, P_FLOOR), bool(t.get(name, {}).get("rejected")))
                for when, p, t in zip(times, p_values[name], tests, strict=True)
                if when is not None and p is not None
            ]
            if not pts:
                continue  # never tested (accuracy from too few labels): not in the legend either
            drawn.add(name)
            shown += [w for w, _, _ in pts]
            colour = f"C{i % 10}"
            ax.plot([_num(w) for w, _, _ in pts], [p for _, p, _ in pts], color=colour, lw=1)
            ax.scatter(
                [_num(w) for w, _, r in pts if not r], [p for _, p, r in pts if not r],
                s=36, facecolors="white", edgecolors=colour, linewidths=1.5, zorder=3,
            )  # fmt: skip
            ax.scatter(
                [_num(w) for w, _, r in pts if r], [p for _, p, r in pts if r],
                s=64, facecolors=colour, edgecolors=REJECTED_COLOUR, linewidths=2.2, zorder=4,
            )  # fmt: skip
            test_handles.append(
                Line2D([], [], color=colour, marker="o", mfc="white", mec=colour, label=name)
            )
        if not drawn:
            plt.close(fig)
            return None
        handles = test_handles + _draw_thresholds(ax, report, drawn)
        handles.append(
            Line2D([], [], ls="", marker="o", ms=8, mfc="grey", mec=REJECTED_COLOUR, mew=2.2,
                   label="rejected (filled, red ring)")
        )  # fmt: skip
        handles.append(
            Line2D(
                [], [], ls="", marker="o", mfc="white", mec="grey", label="not rejected (hollow)"
            )
        )
        ax.set_yscale("log")
        # Plain tick labels (1e-06, 2e-02, 1), decades and the in-between ticks a narrow range
        # labels alike: the default's math text is parsed anew at each draw, a third of drawing
        # this figure.
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=True))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        ax.set_ylabel("p-value")
        _time_axis(ax, shown, times[-1])
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return fig


def _time_axis(ax: Any, shown: Sequence[datetime], current: datetime | None) -> None:
    """UTC time axis over the reports drawn; the current report is a grey line, its time
    in the title (a tick of its own would overprint a report minutes before it)."""
    ax.set_xlim(*_xlim(shown))
    loc = mdates.AutoDateLocator(tz=UTC, maxticks=MAX_TICKS)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc, tz=UTC))
    if current is not None:
        ax.axvline(_num(current), color="grey", lw=0.8, alpha=0.6, zorder=0)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("window end (UTC)")
    ax.set_title(
        "tests over the history of reports"
        + (f"; this report: {current:%Y-%m-%d %H:%M:%S} UTC (grey line)" if current else ""),
        fontsize=10,
    )


#: The most bars the volume figure draws: past it each bar is a day, then a week or more (a
#: backfill's window of years drew, and built, one bar per hour: minutes and gigabytes).
MAX_VOLUME_BARS = 500
_BAR_HOURS = (1, 24, 24 * 7)


def volume_bars(report: dict[str, Any]) -> tuple[int, list[tuple[datetime, int]]]:
    """(hours per bar, [(bar start UTC, predictions)]) over every hour the window touches,
    oldest first, 0 for a bar without predictions (the report lists only hours with some).
    A bar is an hour for a window of up to :data:`MAX_VOLUME_BARS` hours, else a day, a week
    or several weeks, whichever keeps to that many bars."""
    since = as_utc(report["window"]["since"])
    until = as_utc(report["window"]["until"])
    counts = {as_utc(h): int(n) for h, n in report["volume"]["per_hour"]}
    if since is None or until is None:
        return 1, sorted((h, n) for h, n in counts.items() if h is not None)
    start = since.replace(minute=0, second=0, microsecond=0)
    hours = math.ceil((until - start) / timedelta(hours=1))
    week = _BAR_HOURS[-1]
    width = next(
        (b for b in _BAR_HOURS if hours <= b * MAX_VOLUME_BARS),
        week * math.ceil(hours / (week * MAX_VOLUME_BARS)),
    )
    bars = [0] * math.ceil(hours / width)
    for hour, n in counts.items():
        if hour is not None and start <= hour < until:
            bars[(hour - start) // timedelta(hours=width)] += n
    return width, [(start + timedelta(hours=width * i), n) for i, n in enumerate(bars)]


def volume_figure(report: dict[str, Any]) -> Figure | None:
    """Predictions per hour (per day or week for a long window: :func:`volume_bars`) as bars
    on a UTC time axis over the whole window, bars without predictions at 0. None when the
    window holds no predictions."""
    width, hours = volume_bars(report)
    if not any(n for _, n in hours):
        return None
    unit = {1: "hour", 24: "day", 24 * 7: "week"}.get(width, f"{width // (24 * 7)} weeks")
    with new_figure(figsize=(8, 2.6)) as (fig, ax):
        ax.bar(
            [_num(h) for h, _ in hours],
            [n for _, n in hours],
            width=width / 24,  # in matplotlib's date unit (days)
            align="edge",
            color="C2",
            edgecolor="white",
            linewidth=0.5,
        )
        since, until = as_utc(report["window"]["since"]), as_utc(report["window"]["until"])
        if since is not None and until is not None:
            ax.set_xlim(_num(since), _num(until))
        loc = mdates.AutoDateLocator(tz=UTC, maxticks=MAX_TICKS)
        ax.xaxis.set_major_locator(loc)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc, tz=UTC))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel(f"{unit} (UTC)")
        ax.set_ylabel(f"predictions / {unit}")
        empty = sum(1 for _, n in hours if n == 0)
        bars = f"{unit}s" if width in _BAR_HOURS else f"bars of {unit}"
        ax.set_title(f"volume ({empty} of {len(hours)} {bars} without predictions)")
        return fig
