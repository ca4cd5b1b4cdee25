"""How every table of the ``pomlia`` command is laid out when it is wider than the console.

Rich fits a wide table into the console by shrinking its columns evenly, below the width of
their words: at 80 columns ``jobs list`` showed ``COMPLE``/``TED``, ``backen``/``d`` and
``2026-1``/``2-05``, ``runs list`` ``f1_ma``/``cro``, and at 40 columns ``data list`` was one
letter per line. :func:`fit_columns` lays such a table out itself: every column gets at least
its longest word (ids, states, versions, times, metric names stay whole; only a word longer than
:data:`FOLD_CAP` characters, a path or a configuration, folds), the rest of the width goes to
the columns whose text wraps, in proportion to what they would need; a table whose words alone
do not fit is printed wider than the console (the terminal wraps its lines, a file keeps them)
rather than cut words; a column with ``no_wrap`` (ids, states, times) keeps each cell on one
line. :func:`title_apart` keeps a title longer than its table on one line off a terminal, where
rich wrapped it inside the table's width, and :func:`caption_apart` a caption (footnote).

A list command's table (:class:`ListTable`) also has a narrow form, for an 80-column terminal:
the same rows in fewer columns (two related values stacked in one cell, :func:`stack`), shorter
times (:func:`when`), a low-value column left out. At 80 columns the full ``jobs list`` was 97
to 119 columns wide once its words were kept whole. :func:`pick_form` prints the narrow form
when the full one does not fit the console without squeezing its free text below
:data:`TEXT_MIN` characters.

:class:`~pomlia_hpc.cli.app.MessageConsole` applies all three to every table it prints, so no
command lays out its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

#: Longest word (characters) a column keeps whole when the console is too narrow for the
#: table: longer ones (paths, configurations, JSON) fold. Ids, versions (16 hex digits), times
#: and metric names are shorter.
FOLD_CAP = 24

#: Narrowest (characters) a column of free text (a name, an error) may be squeezed to before
#: a table's narrow form is printed instead of the full one: narrower, it reads as a column of
#: words.
TEXT_MIN = 16


#: What a table cell shows for a missing value (not recorded, no such thing): an empty cell
#: read as a layout fault, and `monitor show`, `jobs show` and `loop show` print this already.
#: An undefined metric (AUC on a split of one class) reads ``n/a`` instead.
MISSING = "-"


def shown(value: object) -> str:
    """``value`` as a table cell: its text, or :data:`MISSING` for None and the empty text."""
    return MISSING if value is None or value == "" else str(value)


class ListTable(Table):
    """A list command's table, with ``narrow``: the same rows in fewer columns, printed
    instead of this one on a console too narrow for it (:func:`pick_form`). None: no narrow
    form."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.narrow: Table | None = None


def when(at: datetime | None, *, narrow: bool = False, seconds: bool = False) -> str:
    """``at`` as a table shows it: ``2026-12-05 04:31`` (``:07`` with ``seconds``), or in a
    narrow form ``12-05 04:31`` (the year left out); the empty text for None."""
    if at is None:
        return ""
    if narrow:
        return f"{at:%m-%d %H:%M}"
    return f"{at:%Y-%m-%d %H:%M:%S}" if seconds else f"{at:%Y-%m-%d %H:%M}"


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, ending in `` …`` when
    cut (a cause cut mid-word read as the whole: ``device 'cuda' was aske``)."""
    if len(text) <= limit:
        return text
    head = text[: limit - 2].rsplit(" ", 1)[0] if " " in text[: limit - 2] else text[: limit - 2]
    return f"{head.rstrip()} …"


def stack(*parts: str) -> str:
    """Two (or more) values of a narrow form's cell, one per line; empty ones left out."""
    return "\n".join(p for p in parts if p)


def _edge_width(table: Table) -> int:
    """The characters a row takes besides its cells' text: borders and cell padding."""
    n = len(table.columns)
    borders = (n - 1 + (2 if table.show_edge else 0)) if table.box else 0
    _, right, _, left = table.padding
    pads = n * (left + right)
    if not table.pad_edge:
        pads -= left + right  # the first column's left and the last one's right
    return borders + max(pads, 0)


