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

import numpy as np

from pomlia_hpc.strategy.evaluate import EvalResult

#: Bar colours by method; others (variants) take matplotlib's cycle.
COLOURS = {
    "kernel-regret": "#c44e52",
    "random": "#bbbbbb",
    "best_mean": "#4c72b0",
    "best_rank": "#55a868",
    "nearest": "#8172b2",
}


def regret_chart(result: EvalResult, title: str) -> bytes:
    """PNG bytes: per held-out data set, each method's top-1 and best-of-top-k regret (points),
    one bar per method; a data set's missing value (no candidate) is left empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.methods)
    n_sets, n_methods = len(result.datasets), len(names)
    width = 0.8 / max(n_methods, 1)
    x = np.arange(n_sets)
    fig, axes = plt.subplots(
        2, 1, figsize=(max(7.5, 0.75 * n_sets + 4.0), 6.4), sharex=True, layout="constrained"
    )
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
            ax.bar(
                xs,
                np.minimum(np.nan_to_num(values, nan=0.0), cap),
                width,
                color=COLOURS.get(name),
                label=f"{name}: {mean:.2f}",
            )
            for xi, v in zip(xs, values, strict=True):
                if v > cap:
                    text = f"{v:.1f}" if v < 10 else f"{v:.0f}"
                    ax.text(xi, 0.97 * cap, text, ha="center", va="top", fontsize=7)
        ax.set_ylim(0, cap)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="mean regret")
    axes[1].set_xticks(x, result.datasets, rotation=35, ha="right", fontsize=8)
    axes[0].set_title(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
