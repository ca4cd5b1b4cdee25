"""What every source gives the ingest: shapes, labels, and image batches as uint8 (b, H, W, C).

Pixel rules, the same for every source:

- ``uint8`` is stored as it is;
- ``uint16`` (16-bit PNG/TIFF, HDF5, npz) is scaled linearly so that the largest value in the
  whole dataset becomes 255 (``0 .. max`` -> ``0 .. 255``; the max is found in a first pass and
  recorded as ``meta["intensity_scaling"]``), because 12-bit scanners would be almost black if
  scaled by 65535; when that max is more than :data:`~.intensity.OUTLIER_RATIO` times the 99.9th
  percentile (a hot pixel), it is recorded as ``meta["source"]["intensity_outlier"]`` with
  where it is, and ``data add`` warns (the rule is unchanged: versions stay reproducible);
- float images must be finite and in [0, 1]; they are scaled by 255 and rounded (recorded as
  ``intensity_scaling`` too);
- an (N, H, W, 4) array is RGBA: its alpha is dropped, as an RGBA PNG's is;
- anything else is refused with a message naming the file and the field.

The conversion itself (:class:`~.intensity.PixelConverter`) is in
:mod:`pomlia_hpc.data.sources.intensity`.

Label rules: (N,) or (N, 1) class indices, or (N, L) 0/1 for multi-label; integer dtype (float
labels are accepted only when every value is a whole number); single-label values must lie in
[0, n_classes) where n_classes is declared (MedMNIST INFO, ``class_names`` or ``n_classes``)
or else inferred as max + 1.

Limits (:class:`IngestLimits`, options ``max_classes`` and ``max_side_px``): at most
``max_classes`` classes or label columns, declared or inferred, and images of at most
``max_side_px`` px per side. Both are checked from the declared shapes (npy headers, HDF5
shapes, image headers) before any pixel or label is read, so a small file that claims a huge
array is refused in constant memory.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

# Re-exported: serve.decode (and the pixels docstring) name it here.
from pomlia_hpc.data.sources.intensity import PixelConverter as PixelConverter
from pomlia_hpc.data.sources.intensity import StoredAs
from pomlia_hpc.data.sources.label_forms import (
    Parts,
    marker_warning,
    negative_hint,
    nfc,
    one_hot_as_indices,
    same_name_clash,
)
from pomlia_hpc.data.store import SPLITS
from pomlia_hpc.errors import InputError
from pomlia_hpc.vocab import MEDMNIST_TASK_TYPES, medmnist_task, task_type_choices

#: Task types a source may declare, in MedMNIST's spelling (what dataset stores keep).
TASK_TYPES = MEDMNIST_TASK_TYPES

MAX_CLASSES = 500
"""Default cap on classes (or multi-label columns) of an ingested dataset."""

MAX_SIDE_PX = 4096
"""Default cap on the image side at ingest, px (the server refuses larger uploads too)."""


@dataclass(frozen=True)
class IngestLimits:
    """Caps that keep a hostile or careless file from taking the machine's memory."""

    max_classes: int = MAX_CLASSES
    max_side_px: int = MAX_SIDE_PX

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> IngestLimits:
        """Pop ``max_classes`` / ``max_side_px`` from ``options`` (defaults when absent)."""
        out = {}
        for key in ("max_classes", "max_side_px"):
            value = options.pop(key, None)
            if value is None:
                continue
            if isinstance(value, bool) or int(value) < 1:
                raise InputError(f"{_flag(key)} {value!r}: expected a whole number >= 1")
            out[key] = int(value)
        return cls(**out)

    def check_classes(self, where: str, n: int, what: str = "classes") -> None:
        """Refuse more than ``max_classes`` classes (or label columns)."""
        if n > self.max_classes:
            raise InputError(
                f"{where} has {n} {what}: expected at most {self.max_classes} "
                "(raise the cap with --max-classes if this is really meant)"
            )


def check_split_fractions(where: str, val_fraction: float, test_fraction: float) -> None:
    """Refuse hash-split fractions below 0, or summing to 1 or more (no train rows left)."""
    if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
        raise InputError(
            f"{where}: --val-fraction {val_fraction} + --test-fraction {test_fraction}: "
            "expected fractions >= 0 that sum to less than 1"
        )