def _share(extra: int, needs: list[int]) -> list[int]:
    """``extra`` characters given to columns that ``needs`` more each to show their cells on
    one line: the smallest needs first and whole (as many cells as can be unwrapped are), what
    is left to the next column."""
    parts = [0] * len(needs)
    for i in sorted(range(len(needs)), key=lambda i: needs[i]):
        parts[i] = min(max(needs[i], 0), extra)
        extra -= parts[i]
    return parts


def _measure(table: Table, console: Console) -> tuple[list[int], list[int]]:
    """Per column of ``table``, the width (characters) its words need and the width its cells
    need on one line each; a ``no_wrap`` column needs the latter for both."""
    lows: list[int] = []
    highs: list[int] = []
    for column in table.columns:
        low, high = 1, 1
        for cell in [column.header, *column.cells]:
            m = Measurement.get(console, console.options, cell)
            low, high = max(low, m.minimum), max(high, m.maximum)
        lows.append(high if column.no_wrap else min(low, FOLD_CAP, high))
        highs.append(high)
    return lows, highs


def pick_form(table: Table, console: Console) -> Table:
    """``table``, or its narrow form when it is a :class:`ListTable` that does not fit
    ``console``'s width with its free text at least :data:`TEXT_MIN` characters wide (or as
    wide as its longest cell, if less)."""
    if not isinstance(table, ListTable) or table.narrow is None or not table.columns:
        return table
    lows, highs = _measure(table, console)
    return (
        table if sum(_floors(lows, highs)) <= console.width - _edge_width(table) else table.narrow
    )


def _floors(lows: list[int], highs: list[int]) -> list[int]:
    """The widths below which a column is squeezed: its words, and :data:`TEXT_MIN` for text
    that wraps (or its cells' width, if less)."""
    return [max(lo, min(hi, TEXT_MIN)) for lo, hi in zip(lows, highs, strict=True)]


def fit_columns(table: Table, console: Console) -> bool:
    """Lay ``table`` out for ``console``'s width without breaking a word (see the module);
    returns whether the table is wider than the console, which must then print it uncropped
    (``crop=False``). A table that fits, or one with columns of fixed width, is left as it is."""
    if not table.columns or any(c.width is not None for c in table.columns):
        return False
    lows, highs = _measure(table, console)
    room = console.width - _edge_width(table)
    if sum(highs) <= room:
        return False  # rich shows every cell whole
    floors = _floors(lows, highs)
    widths = floors if sum(floors) <= room else lows  # no text squeezed while room is left
    if sum(widths) <= room:
        grow = _share(room - sum(widths), [h - w for h, w in zip(highs, widths, strict=True)])
        widths = [w + g for w, g in zip(widths, grow, strict=True)]
    for column, width in zip(table.columns, widths, strict=True):
        column.width = width
    wide = sum(widths) > room
    if wide:
        table.width = sum(widths) + _edge_width(table)  # else rich squeezes it back in
    return wide


def title_apart(table: Table, console: Console) -> Text | None:
    """Off a terminal, a title longer than ``table`` is wide: take it off the table and
    return it as a line to print before it (rich wrapped it inside the table's width, in the
    middle of a log file's line). None, and the table unchanged, otherwise."""
    return _apart(table, console, "title")


def caption_apart(table: Table, console: Console) -> Text | None:
    """As :func:`title_apart`, for the caption (a footnote under the table): the line to print
    after the table, or None."""
    return _apart(table, console, "caption")


def _apart(table: Table, console: Console, which: str) -> Text | None:
    """Take ``table``'s title or caption (``which``) off it when it is longer than the table
    is wide off a terminal, and return it styled as rich would have; else None."""
    text = getattr(table, which)
    if console.is_terminal or not isinstance(text, str | Text):
        return None
    line = Text.from_markup(text) if isinstance(text, str) else text
    if line.cell_len <= Measurement.get(console, console.options, table).maximum:
        return None
    setattr(table, which, None)
    line.stylize(getattr(table, f"{which}_style") or f"table.{which}")
    return line
