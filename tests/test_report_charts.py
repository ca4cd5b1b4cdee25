"""The report's charts: each axis labelled with its unit, integer axes with integer ticks."""

from __future__ import annotations

from pomlia_hpc.report.figures import series_figure
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
