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
    chosen matplotlib's backend (Agg) before, as for any pyplot use. Titles sit at a fixed
    height above their axes (no ticks on top, twin or inset axes: none is lifted above them)."""
    import matplotlib.pyplot as plt

    # Titles at a fixed height above their axes: matplotlib's automatic title placement
    # measures every tick label's box at each draw (about 40 % of drawing a figure with a
    # title) to lift a title above ticks on top, twin or inset axes and the y axis's offset
    # text ("1e6" at its top). None of ours has the first three; an offset text sits at the
    # top left, a centred title beside it.
    with plt.rc_context({"axes.titley": 1.0}):
        fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
    except BaseException:
        plt.close(fig)
        raise
