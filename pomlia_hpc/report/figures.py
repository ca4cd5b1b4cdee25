"""The report's figures as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator


def _bytes(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def heatmap(matrix: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """A labelled square heatmap (e.g. distances between dataset fingerprints)."""
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * n + 2), max(3.5, 0.5 * n + 1.5)))
    im = ax.imshow(matrix, cmap="viridis_r")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    if n <= 14:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:.2g}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if matrix[i, j] > np.nanmean(matrix) else "black",
                )
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=10)
    return _bytes(fig)


def best_so_far(
    objectives: Sequence[float | None], crashed: Sequence[bool], metric: str, title: str
) -> bytes:
    """:func:`best_so_far_figure` as PNG bytes."""
    return _bytes(best_so_far_figure(objectives, crashed, metric, title))


def best_so_far_figure(
    objectives: Sequence[float | None], crashed: Sequence[bool], metric: str, title: str
) -> Figure:
    """Each finished trial's validation metric (dots; crashed trials as red x at the bottom;
    trials still running are left out) and the best so far (line), in trial order."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = np.arange(1, len(objectives) + 1)
    # Trials are whole: few get a tick each (a locator falls back to 0.96, 0.98, ... around
    # one trial), more integer ticks only.
    ax.xaxis.set_major_locator(
        FixedLocator(xs.tolist()) if len(xs) <= 12 else MaxNLocator(integer=True)
    )
    ok = [(x, y) for x, y in zip(xs, objectives, strict=True) if y is not None]
    bad = [x for x, c in zip(xs, crashed, strict=True) if c]
    if ok:
        ok_x, ok_y = zip(*ok, strict=True)
        ax.scatter(ok_x, ok_y, s=14, color="#4c72b0", label="trial")
        best, line = -np.inf, []
        for y in objectives:
            if y is not None:
                best = max(best, y)
            line.append(best if np.isfinite(best) else np.nan)
        ax.step(xs, line, where="post", color="#dd8452", label="best so far")
    if bad:
        low = min((y for _x, y in ok), default=0.0)
        ax.scatter(bad, [low] * len(bad), marker="x", color="#c44e52", label="crashed")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(title, fontsize=10)
    if ok or bad:
        ax.legend(fontsize=7)
    return fig


def series_figure(
    times: Sequence[str],
    panels: Mapping[str, Mapping[str, Sequence[float | None]]],
    flags: Sequence[bool],
    title: str,
) -> Figure:
    """Series over report times, one panel per unit (``panels``: y label with its unit ->
    {series name: values}), the panels sharing the time axis: numbers of different units
    (an accuracy from 0 to 1, counts of predictions) on one y axis flatten each other.
    Reports that triggered the loop are marked in red in every panel."""
    fig, axes = plt.subplots(
        max(1, len(panels)), 1, figsize=(6.5, 1.2 + 2.0 * max(1, len(panels))), sharex=True
    )
    axes = np.atleast_1d(axes)
    xs = np.arange(len(times))
    for ax, (unit, values) in zip(axes, panels.items(), strict=False):
        for name, ys in values.items():
            ax.plot(xs, [np.nan if y is None else y for y in ys], marker="o", ms=3, label=name)
        for x, flag in zip(xs, flags, strict=True):
            if flag:
                ax.axvline(float(x), color="#c44e52", alpha=0.3)
        ax.set_ylabel(unit, fontsize=8)
        if values:
            ax.legend(fontsize=7)
    axes[-1].set_xticks(xs, [t[5:16] for t in times], rotation=45, ha="right", fontsize=7)
    axes[0].set_title(title, fontsize=10)
    return fig


def series(
    times: Sequence[str],
    panels: Mapping[str, Mapping[str, Sequence[float | None]]],
    flags: Sequence[bool],
    title: str,
) -> bytes:
    """:func:`series_figure` as PNG bytes."""
    return _bytes(series_figure(times, panels, flags, title))


def image_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()
