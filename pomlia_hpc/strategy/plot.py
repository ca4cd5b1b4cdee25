"""A picture of a leave-one-dataset-out evaluation: where each method loses, data set by data set.

The mean regrets of ``pomlia strategy eval`` say which method wins; this chart says where the
points are lost. Two panels, top-1 regret and best-of-top-k regret (metric points), one group of
bars per held-out data set, one bar per method (the learner first, then the baselines in their
order), and each method's mean in the legend. PNG bytes from matplotlib's Agg backend (no
display needed); matplotlib is imported only when a chart is drawn.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from pomlia_hpc.plotting import new_figure
from pomlia_hpc.strategy.evaluate import EvalResult

if TYPE_CHECKING:  # matplotlib is imported only when a chart is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Bar colours by method; others (variants) take matplotlib's cycle.
COLOURS = {
    "kernel-regret": "#c44e52",
    "random": "#bbbbbb",
    "best_mean": "#4c72b0",
    "best_rank": "#55a868",
    "nearest": "#8172b2",
}


#: A regret under this (points) prints as 0.00 in the table: it gets the zero mark, not a bar.
ZERO = 0.005
#: Text of a data set's missing value (the method had no candidate there).
MISSING = "n/a"


def regret_figure(result: EvalResult, title: str) -> Figure:
    """The chart as a matplotlib Figure (close it when done): per held-out data set, each
    method's top-1 and best-of-top-k regret (points), one bar per method. A zero regret is a
    short tick on the axis labelled ``0`` (no bar looked like no result); a missing value (no
    candidate) is labelled :data:`MISSING`; a bar past the scale is cut, its value written on
    it with one decimal."""
    import matplotlib

    matplotlib.use("Agg")

    names = list(result.methods)
    n_sets, n_methods = len(result.datasets), len(names)
    width = 0.8 / max(n_methods, 1)
    x = np.arange(n_sets)
    with new_figure(
        2, 1, figsize=(max(7.5, 0.75 * n_sets + 4.0), 6.4), sharex=True, layout="constrained"
    ) as (fig, axes):
        for ax, which, label in (
            (axes[0], "top1", "top-1 regret (points)"),
            (axes[1], "topk", f"best-of-top-{result.k} regret (points)"),
        ):
            rows = {n: np.array(getattr(result.methods[n], which), dtype=float) for n in names}
            # Random's regrets are an order larger; the scale follows the others', and a taller bar
            # is cut at the top with its value written on it.
            others = [v for n, v in rows.items() if n != "random" and np.isfinite(v).any()]
            top = max((float(np.nanmax(v)) for v in others), default=0.0)
            cap = 1.25 * top if top > 0 else 1.0
            for j, name in enumerate(names):
                values = rows[name]
                mean = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
                xs = x + (j - (n_methods - 1) / 2) * width
                bars = ax.bar(
                    xs,
                    np.minimum(np.nan_to_num(values, nan=0.0), cap),
                    width,
                    color=COLOURS.get(name),
                    label=f"{name}: {mean:.2f}",
                )
                # the zero tick takes the bar's colour (a variant's comes from matplotlib's cycle)
                colour = bars.patches[0].get_facecolor() if bars.patches else None
                _marks(ax, xs, values, cap, width, colour)
            ax.set_ylim(0, cap)
            ax.set_ylabel(label, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="mean regret")
        axes[1].set_xticks(x, result.datasets, rotation=35, ha="right", fontsize=8)
        axes[0].set_title(title, fontsize=10)
        return fig


def _marks(
    ax: Axes, xs: np.ndarray, values: np.ndarray, cap: float, width: float, colour: Any
) -> None:
    """The zero ticks, missing-value labels and cut-bar values of one method's bars."""
    for xi, v in zip(xs, values, strict=True):
        if math.isnan(v):
            ax.text(
                xi,
                0.02 * cap,
                MISSING,
                ha="center",
                va="bottom",
                fontsize=6,
                rotation=90,
                color="#777777",
            )
        elif abs(v) < ZERO:
            ax.plot(
                [xi - 0.4 * width, xi + 0.4 * width],
                [0.006 * cap] * 2,
                color=colour,
                linewidth=2.5,
                solid_capstyle="butt",
                clip_on=False,
            )
            ax.text(xi, 0.015 * cap, "0", ha="center", va="bottom", fontsize=6)
        elif v > cap:  # one format for every cut bar: 9.999 and 10.25 read 10.0 and 10.2
            ax.text(xi, 0.97 * cap, f"{v:.1f}", ha="center", va="top", fontsize=7)


def regret_chart(result: EvalResult, title: str) -> bytes:
    """PNG bytes of :func:`regret_figure` (matplotlib's Agg backend, 100 dpi)."""
    import matplotlib.pyplot as plt

    fig = regret_figure(result, title)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:  # a figure that failed to draw stays in pyplot's registry otherwise
        plt.close(fig)
    return buf.getvalue()