def carved_count(n: int, fraction: float) -> int:
    """Images of a class of ``n`` carved for a split of share ``fraction``: the share rounded
    half up (2.5 -> 3, 1.5 -> 2, 2.49 -> 2), but at least one when asked at all (a class
    absent from val cannot be picked on)."""
    if fraction <= 0:
        return 0
    # Not round(): it rounds half to even (2.5 -> 2, 1.5 -> 2), so classes of 25 and 15 got
    # the same count. The product is rounded to 9 decimals first: 15 * 0.1 is
    # 1.5000000000000002 and 45 * 0.7 is 31.499999999999996 in floats, both meant as halves.
    return max(1, math.floor(round(n * fraction, 9) + 0.5))


def stratified_split(
    ranks: np.ndarray, classes: np.ndarray, val_fraction: float, test_fraction: float
) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test; int8) for rows with sort keys ``ranks`` (uint64,
    e.g. a hash of each row's path or index, so the split is deterministic) and ``classes``
    (one per row, any comparable values), stratified by class: of each class, in the order of
    its ranks, the first :func:`carved_count` rows go to test, the next to val, the rest stay
    in train. A class of 2 or more rows keeps at least one in train (val is served before
    test when there are too few); a class of one row stays in train. Adding rows to a class
    can move others of that class (its counts change); other classes keep their split.
    The one rule for every source split by hash (image folders, HDF5 files)."""
    codes = np.zeros(len(ranks), np.int8)
    if len(ranks) == 0:
        return codes
    _, group = np.unique(np.asarray(classes), return_inverse=True)
    order = np.lexsort((np.asarray(ranks, np.uint64), group.ravel()))
    bounds = np.flatnonzero(np.diff(group.ravel()[order])) + 1
    for rows in np.split(order, bounds):
        spare = len(rows) - 1  # one row stays in train
        n_val = min(carved_count(len(rows), val_fraction), spare)
        n_test = min(carved_count(len(rows), test_fraction), spare - n_val)
        codes[rows[:n_test]] = 2
        codes[rows[n_test : n_test + n_val]] = 1
    return codes


def keep_copies_together(codes: np.ndarray, ranks: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Split ``codes`` (of :func:`stratified_split`) with every group of rows of equal
    ``content`` (one key per row, equal for copies of one image) moved to the split of its
    row with the smallest rank, whatever their classes: a copy in val or test of an image in
    train would be scored on what the model was trained on (inflated val and test metrics).
    Rows without a copy keep their split; a group's split depends on its own rows only."""
    codes = np.array(codes, np.int8)
    if len(codes) == 0:
        return codes
    order = np.lexsort((np.asarray(ranks, np.uint64), np.asarray(content)))
    key = np.asarray(content)[order]
    first = np.concatenate([[True], key[1:] != key[:-1]])
    leader = order[first][np.cumsum(first) - 1]  # the smallest-rank row of each row's group
    codes[order] = codes[leader]
    return codes


def check_side(where: str, height: int, width: int, limits: IngestLimits) -> None:
    """Refuse images with a side of 0 or over ``limits.max_side_px``."""
    if min(height, width) < 1 or max(height, width) > limits.max_side_px:
        raise InputError(
            f"{where} has images of {height}x{width} px: expected sides of 1 .. "
            f"{limits.max_side_px} px (raise the cap with --max-side-px if this is really meant)"
        )


def image_shape(
    where: str, shape: Sequence[int], limits: IngestLimits | None = None
) -> tuple[int, int, int]:
    """(H, W, C) from an array shape (N, H, W) or (N, H, W, C) with C 1, 3 or 4 (RGBA: its
    alpha is dropped, as an RGBA PNG's is: C is 3; see :func:`has_alpha`), within ``limits``
    (default :class:`IngestLimits`)."""
    if len(shape) == 3:
        hwc = int(shape[1]), int(shape[2]), 1
    elif len(shape) == 4 and shape[3] in (1, 3, 4):
        hwc = int(shape[1]), int(shape[2]), min(int(shape[3]), 3)
    else:
        raise InputError(
            f"{where} has shape {tuple(shape)}: expected (N, H, W) or (N, H, W, C) with C = 1, "
            "3 or 4 (RGBA, whose alpha is dropped)"
        )
    check_side(where, hwc[0], hwc[1], limits or IngestLimits())
    return hwc


def has_alpha(shape: Sequence[int]) -> bool:
    """Whether an image array of ``shape`` (N, H, W, 4) is RGBA, whose alpha is dropped."""
    return len(shape) == 4 and int(shape[3]) == 4


def check_label_shape(
    where: str, shape: Sequence[int], n_images: int, limits: IngestLimits
) -> None:
    """Check a label array's declared ``shape`` before reading it: (N,) or (N, L) with one
    row per image and at most ``limits.max_classes`` columns."""
    if len(shape) not in (1, 2):
        raise InputError(f"{where} has shape {tuple(shape)}: expected (N,) or (N, L)")
    if int(shape[0]) != n_images:
        raise InputError(
            f"{where} has {shape[0]} labels but the images have {n_images}: expected one "
            "label row per image"
        )
    if len(shape) == 2:
        limits.check_classes(where, int(shape[1]), "label columns")


def normalize_labels(where: str, labels: np.ndarray, n_images: int) -> np.ndarray:
    """Check count and dtype of one split's labels; return int64 (n, L)."""
    y = labels[:, None] if labels.ndim == 1 else labels
    if y.ndim != 2:
        raise InputError(f"{where} has shape {labels.shape}: expected (N,) or (N, L)")
    if y.shape[0] != n_images:
        raise InputError(
            f"{where} has {y.shape[0]} labels but the images have {n_images}: expected one "
            "label row per image"
        )
    if y.dtype == np.bool_ or np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    raise InputError(f"{where} has dtype {y.dtype}: expected integer class labels")


def _class_names(value: str | Sequence[object] | None) -> tuple[str, ...] | None:
    """``--class-names`` (a comma-separated string, or a list from the library API) as a tuple
    of distinct, non-empty names; None when not given."""
    if value is None:
        return None
    items = (
        value.split(",") if isinstance(value, str) else ["" if v is None else str(v) for v in value]
    )
    names = tuple(nfc(v.strip()) for v in items)  # as class folders' names (label_forms)
    shown = ",".join(items)
    if not names:
        raise InputError("--class-names is an empty list: expected one name per class")
    if "" in names:
        raise InputError(
            f"--class-names '{shown}' has an empty name (name {names.index('') + 1} of "
            f"{len(names)}): expected comma-separated, non-empty names"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(
            f"--class-names '{shown}' names {', '.join(repr(n) for n in twice)} more than "
            "once: expected one name per class"
        )
    clash = same_name_clash(names)
    if clash:
        raise InputError(
            f"--class-names '{shown}' names {clash[0]!r} and {clash[1]!r}, which differ "
            f"{clash[2]}: expected one name per class (as for class folders)"
        )
    return names


def _n_classes(value: object) -> int | None:
    """``--n-classes`` as an int >= 1 (a pipeline file may give it as text); None if not given."""
    if value is None:
        return None
    whole = isinstance(value, str | int | np.integer) and not isinstance(value, bool)
    text = str(value).strip() if whole else ""  # 2.5, True, "three" are not class counts
    n = int(text) if text.isdecimal() and text.isascii() else -1  # not '²', which int() refuses
    if n < 1:
        raise InputError(f"--n-classes {value!r}: expected a whole number >= 1")
    return n


def _task_type(value: object) -> str:
    """``--task-type`` in any spelling of :func:`pomlia_hpc.vocab.normalize_task_type`, as
    MedMNIST spells it (what stores keep)."""
    try:
        return medmnist_task(str(value))
    except InputError:
        raise InputError(
            f"--task-type '{value}' is not known: expected one of {task_type_choices()}"
        ) from None


def check_binary(task_type: str, n_classes: int, what: str) -> None:
    """Refuse a binary task whose classes (``what`` says where the count comes from, e.g.
    ``"the labels have 3 classes (0 .. 2)"``) are not exactly 2."""
    if task_type == "binary-class" and n_classes != 2:
        hint = " (or --task-type multi-class)" if n_classes > 2 else ""
        raise InputError(
            f"a binary task (--task-type binary) needs exactly 2 classes, but {what}: "
            f"expected 2{hint}"
        )


@dataclass(frozen=True)
class LabelDecl:
    """What the user (or MedMNIST INFO) declares about labels; None = infer."""

    class_names: tuple[str, ...] | None = None
    n_classes: int | None = None
    task_type: str | None = None
    one_hot_columns: int | None = None
    """Set by :func:`read_one_hot`: the labels were one-hot with this many columns (classes)."""

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LabelDecl:
        """Pop ``class_names``, ``n_classes`` and ``task_type`` from ``options``: names must
        be distinct and non-empty and agree with ``n_classes`` when both are given; the task
        type may be any spelling and is kept in MedMNIST's."""
        names = _class_names(options.pop("class_names", None))
        n = _n_classes(options.pop("n_classes", None))
        if names is not None and n is not None and len(names) != n:
            raise InputError(
                f"--class-names gives {len(names)} names but --n-classes is {n}: expected "
                "the same number (or only one of the two)"
            )
        task = options.pop("task_type", None)
        return cls(names, n, None if task is None else _task_type(task))


@dataclass
class LabelInfo:
    """Resolved label metadata of a source."""

    task_type: str
    class_names: list[str]
    label_width: int
    notes: list[dict[str, str]] = field(default_factory=list)
    """How the labels were read, for ``data add`` (``{"level": "note", "text": ...}``)."""

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def read_one_hot(decl: LabelDecl, parts: Parts) -> tuple[LabelDecl, Parts, list[dict[str, str]]]:
    """One-hot (N, L) ``parts`` read as class indices where ``decl`` declares a single-label
    task (:func:`~.label_forms.one_hot_as_indices`), with ``decl`` saying so; class names or
    a class count that do not match the columns are refused. Also the notes for ``data add``."""
    parts, columns, notes = one_hot_as_indices(decl.task_type, parts)
    if columns is None:
        return decl, parts, notes
    declared = len(decl.class_names) if decl.class_names is not None else decl.n_classes
    if declared is not None and declared != columns:
        flag = "--class-names gives" if decl.class_names is not None else "--n-classes is"
        raise InputError(
            f"{flag} {declared} but the one-hot labels have {columns} columns: expected "
            f"{columns} (one class per column)"
        )
    return replace(decl, one_hot_columns=columns), parts, notes


def resolve_labels(
    decl: LabelDecl,
    parts: dict[str, tuple[str, np.ndarray]],
    limits: IngestLimits | None = None,
    *,
    one_hot_notes: list[dict[str, str]] | None = None,
) -> LabelInfo:
    """Check label values against the declared classes (or infer them); ``parts`` maps split
    to (where, int64 labels (n, L)). More classes than ``limits.max_classes`` are refused.
    One-hot labels of a declared single-label task are read as class indices
    (:func:`read_one_hot`), unless the caller did (``one_hot_notes``: what it noted)."""
    limits = limits or IngestLimits()
    notes = one_hot_notes
    if notes is None:
        decl, parts, notes = read_one_hot(decl, parts)
    info = _resolve(decl, parts, limits)
    info.notes = notes + info.notes
    return info


def _resolve(decl: LabelDecl, parts: Parts, limits: IngestLimits) -> LabelInfo:
    if decl.class_names is not None:
        limits.check_classes("--class-names", len(decl.class_names), "names")
    if decl.n_classes is not None:
        limits.check_classes("--n-classes", decl.n_classes)
    widths = {y.shape[1] for _, y in parts.values()}
    if len(widths) > 1:
        raise InputError(
            "labels have different widths across splits "
            f"({', '.join(f'{w}: {y.shape[1]}' for w, y in parts.values())}): expected one width"
        )
    width = widths.pop() if widths else 1
    limits.check_classes("labels", width, "label columns")
    multi = width > 1 or (decl.task_type or "").startswith("multi-label")
    if multi:
        n = width
        if decl.class_names is not None and len(decl.class_names) != n:
            raise InputError(
                f"--class-names has {len(decl.class_names)} names: expected {n} "
                "(one per multi-label column)"
            )
        if decl.n_classes is not None and decl.n_classes != n:
            raise InputError(
                f"--n-classes is {decl.n_classes} but the labels have {n} columns: expected "
                f"{n} (one class per multi-label column)"
            )
        for where, y in parts.values():
            bad = (y != 0) & (y != 1)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise InputError(
                    f"{where} has value {y[r, c]} at row {r}, column {c}: expected "
                    "0 or 1 (multi-label)"
                )
        names = list(decl.class_names or [str(i) for i in range(n)])
        return LabelInfo("multi-label, binary-class", names, n)
    n_declared = len(decl.class_names) if decl.class_names is not None else decl.n_classes
    for where, y in parts.values():
        if y.size and y.min() < 0:
            raise InputError(
                f"{where} has label {y.min()}: expected class indices >= 0"
                + negative_hint(int(y.min()))
            )
        if n_declared is not None and y.size and y.max() >= n_declared:
            row = int(np.argmax(y[:, 0] >= n_declared))
            raise InputError(
                f"{where} has label {y.max()} (row {row}) out of the declared class range: "
                f"expected 0 .. {n_declared - 1}"
            )
    n, what = _class_count(decl, parts, limits)
    names = list(decl.class_names or [str(i) for i in range(n)])
    task = decl.task_type or ("binary-class" if n == 2 else "multi-class")
    check_binary(task, n, what)
    inferred = decl.class_names is None and decl.n_classes is None and not decl.one_hot_columns
    marker = marker_warning(parts) if inferred else None
    return LabelInfo(task, names, 1, [marker] if marker else [])


def _class_count(
    decl: LabelDecl, parts: dict[str, tuple[str, np.ndarray]], limits: IngestLimits
) -> tuple[int, str]:
    """Classes of single-label ``parts``: declared (class names, ``n_classes``) or the largest
    label + 1; with where the count comes from, for messages."""
    if decl.class_names is not None:
        return len(decl.class_names), f"--class-names gives {len(decl.class_names)} names"
    if decl.n_classes is not None:
        return decl.n_classes, f"--n-classes is {decl.n_classes}"
    if decl.one_hot_columns:
        return decl.one_hot_columns, f"the one-hot labels have {decl.one_hot_columns} columns"
    for where, y in parts.values():
        if y.size:  # a label of 10**9 would otherwise make 10**9 class names
            limits.check_classes(where, int(y.max()) + 1, "classes (largest label + 1)")
    n = max((int(y.max()) + 1 for _, y in parts.values() if y.size), default=1)
    return n, f"the labels have {n} {'class' if n == 1 else 'classes'} (0 .. {n - 1})"


@dataclass
class Source(ABC):
    """A dataset to ingest. Subclasses set the fields in ``__init__`` after validating input."""

    path: Path
    kind: str = ""
    height: int = 0
    width: int = 0
    channels: int = 0
    split_sizes: dict[str, int] = field(default_factory=dict)
    label_info: LabelInfo = field(default_factory=lambda: LabelInfo("multi-class", [], 1))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return sum(self.split_sizes.values())

    def split_offsets(self) -> dict[str, int]:
        """First store row of each split (rows are ordered train, val, test)."""
        out, pos = {}, 0
        for s in SPLITS:
            out[s] = pos
            pos += self.split_sizes.get(s, 0)
        return out

    @abstractmethod
    def labels(self) -> np.ndarray:
        """int32 (N, L) labels in store order (train rows, then val, then test)."""

    @abstractmethod
    def iter_rows(self, batch_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first store row, uint8 (b, H, W, C)) batches; together they cover every row once."""

    def describe(self) -> dict[str, Any]:
        """What goes into ``meta["source"]``."""
        return {"kind": self.kind, "path": str(self.path), **self.extra}

    @property
    def carves_split(self) -> bool:
        """Whether this source carved (some of) its split itself, by fractions."""
        return False

    def carry_splits(
        self,
        held: Held,
        apply: bool = True,
        like: StoredAs | None = None,
        tick: Callable[[int, int], None] | None = None,
    ) -> dict[str, int] | None:
        """Give the rows whose split this source carved (by :func:`stratified_split`) and
        whose pixels the parent version held (``held``: pixel hash -> splits) the parent's
        split, so that growing a source moves no image between splits (:func:`carried_codes`,
        whose counts it returns); ``apply`` False only counts. The rows are hashed as the
        parent's store (``like``) made its pixels
        (:func:`~pomlia_hpc.data.sources.intensity.convert_as`). None where no split was
        carved (a split the source gives is never changed). Reads every carved image once
        more, telling ``tick`` how many after each batch (and how many in all)."""
        return None

    def check_nonempty(self) -> None:
        if self.n_images == 0:
            raise InputError(
                f"{self.kind} source '{self.path}' has zero images: expected at least one"
            )


def _flag(option: str, value: object = None) -> str:
    """``option`` as the command line spells it (``class_names``: ``--class-names``; a false
    switch ``--no-download``)."""
    return ("--no-" if value is False else "--") + option.replace("_", "-")


def take_options(kind: str, options: dict[str, Any], allowed: Sequence[str]) -> None:
    """Refuse options that ``kind`` does not know, listing the ones it does (spelt as the
    command line spells them)."""
    unknown = sorted(k for k, v in options.items() if k not in allowed and v is not None)
    if unknown:
        article = "an" if kind.lower() in ("npz", "hdf5") else "a"
        verb = "options do" if len(unknown) > 1 else "option does"
        raise InputError(
            f"{verb} not apply to {article} {kind} source: "
            f"{', '.join(_flag(k, options[k]) for k in unknown)}; it takes "
            f"{', '.join(_flag(k) for k in allowed) or 'no options'}"
        )


#: What a parent version held (:func:`pomlia_hpc.data.carry.held_splits`): its images' sorted
#: distinct pixel hashes (uint64) and a split bit mask (uint8) for each.
Held = tuple[np.ndarray, np.ndarray]


def carried_codes(
    fresh: np.ndarray,
    hashes: np.ndarray,
    held: Held,
    carved: frozenset[int] = frozenset((1, 2)),
    apply: bool = True,
    matchable: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Split codes for carved rows whose fresh codes are ``fresh`` and whose stored pixels
    hash to ``hashes`` (uint64, as :func:`~pomlia_hpc.data.explicit_fingerprint.image_hashes`),
    given ``held``: the splits each image of the parent version was in (:data:`Held`: bit
    ``c`` of its mask for split code ``c``). A row whose pixels the parent held keeps the
    parent's split where this source carves that split (``carved``: the codes of the
    held-out splits it carves; a split a folder gives is never added to: such a row goes to
    another carved held-out split, else to train); a new row keeps its fresh code. An image
    the parent held in several splits (pixel copies under other bytes) keeps its fresh code
    where that is one of them, so the same source gives the same split, else takes the
    most held-out one. ``apply`` False: the fresh codes, only counted. Counts:
    ``kept`` (rows in a parent split), ``new`` (rows the parent did not hold), ``prevented``
    (rows the parent held out of train only, kept out of it where the fresh codes put them in
    train) and ``into_train`` (such rows in train all the same). A row False in ``matchable``
    (one the parent could not hold, :func:`~pomlia_hpc.data.sources.intensity.convert_as`)
    counts as new."""
    fresh = np.asarray(fresh, np.int8)
    keys, bits = held
    at = np.minimum(np.searchsorted(keys, hashes), max(len(keys) - 1, 0))
    found = keys[at] == hashes if len(keys) else np.zeros(len(hashes), bool)
    masks = np.where(found, bits[at] if len(keys) else 0, 0).astype(np.int64)
    if matchable is not None:
        masks[~matchable] = 0
    known = masks > 0
    top = np.where(masks & 4, 2, np.where(masks & 2, 1, 0))  # the most held-out split held
    allowed = np.zeros(3, np.int8)  # the carved code each parent code maps to
    for code in (1, 2):
        # Another held-out split rather than train: a val image in test is never trained on.
        below = [c for c in carved if 0 < c <= code] or [c for c in carved if c > 0]
        allowed[code] = max(below) if below else 0
    codes = fresh.copy()
    if apply:
        move = known & ((masks >> fresh) & 1 == 0)  # the fresh code is no split it was in
        codes[move] = allowed[top[move]]
    was_out = known & (masks & 1 == 0)  # held out of train only: never trained on
    counts = {
        "kept": int((known & ((masks >> codes) & 1 == 1)).sum()),
        "new": int((~known).sum()),
        "prevented": int((was_out & (fresh == 0) & (codes > 0)).sum()),
        "into_train": int((was_out & (codes == 0)).sum()),
    }
    return codes, counts
