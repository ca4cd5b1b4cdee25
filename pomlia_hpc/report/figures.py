"""The report's figures as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator

from pomlia_hpc.plotting import new_figure


def figure_bytes(fig: Figure) -> bytes:
    """``fig`` as PNG bytes (90 dpi), the figure closed."""
    return _bytes(fig)


def _bytes(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    finally:  # a figure that failed to draw stays in pyplot's registry (its memory) otherwise
        plt.close(fig)
    return buf.getvalue()


def heatmap(
    matrix: np.ndarray,
    labels: Sequence[str],
    title: str,
    xlabel: str = "",
    ylabel: str = "",
) -> bytes:
    """:func:`heatmap_figure` as PNG bytes."""
    return _bytes(heatmap_figure(matrix, labels, title, xlabel, ylabel))


#: Up to this many rows the heatmap writes each cell's value in it; beyond, the cells are too
#: small for a readable number and the colour bar alone reads the values.
HEATMAP_MAX_NUMBERS = 14
#: The cells' numbers, in points: the figure is shown at about the page's width (560 px), so
#: this stays as large as the axis labels.
HEATMAP_NUMBER_SIZE = 8


def heatmap_figure(
    matrix: np.ndarray,
    labels: Sequence[str],
    title: str,
    xlabel: str = "",
    ylabel: str = "",
) -> Figure:
    """A labelled square heatmap (e.g. distances between dataset fingerprints): row i,
    column j is ``matrix[i, j]`` (unitless here; the caller's title names the measure), each
    cell's value written to 2 decimals while there are at most :data:`HEATMAP_MAX_NUMBERS`
    rows."""
    n = len(labels)
    with new_figure(figsize=(max(4.5, 0.7 * n + 2.5), max(3.8, 0.6 * n + 2))) as (fig, ax):
        im = ax.imshow(matrix, cmap="viridis_r")
        ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        if n <= HEATMAP_MAX_NUMBERS:
            # One precision for every cell (2 decimals), so the numbers compare at a glance.
            middle = float(np.nanmean(matrix)) if np.isfinite(matrix).any() else 0.0
            for i in range(n):
                for j in range(n):
                    ax.text(
                        j,
                        i,
                        f"{matrix[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=HEATMAP_NUMBER_SIZE,
                        color="white" if matrix[i, j] > middle else "black",
                    )
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(title, fontsize=10)
        return fig


def best_so_far(
    objectives: Sequence[float | None],
    crashed: Sequence[bool],
    metric: str,
    title: str,
    bounds: tuple[float, float] | None = None,
) -> bytes:
    """:func:`best_so_far_figure` as PNG bytes."""
    return _bytes(best_so_far_figure(objectives, crashed, metric, title, bounds))


#: The least y span of a best-so-far curve of an unbounded metric (in its units, relative to
#: the values' size): equal trials would otherwise blow rounding noise up to the whole axis.
MIN_SPAN = 0.1


def best_so_far_figure(
    objectives: Sequence[float | None],
    crashed: Sequence[bool],
    metric: str,
    title: str,
    bounds: tuple[float, float] | None = None,
) -> Figure:
    """Each finished trial's validation metric (dots; crashed trials as red x at the bottom;
    trials still running are left out) and the best so far (line; a ring where it has one
    point, which a step would not draw), in trial order. ``bounds``: the metric's natural range
    (0 to 1 for an accuracy or an AUC), which the y axis shows whole; else the axis spans at
    least :data:`MIN_SPAN` times the values' size (at least 1)."""
    with new_figure(figsize=(6, 3.2)) as (fig, ax):
        xs = np.arange(1, len(objectives) + 1)
        # Trials are whole: few get a tick each (a locator falls back to 0.96, 0.98, ... around
        # one trial), more integer ticks only.
        ax.xaxis.set_major_locator(
            FixedLocator(xs.tolist()) if len(xs) <= 12 else MaxNLocator(integer=True)
        )
        ok = [(x, y) for x, y in zip(xs, objectives, strict=True) if y is not None]
        bad = [x for x, c in zip(xs, crashed, strict=True) if c]
        lo, hi = _y_range([y for _x, y in ok], bounds)
        if ok:
            ok_x, ok_y = zip(*ok, strict=True)
            ax.scatter(ok_x, ok_y, s=14, color="#4c72b0", label="trial", zorder=3)
            best, line = -np.inf, []
            for y in objectives:
                if y is not None:
                    best = max(best, y)
                line.append(best if np.isfinite(best) else np.nan)
            alone = int(np.isfinite(line).sum()) == 1
            ax.step(
                xs,
                line,
                where="post",
                color="#dd8452",
                label="best so far",
                marker="o" if alone else None,
                ms=9,
                mfc="none",
            )
        if bad:
            ax.scatter(bad, [lo] * len(bad), marker="x", color="#c44e52", label="crashed", zorder=3)
        pad = 0.03 * (hi - lo)  # a point on a bound stays visible whole
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("trial")
        ax.set_ylabel(f"validation {metric}")
        ax.set_title(title, fontsize=10)
        if ok or bad:
            ax.legend(fontsize=7)
        return fig


