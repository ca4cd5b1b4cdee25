"""The cells of one CSV row, parsed with messages naming the file, the line and the column
and saying what was expected (the long-format reader's, :mod:`.longformat`)."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from pomlia_hpc.errors import InputError
from pomlia_hpc.names import DATASET_NAME_MAX, validate_name

#: First characters a spreadsheet takes for a formula (``=cmd|' /c calc'!A1``): a text cell
#: starting with one is refused, as the tables are read back and shared as CSV.
FORMULA_STARTS = ("=", "+", "-", "@")
#: Unicode categories of characters refused in text cells: control characters (newlines,
#: escape sequences that rewrite a terminal), invisible format characters (bidi overrides
#: that show text in another order than it is stored) and line/paragraph separators.
_CONTROL_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")


class Cell:
    """Parses the cells of one row with messages naming file, line and column."""

    def __init__(self, path: Path, line: int, row: Mapping[str, str]) -> None:
        self.path, self.line, self.row = path, line, row

    def fail(self, column: str, expected: str) -> InputError:
        got = self.row.get(column, "")
        return InputError(
            f"{self.path}: line {self.line}, column '{column}': {got!r} is not valid; "
            f"expected {expected}; nothing was imported"
        )

    def text(self, column: str, *, required: bool = True) -> str:
        value = (self.row.get(column) or "").strip()
        if required and not value:
            raise self.fail(column, "a non-empty value")
        return value

    def name(self, column: str) -> str:
        """The data set name in ``column``, by the name rule of ``data add``
        (:mod:`pomlia_hpc.names`)."""
        value = self.text(column)
        try:
            validate_name("data set", value, max_len=DATASET_NAME_MAX)
        except InputError as exc:
            rule = str(exc).partition("expected ")[2]
            raise self.fail(column, f"a data set name as `data add` takes: {rule}") from None
        return value

    def plain(self, column: str, *, required: bool = True) -> str:
        """The text in ``column``, refused when it holds a control character or starts like a
        spreadsheet formula (:data:`FORMULA_STARTS`): such cells are shown in tables and
        written back to CSV files, where they would run or garble what is shown."""
        value = self.text(column, required=required)
        if not plain_text(value):
            raise self.fail(
                column,
                "text without control characters, not starting with "
                + ", ".join(FORMULA_STARTS)
                + " (a spreadsheet would take it for a formula)",
            )
        return value

    def number(
        self, column: str, *, required: bool = True, low: float = -math.inf, high: float = math.inf
    ) -> float | None:
        text = self.text(column, required=required)
        if not text:
            return None
        expected = range_text(low, high)
        try:
            value = float(_plain_digits(text))
        except ValueError:
            raise self.fail(column, expected) from None
        if not math.isfinite(value) or not low <= value <= high:
            raise self.fail(column, expected)
        return value

    def integer(
        self,
        column: str,
        *,
        required: bool = True,
        low: int = 0,
        high: int | None = None,
        choices: tuple[int, ...] = (),
    ) -> int | None:
        """The integer in ``column``: in [``low``, ``high``], or one of ``choices``."""
        text = self.text(column, required=required)
        if not text:
            return None
        if choices:
            expected = " or ".join(str(c) for c in choices)
        else:
            expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        try:
            value = int(_plain_digits(text))
        except ValueError:
            raise self.fail(column, expected) from None
        allowed = value in choices if choices else low <= value and (high is None or value <= high)
        if not allowed:
            raise self.fail(column, expected)
        return value


def _plain_digits(text: str) -> str:
    """``text`` for Python's number parsers, refused (``ValueError``) where they would read
    what a table does not mean as a number: `1_000` (a digit separator in Python only) and
    digits of other scripts (`٣٢` read as 32)."""
    if not text.isascii() or "_" in text:
        raise ValueError(text)
    return text


@lru_cache(maxsize=4096)  # a table repeats a few words over all its rows
def plain_text(value: str) -> bool:
    """Whether ``value`` has no control character and does not start like a formula."""
    bad = any(unicodedata.category(c) in _CONTROL_CATEGORIES for c in value)
    return not bad and not value.startswith(FORMULA_STARTS)


def range_text(low: float, high: float) -> str:
    """``a number in [0, 1]``, ``a number >= 0`` or ``a number <= 5``: the range of a
    number column in words (an unbounded end is left out, not written as ``inf``)."""
    if math.isinf(low) and math.isinf(high):
        return "a finite number"
    if math.isinf(high):
        return f"a number >= {low:g}"
    if math.isinf(low):
        return f"a number <= {high:g}"
    return f"a number in [{low:g}, {high:g}]"
