"""Labels in other forms than class indices, and class names as people type them.

- **One-hot rows.** An (N, L) 0/1 array whose every row holds exactly one 1 may be classes
  written one-hot or a multi-label task whose images happen to have one label each. A declared
  single-label task type (multi-class, binary, ordinal) reads it as class indices (the column
  of the 1); without a task type it stays multi-label, with a note saying how to read it as
  classes. A declared single-label task whose (N, L) labels are not one-hot is refused
  (today's reading as multi-label ignored the declaration).
- **Missing-label markers.** A largest label far above the others (255 beside 0 .. 2) made
  every value in between a class; it is kept (the labels say so), with a warning naming it.
- **Class names** are kept in Unicode NFC: ``ä`` typed on Linux (one code point) and read
  from a Mac's folder (``a`` + combining diaeresis, NFD) are one name. Names that differ only
  in case or in that form are refused as two names for one class.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np

from pomlia_hpc.errors import InputError

#: Label values commonly written for "no label" (uint8 / uint16 maxima, 999 style).
MARKER_VALUES = (255, 999, 9999, 65535)

Parts = dict[str, tuple[str, np.ndarray]]
"""split -> (where, for messages; int64 labels (n, L))."""


def nfc(name: str) -> str:
    """``name`` in Unicode normal form C (how class names and hashed paths are kept)."""
    return unicodedata.normalize("NFC", name)


def same_name_clash(names: Sequence[str]) -> tuple[str, str, str] | None:
    """The first two of ``names`` that name one class in two spellings, and how they differ
    (``"only in case"`` or ``"only in Unicode form (NFC / NFD)"``); None when there is none.
    Equal names are not a clash (the caller decides whether a repeat is allowed)."""
    seen: dict[str, str] = {}
    for name in names:
        first = seen.setdefault(nfc(name).casefold(), name)
        if first == name:
            continue
        if nfc(first) == nfc(name):
            return first, name, "only in Unicode form (NFC / NFD: they print alike)"
        return first, name, "only in case"
    return None


def summarize(items: Sequence[str], shown: int = 5) -> str:
    """``a, b, c`` or, for more than ``shown`` + 2 items, the first ``shown`` and how many more
    (``a, b, c, d, e and 251 more``): a warning stays one readable line."""
    if len(items) <= shown + 2:
        return ", ".join(items)
    return f"{', '.join(items[:shown])} and {len(items) - shown} more"


def _note(level: str, text: str) -> dict[str, str]:
    return {"level": level, "text": text}


def _is_one_hot(y: np.ndarray) -> bool:
    return bool(y.size) and bool(np.all((y == 0) | (y == 1))) and bool(np.all(y.sum(1) == 1))


def one_hot_as_indices(
    task_type: str | None, parts: Parts
) -> tuple[Parts, int | None, list[dict[str, str]]]:
    """Read (N, L) one-hot ``parts`` as class indices when ``task_type`` (MedMNIST's spelling,
    or None) is a single-label task; return the parts, the number of columns read as classes
    (None when nothing was converted) and notes for ``data add``. A single-label task with
    (N, L) labels that are not one-hot is one :class:`InputError`."""
    widths = {y.shape[1] for _, y in parts.values()}
    if len(widths) != 1 or (width := widths.pop()) < 2:
        return parts, None, []  # one column, or mixed widths (refused by resolve_labels)
    one_hot = all(_is_one_hot(y) or not y.size for _, y in parts.values())
    one_hot = one_hot and any(y.size for _, y in parts.values())
    if task_type is None or task_type.startswith("multi-label"):
        if task_type is None and one_hot:
            return parts, None, [_note("note", _ONE_HOT_UNDECLARED.format(width=width))]
        return parts, None, []
    if not one_hot:
        where, y = next((w, y) for w, y in parts.values() if y.size and not _is_one_hot(y))
        row = int(np.flatnonzero(~(np.all((y == 0) | (y == 1), 1) & (y.sum(1) == 1)))[0])
        shown = np.array2string(y[row], separator=", ", threshold=12)
        raise InputError(
            f"{where} has {width} label columns and row {row} is {shown}, not one-hot: "
            f"--task-type {task_type} expects one class per image, as (N,) class indices or "
            "one-hot rows (exactly one 1 per row); expected --task-type multi-label for "
            "several labels per image (or labels of one class each)"
        )
    out = {s: (w, np.argmax(y, axis=1)[:, None].astype(np.int64)) for s, (w, y) in parts.items()}
    text = (
        f"labels are one-hot ({width} columns, exactly one 1 per row): read as class indices "
        f"0 .. {width - 1} (the column of the 1), as --task-type {task_type} declares"
    )
    return out, width, [_note("note", text)]


_ONE_HOT_UNDECLARED = (
    "every label row has exactly one 1 ({width} columns): read as multi-label (each column a "
    "yes/no label, and the split is not stratified by class); if these are one-hot classes, "
    "pass --task-type multi-class (or binary / ordinal)"
)


def marker_warning(parts: Parts) -> dict[str, str] | None:
    """A warning when the largest single-label value of ``parts`` is far above the others
    (255 beside 0 .. 2): it looks like a missing-label marker, and every value up to it was
    made a class. None otherwise."""
    values = np.unique(np.concatenate([y.ravel() for _, y in parts.values()] or [np.zeros(0)]))
    if len(values) < 2:
        return None
    top, below = int(values[-1]), int(values[-2])
    far = top > 2 * (below + 1) or (top in MARKER_VALUES and top - below > 1)
    if top < 10 or not far:
        return None
    rows = sum(int((y == top).sum()) for _, y in parts.values())
    text = (
        f"label {top} ({rows} row(s)) is far above the others (0 .. {below}): it looks like "
        f"a missing-label ('ignore') marker, and made {top + 1} classes (0 .. {top}, most "
        f"without images); to drop those rows, keep only the rows whose label is not {top} "
        f"in the source and add it again (or give --n-classes {below + 1} to have such "
        "labels refused)"
    )
    return _note("warning", text)


def negative_hint(value: int) -> str:
    """What to do about a negative label ``value`` (-1 often marks "no label")."""
    if value != -1:
        return ""
    return (
        " (-1 often marks a missing label: keep only the rows whose label is >= 0 in the "
        "source and add it again)"
    )