def _y_range(ys: Sequence[float], bounds: tuple[float, float] | None) -> tuple[float, float]:
    """The y range of a best-so-far curve: ``bounds`` (widened to any value outside them),
    else the values' own range, at least :data:`MIN_SPAN` x their size (at least 1) wide."""
    if bounds is not None:
        return min([bounds[0], *ys]), max([bounds[1], *ys])
    if not ys:
        return 0.0, 1.0
    lo, hi = min(ys), max(ys)
    span = MIN_SPAN * max(1.0, abs(lo), abs(hi))
    if hi - lo < span:
        mid = (lo + hi) / 2
        return mid - span / 2, mid + span / 2
    return lo, hi


def series_figure(
    times: Sequence[datetime],
    panels: Mapping[str, Mapping[str, Sequence[float | None]]],
    flags: Sequence[bool],
    title: str,
    *,
    empty: Sequence[bool] = (),
    limits: Mapping[str, tuple[float | None, float | None]] | None = None,
    xlabel: str = "time (UTC)",
) -> Figure:
    """Series over time, one panel per unit (``panels``: y label with its unit -> {series
    name: values}), the panels sharing a time axis (``times``: each point's time; naive ones
    are taken as UTC, and the axis reads UTC): numbers of different units (an accuracy from
    0 to 1, counts of predictions) on one y axis flatten each other. ``limits``: a panel's y
    range by its label (None: that end scales). Points with ``flags`` (alarms) are marked by a
    red dashed line, those in ``empty`` (nothing to measure; their values are not drawn) by a
    grey dotted one, each with a legend entry in the top panel."""
    with new_figure(
        max(1, len(panels)), 1, figsize=(6.5, 1.4 + 2.0 * max(1, len(panels))), sharex=True
    ) as (fig, axes):
        axes = np.atleast_1d(axes)
        xs = [t if t.tzinfo else t.replace(tzinfo=UTC) for t in times]
        gone = [bool(e) for e in empty] or [False] * len(xs)
        for ax, (unit, values) in zip(axes, panels.items(), strict=False):
            for name, ys in values.items():
                pts = [np.nan if y is None or e else y for y, e in zip(ys, gone, strict=True)]
                ax.plot(xs, pts, marker="o", ms=3, label=name)
            lo, hi = (limits or {}).get(unit, (None, None))
            ax.set_ylim(bottom=lo, top=hi)
            ax.set_ylabel(unit, fontsize=8)
        for marks, style, name in (
            (flags, {"color": "#c44e52", "ls": "--", "lw": 1.5, "zorder": 0}, "alarm"),
            (
                gone,
                {"color": "#777777", "ls": ":", "lw": 1.5, "zorder": 0},
                "empty window (nothing drawn)",
            ),
        ):
            for k, x in enumerate(x for x, m in zip(xs, marks, strict=True) if m):
                for i, ax in enumerate(axes):
                    # One legend entry per kind of mark, in the top panel only.
                    ax.axvline(x, label=name if i == 0 and k == 0 else "_", **style)
        for ax in axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        # A time axis (not one tick per report): two reports in one minute get their own place,
        # and the year and the zone are read on the axis.
        locator = mdates.AutoDateLocator(tz=UTC)
        axes[-1].xaxis.set_major_locator(locator)
        axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
        axes[-1].set_xlabel(xlabel, fontsize=8)
        axes[0].set_title(title, fontsize=10)
        return fig


def series(
    times: Sequence[datetime],
    panels: Mapping[str, Mapping[str, Sequence[float | None]]],
    flags: Sequence[bool],
    title: str,
    *,
    empty: Sequence[bool] = (),
    limits: Mapping[str, tuple[float | None, float | None]] | None = None,
    xlabel: str = "time (UTC)",
) -> bytes:
    """:func:`series_figure` as PNG bytes."""
    return _bytes(
        series_figure(times, panels, flags, title, empty=empty, limits=limits, xlabel=xlabel)
    )


def image_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()
