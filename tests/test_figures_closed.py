"""A figure builder that raised after ``plt.subplots`` left its figure in pyplot's registry
(only a failed ``savefig`` closed it): a long-running process kept the memory of every
figure that failed to draw. Builders make their figures with ``plotting.new_figure``."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from pomlia_hpc.monitor.html import plot_labels
from pomlia_hpc.plotting import new_figure
from pomlia_hpc.report.figures import series_figure


def test_new_figure_closes_the_figure_when_the_block_raises() -> None:
    before = plt.get_fignums()
    with pytest.raises(ValueError), new_figure(figsize=(2, 2)) as (_fig, ax):
        ax.plot([1, 2], [1, 2, 3])  # x and y differ in length
    assert plt.get_fignums() == before
    with new_figure(figsize=(2, 2)) as (fig, _ax):
        pass
    assert plt.fignum_exists(fig.number)  # a finished figure is the caller's
    plt.close(fig)


def test_a_report_figure_that_fails_to_draw_is_closed() -> None:
    before = plt.get_fignums()
    times = [datetime(2026, 1, d, tzinfo=UTC) for d in (1, 2)]
    with pytest.raises(ValueError):  # three values for two times
        series_figure(times, {"accuracy": {"acc": [0.1, 0.2, 0.3]}}, [False, False], "t")
    assert plt.get_fignums() == before


def test_a_monitor_figure_that_fails_to_draw_is_closed() -> None:
    before = plt.get_fignums()
    report: dict[str, Any] = {"tests": [{"name": "labels", "detail": {}}]}  # no shares
    with pytest.raises(KeyError):
        plot_labels(report, SimpleNamespace(label_names=["a", "b"]))  # type: ignore[arg-type]
    assert plt.get_fignums() == before
