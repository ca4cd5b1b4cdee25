"""Figures that are closed whatever happens while they are drawn.

pyplot keeps every figure it made in its registry until it is closed: a figure builder that
raised after ``plt.subplots`` (a NaN limit, a label matplotlib cannot lay out) left its figure
there, and a long-running process (the monitor chain, a report built many times) kept its
memory. Every figure builder makes its figure with :func:`new_figure`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@contextlib.contextmanager
def new_figure(*args: Any, **kwargs: Any) -> Iterator[tuple[Figure, Any]]:
    """``plt.subplots(*args, **kwargs)`` (figure size in inches) as ``(fig, axes)`` for the
    block that draws it: when the block raises, the figure is closed before the error goes
    on; when it ends, the figure is the caller's (to return, save and close). The caller has
    chosen matplotlib's backend (Agg) before, as for any pyplot use."""
    import matplotlib.pyplot as plt

    # Titles at a fixed height above their axes (none of ours has ticks on top): matplotlib's
    # automatic title placement measures every tick label's box at each draw, about 40 % of
    # drawing a figure with a title.
    with plt.rc_context({"axes.titley": 1.0}):
        fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
    except BaseException:
        plt.close(fig)
        raise
