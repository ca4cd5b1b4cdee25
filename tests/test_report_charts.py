"""The report's charts: each axis labelled with its unit, integer axes with integer ticks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from pomlia_hpc.fingerprint.validation import write_curves
from pomlia_hpc.report.figures import best_so_far_figure, series_figure
from pomlia_hpc.report.pages_ops import monitor_panels


def test_monitor_history_puts_accuracy_and_counts_on_separate_labelled_axes() -> None:
    """Accuracy (0 to 1) and prediction counts (hundreds) shared one unlabelled y axis."""
    numbers = [{"accuracy": 0.8, "predictions": 412.0}, {"accuracy": 0.7, "n": 100.0}]
    panels = monitor_panels(numbers)
    assert panels == {
        "share (0 to 1)": {"accuracy": [0.8, 0.7]},
        "count (predictions, labels)": {"n": [None, 100.0], "predictions": [412.0, None]},
    }
    fig = series_figure(["2026-12-01 02:00", "2026-12-02 02:00"], panels, [False, True], "m")
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["share (0 to 1)", "count (predictions, labels)"]
    named = [[str(x.get_label()) for x in ax.get_lines()] for ax in fig.axes]
    assert [[n for n in names if not n.startswith("_")] for names in named] == [
        ["accuracy"],
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
