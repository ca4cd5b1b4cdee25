"""Labels in other forms than class indices, and class names as people type them.

- **One-hot rows.** An (N, L) 0/1 array whose every row holds exactly one 1 may be classes
  written one-hot or a multi-label task whose images happen to have one label each. A declared
  single-label task type (multi-class, binary, ordinal) reads it as class indices (the column
  of the 1); without a task type it stays multi-label, with a note saying how to read it as
  classes. A declared single-label task whose (N, L) labels are not one-hot is refused
  (today's reading as multi-label ignored the declaration).
- **Missing-label markers.** A largest label far above the others (255 beside 0 .. 2) made
  every value in between a class; it is kept (the labels say so), with a warning naming it:
  a rare one as a marker to drop, a frequent one (or 0/255 masks) as a class to remap. One
  that makes more classes than the cap is refused naming it (:func:`check_marker_cap`).
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
        raise _not_one_hot(task_type, width, parts)
    out = {s: (w, np.argmax(y, axis=1)[:, None].astype(np.int64)) for s, (w, y) in parts.items()}
    text = (
        f"labels are one-hot ({width} columns, exactly one 1 per row): read as class indices "
        f"0 .. {width - 1} (the column of the 1), as --task-type {task_type} declares"
    )
    return out, width, [_note("note", text)]


def _not_one_hot(task_type: str, width: int, parts: Parts) -> InputError:
    """The refusal of (N, ``width``) labels that are not one-hot under a single-label
    ``task_type``. Rows with no 1 at all (in 0/1 labels) are most likely images nobody
    labelled, which a multi-label task would not fix: they are named as such."""
    where, y = next((w, y) for w, y in parts.values() if y.size and not _is_one_hot(y))
    empty = np.flatnonzero(np.all(y == 0, 1))
    if np.all((y == 0) | (y == 1)) and np.all(y.sum(1) <= 1):
        shown = np.array2string(y[empty[0]], separator=", ", threshold=12)
        return InputError(
            f"{where} has {width} label columns and {len(empty)} row(s) with no 1 (row "
            f"{int(empty[0])} is {shown}): --task-type {task_type} expects exactly one 1 per "
            "row; rows with no label are likely images nobody labelled: drop those rows in "
            "the source (or label them) and add it again"
        )
    # The first row that is neither one-hot nor all zero (the cause is not missing labels).
    bad = ~(np.all((y == 0) | (y == 1), 1) & (y.sum(1) == 1)) & ~np.all(y == 0, 1)
    row = int(np.flatnonzero(bad)[0])
    shown = np.array2string(y[row], separator=", ", threshold=12)
    return InputError(
        f"{where} has {width} label columns and row {row} is {shown}, not one-hot: "
        f"--task-type {task_type} expects one class per image, as (N,) class indices or "
        "one-hot rows (exactly one 1 per row); expected --task-type multi-label for "
        "several labels per image (or labels of one class each)"
    )


_ONE_HOT_UNDECLARED = (
    "every label row has exactly one 1 ({width} columns): read as multi-label (each column a "
    "yes/no label, and the split is not stratified by class); if these are one-hot classes, "
    "pass --task-type multi-class (or binary / ordinal)"
)


#: A largest label that holds at least this share of the rows is more likely a class coded
#: by another number (0/255 masks, 0/10) than a missing-label marker: remap, do not drop.
CLASS_SHARE = 0.05


def _far_top(parts: Parts) -> tuple[np.ndarray, int, int] | None:
    """The distinct single-label values of ``parts``, the largest and the next below it, when
    the largest is far above the others (255 beside 0 .. 2); None otherwise."""
    values = np.unique(np.concatenate([y.ravel() for _, y in parts.values()] or [np.zeros(0)]))
    if len(values) < 2:
        return None
    top, below = int(values[-1]), int(values[-2])
    far = top > 2 * (below + 1) or (top in MARKER_VALUES and top - below > 1)
    if top < 10 or not far:
        return None
    return values, top, below


def marker_warning(parts: Parts) -> dict[str, str] | None:
    """A warning when the largest single-label value of ``parts`` is far above the others
    (255 beside 0 .. 2): every value up to it was made a class. A rare one looks like a
    missing-label marker (drop those rows); one beside a single other value, or on at least
    :data:`CLASS_SHARE` of the rows, looks like a class coded by another number (remap the
    labels to 0 .. K-1). None otherwise."""
    found = _far_top(parts)
    if found is None:
        return None
    values, top, below = found
    rows = sum(int((y == top).sum()) for _, y in parts.values())
    total = sum(int(y.size) for _, y in parts.values())
    made = f"made {top + 1} classes (0 .. {top}, most without images)"
    if len(values) == 2 or rows >= CLASS_SHARE * total:
        # Dropping these rows would delete a class; --n-classes 1 would declare a 1-class task.
        coded = "/".join(str(int(v)) for v in values[:6]) + ("/..." if len(values) > 6 else "")
        others = "0" if below == 0 else f"0 .. {below}"
        text = (
            f"label {top} ({rows} row(s), {100 * rows / total:.0f} %) is far above the others "
            f"({others}) and {made}: if the labels are {len(values)} classes coded "
            f"{coded}, remap them to 0 .. {len(values) - 1} in the source and add it again"
        )
        return _note("warning", text)
    text = (
        f"label {top} ({rows} row(s)) is far above the others (0 .. {below}): it looks like "
        f"a missing-label ('ignore') marker, and {made}; to drop those rows, keep only the "
        f"rows whose label is not {top} in the source and add it again"
    )
    if below + 1 >= 2:  # never advise a 1-class task
        text += f" (or give --n-classes {below + 1} to have such labels refused)"
    return _note("warning", text)


def check_marker_cap(parts: Parts, max_classes: int, *, inferred: bool) -> None:
    """Refuse single-label ``parts`` whose classes are ``inferred`` (none declared) and whose
    largest label, far above the others, would make more than ``max_classes`` classes (999
    beside 0 .. 2), saying it looks like a missing-label marker. Other labels over the cap
    are left to the plain refusal; multi-label columns are checked elsewhere."""
    if not inferred or any(y.shape[1] != 1 for _, y in parts.values()):
        return
    found = _far_top(parts)
    if found is None or found[1] + 1 <= max_classes:
        return
    _, top, below = found
    where = next(w for w, y in parts.values() if y.size and int(y.max()) == top)
    rows = sum(int((y == top).sum()) for _, y in parts.values())
    raise InputError(
        f"{where} has {top + 1} classes (largest label + 1): expected at most {max_classes} "
        f"(raise the cap with --max-classes if this is really meant); label {top} "
        f"({rows} row(s)) is far above the others (0 .. {below}): it looks like a "
        f"missing-label ('ignore') marker: keep only the rows whose label is not {top} in "
        "the source and add it again, or remap the labels to 0 .. K-1 if it is a class"
    )


def negative_hint(value: int) -> str:
    """What to do about a negative label ``value`` (-1 often marks "no label")."""
    if value != -1:
        return ""
    return (
        " (-1 often marks a missing label: keep only the rows whose label is >= 0 in the "
        "source and add it again)"
    )
