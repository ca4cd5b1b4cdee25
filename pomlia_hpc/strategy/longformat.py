"""The long format of published results, read and validated (no database here).

One CSV row per (data set, strategy, metric)::

    dataset,arch,init,mode,img_size,metric,value,std,n_seeds
    bloodmnist,ResNet-18,pretrained,full,28,acc,0.9193,0.0037,3

=============  ========  ===============================================================
column         required  meaning
=============  ========  ===============================================================
``dataset``    yes       data set name (matched to the meta-features), by the name rule
                         of ``data add`` (:mod:`pomlia_hpc.names`)
``arch``       yes       architecture, free text (``ResNet-18``, ``resnet18``, ...)
``init``       yes       initial weights: ``scratch``, ``pretrained``, ``imagenet``,
                         ``encoder``, ``model`` (:data:`INITS`) or another word
``mode``       yes       ``full``, ``linear_probe``, ``freeze_unfreeze``, ``knn``,
                         ``automl`` (:data:`MODES`) or another word
``img_size``   yes       input size in pixels (integer in [1, 4096], as ``data add``)
``metric``     yes       ``acc``, ``auc`` or ``f1_macro``
``value``      yes       the metric, a fraction in [0, 1] (not percent)
``extra_data`` no        ``none`` (default) or ``nearest``
``std``        no        standard deviation over seeds, same scale as ``value``
``n_seeds``    no        number of seeds (integer >= 1)
``cost_s``     no        wall seconds of one training run (at most :data:`MAX_COST_S`)
``gpu_hours``  no        GPU hours of one training run (at most :data:`MAX_COST_S` / 3600)
``meta_*``     no        meta-features as columns (see below), the same on every row of a
                         data set
=============  ========  ===============================================================

Meta-features (a second file, or ``meta_``-prefixed columns): ``dataset``, ``task_type``
(``multi-class``, ``binary``, ``multi-label``, ``ordinal``), ``n_channels``, ``n_classes``,
``n_train`` are required; ``n_val``, ``n_test``, ``image_size``, ``dims`` are optional
integers; ``license`` and ``notes`` optional text. An empty optional cell means "unknown".
Text cells (``arch``, ``init``, ``mode``, ``license``, ``notes``) may not hold control
characters nor start with ``=``, ``+``, ``-`` or ``@`` (a spreadsheet formula).
A known ``init`` or ``mode`` is read in any case and with ``-`` or a space for ``_``
(``Linear_Probe``, ``linear-probe``, ``k-NN``), and stored as listed above; another word is
kept as written. A file holds at most :data:`MAX_ROWS` result rows.
The limits are those of ``pomlia data add``: 1 or 3 channels, 2 or 3 dims, at most 500
classes and 4096 px, at most :data:`MAX_IMAGES` images per split.
``n_classes`` must agree with ``task_type``: 2 for ``binary``, at least 2 for ``multi-class``
and ``ordinal`` (as ``pomlia data add`` requires).

Every problem is an :class:`~pomlia_hpc.errors.InputError` naming the file, the line (the
header is line 1) and the column, and saying what was expected.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pomlia_hpc import vocab
from pomlia_hpc.errors import InputError
from pomlia_hpc.names import validate_name
from pomlia_hpc.vocab import METRICS, TASK_TYPES

STRATEGY_FIELDS: tuple[str, ...] = ("arch", "init", "mode", "img_size", "extra_data")
REQUIRED: tuple[str, ...] = ("dataset", "arch", "init", "mode", "img_size", "metric", "value")
OPTIONAL_NUMBERS: tuple[str, ...] = ("std", "n_seeds", "cost_s", "gpu_hours")
META_REQUIRED: tuple[str, ...] = ("task_type", "n_channels", "n_classes", "n_train")
META_INTS: tuple[str, ...] = ("n_channels", "n_classes", "n_train")
META_OPTIONAL_INTS: tuple[str, ...] = ("n_val", "n_test", "image_size", "dims")
META_TEXT: tuple[str, ...] = ("license", "notes")
META_PREFIX = "meta_"
#: The initial weights and training modes the recommender and the AutoML space know, as the
#: knowledge base spells them (a table's other spellings of them are read as these).
INITS: tuple[str, ...] = ("scratch", "pretrained", "imagenet", "encoder", "model")
MODES: tuple[str, ...] = ("full", "linear_probe", "freeze_unfreeze", "knn", "automl")
#: The limits `pomlia data add` keeps to (``data.sources.base.MAX_SIDE_PX`` and
#: ``MAX_CLASSES``; not imported, which would load the Zarr stack into every recommendation;
#: a test checks they agree): pixels of an image side, classes of a data set.
MAX_SIDE_PX = 4096
MAX_CLASSES = 500
#: The most images of one split a table may give (a billion): more is a typo, and it would
#: weigh in the recommender's size distance as if it were real.
MAX_IMAGES = 10**9
#: The allowed values of the meta-features that have a short list of them.
META_CHOICES: dict[str, tuple[int, ...]] = {"n_channels": (1, 3), "dims": (2, 3)}
#: (lowest, highest) of the other integer meta-features.
META_RANGES: dict[str, tuple[int, int]] = {
    "n_classes": (1, MAX_CLASSES),
    "n_train": (1, MAX_IMAGES),
    "n_val": (1, MAX_IMAGES),
    "n_test": (1, MAX_IMAGES),
    "image_size": (1, MAX_SIDE_PX),
}
#: The most result rows one file may hold: 200 times the largest shipped table (2,400 rows).
#: Every row is held in memory until the one transaction (about 3 KB a row), so a file made by
#: mistake (a concatenation, a generated grid) is refused while it is read, not after it has
#: filled the machine's memory.
MAX_ROWS = 500_000
#: The largest cost of one training run a table may give (seconds; about 32 years of one
#: GPU): the recommender scales costs by training-set size and epochs, and a larger figure
#: (``1e308``) overflowed to infinity, which no JSON column or output can hold.
MAX_COST_S = 1e9
#: First characters a spreadsheet takes for a formula (``=cmd|' /c calc'!A1``): a text cell
#: starting with one is refused, as the tables are read back and shared as CSV.
FORMULA_STARTS = ("=", "+", "-", "@")
#: Unicode categories of characters refused in text cells: control characters (newlines,
#: escape sequences that rewrite a terminal), invisible format characters (bidi overrides
#: that show text in another order than it is stored) and line/paragraph separators.
_CONTROL_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")


@dataclass(frozen=True)
class ResultRow:
    """One validated row: ``strategy`` holds the :data:`STRATEGY_FIELDS`."""

    line: int
    dataset: str
    strategy: dict[str, Any]
    metric: str
    value: float
    std: float | None = None
    n_seeds: int | None = None
    cost_s: float | None = None
    gpu_hours: float | None = None

    @property
    def strategy_key(self) -> str:
        return strategy_key(self.strategy)


@dataclass
class ResultTable:
    """A validated file: its rows and the meta-features of each data set it names."""

    path: Path
    rows: list[ResultRow]
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)


def strategy_key(strategy: Mapping[str, Any]) -> str:
    """A short stable id of a strategy (16 hex digits of the SHA-1 of its sorted JSON)."""
    text = json.dumps({k: strategy[k] for k in sorted(strategy)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def known_spelling(value: str, known: tuple[str, ...]) -> str:
    """``value`` as ``known`` spells it when it is one of them written in another case or with
    ``-``, ``_`` or spaces elsewhere (``Linear_Probe``, ``linear probe``, ``k-NN``); any other
    word as given. Published tables write ``Linear Probe`` or ``kNN``: read as written, one
    strategy became two rows of the matrix, and the AutoML space could not express either."""
    folded = re.sub(r"[\s_-]+", "", value).casefold()
    for word in known:
        if word.replace("_", "") == folded:
            return word
    return value


def canonical_words(strategy: Mapping[str, Any]) -> dict[str, Any]:
    """``strategy`` with its ``init`` and ``mode`` spelled as :data:`INITS` and :data:`MODES`
    (:func:`known_spelling`): for sources imported before the reader did so."""
    out = dict(strategy)
    for column, known in (("init", INITS), ("mode", MODES)):
        if isinstance(out.get(column), str):
            out[column] = known_spelling(out[column], known)
    return out


def normalize_task_type(value: str) -> str | None:
    """One of :data:`TASK_TYPES` for any known spelling (MedMNIST's too), else ``None``."""
    try:
        return vocab.normalize_task_type(value)
    except InputError:
        return None


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; an unreadable file is one :class:`InputError`."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise InputError(f"{path}: the file is empty; expected a CSV header line")
            # As the header check reads them (:func:`_header`): `dataset, arch, ...` written
            # with a space after each comma named columns ' arch', whose cells read as empty.
            reader.fieldnames = [c.strip() for c in reader.fieldnames]
            for row in reader:
                if None in row:
                    raise InputError(
                        f"{path}: line {reader.line_num}: more cells than the header's "
                        f"{len(reader.fieldnames)} columns"
                    )
                if None in row.values():  # DictReader fills a short row's last cells with None
                    n = sum(v is not None for v in row.values())
                    raise InputError(
                        f"{path}: line {reader.line_num}: {n} cells, fewer than the header's "
                        f"{len(reader.fieldnames)} columns"
                    )
                yield reader.line_num, row
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise InputError(f"{path}: not a valid CSV file ({exc})") from exc


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            first = next(csv.reader(f), None)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    if not first:
        raise InputError(f"{path}: the file is empty; expected a CSV header line")
    return [c.strip() for c in first]


class _Cell:
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
            validate_name("data set", value)
        except InputError as exc:
            rule = str(exc).partition("expected ")[2]
            raise self.fail(column, f"a data set name as `data add` takes: {rule}") from None
        return value

    def plain(self, column: str, *, required: bool = True) -> str:
        """The text in ``column``, refused when it holds a control character or starts like a
        spreadsheet formula (:data:`FORMULA_STARTS`): such cells are shown in tables and
        written back to CSV files, where they would run or garble what is shown."""
        value = self.text(column, required=required)
        bad = [c for c in value if unicodedata.category(c) in _CONTROL_CATEGORIES]
        if bad or value.startswith(FORMULA_STARTS):
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
        expected = _range_text(low, high)
        try:
            value = float(text)
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
            value = int(text)
        except ValueError:
            raise self.fail(column, expected) from None
        allowed = value in choices if choices else low <= value and (high is None or value <= high)
        if not allowed:
            raise self.fail(column, expected)
        return value


def _range_text(low: float, high: float) -> str:
    """``a number in [0, 1]``, ``a number >= 0`` or ``a number <= 5``: the range of a
    number column in words (an unbounded end is left out, not written as ``inf``)."""
    if math.isinf(low) and math.isinf(high):
        return "a finite number"
    if math.isinf(high):
        return f"a number >= {low:g}"
    if math.isinf(low):
        return f"a number <= {high:g}"
    return f"a number in [{low:g}, {high:g}]"


def _optional(cell: _Cell, column: str, high: float) -> float | None:
    """The optional number in ``column`` (in [0, ``high``]); ``None`` where the file has no
    such column or the cell is empty."""
    return cell.number(column, required=False, low=0.0, high=high) if column in cell.row else None


def _meta_of(cell: _Cell, prefix: str) -> dict[str, Any]:
    """The meta-features of one row (columns ``prefix + name``)."""
    task = cell.text(prefix + "task_type")
    task_type = normalize_task_type(task)
    if task_type is None:
        raise cell.fail(prefix + "task_type", "one of " + ", ".join(TASK_TYPES))
    meta: dict[str, Any] = {"task_type": task_type}
    for name in META_INTS + META_OPTIONAL_INTS:
        required = name in META_REQUIRED
        if required or prefix + name in cell.row:
            low, high = META_RANGES.get(name, (1, MAX_IMAGES))
            value = cell.integer(
                prefix + name,
                required=required,
                low=low,
                high=high,
                choices=META_CHOICES.get(name, ()),
            )
            if value is not None:
                meta[name] = value
    for name in META_TEXT:
        if prefix + name in cell.row and cell.text(prefix + name, required=False):
            meta[name] = cell.plain(prefix + name)
    _check_classes(cell, prefix, task_type, meta["n_classes"])
    return meta


def _check_classes(cell: _Cell, prefix: str, task_type: str, n_classes: int) -> None:
    """Refuse a class count the task type contradicts, as `pomlia data add` does: a binary
    task has exactly 2 classes, a multi-class or ordinal one at least 2 (a task of one class
    has nothing to tell apart; the recommender would compare it with real ones)."""
    if task_type == "binary" and n_classes != 2:
        more = " (or task_type multi-class)" if n_classes > 2 else ""
        raise cell.fail(prefix + "n_classes", f"2 for task_type 'binary'{more}")
    if task_type in ("multi-class", "ordinal") and n_classes < 2:
        raise cell.fail(prefix + "n_classes", f"an integer >= 2 for task_type '{task_type}'")


def _other_separator(header: str) -> str | None:
    """The separator a one-column header seems to use instead of commas (a spreadsheet
    of a locale whose decimal point is a comma writes ';'), or None."""
    for sep in (";", "\t", "|"):
        if sep in header:
            return sep
    return None


def read_meta(path: str | Path) -> dict[str, dict[str, Any]]:
    """Meta-features per data set from a meta-feature file (see the module docstring)."""
    p = Path(path)
    columns = _header(p)
    allowed = {"dataset", *META_REQUIRED, *META_OPTIONAL_INTS, *META_INTS, *META_TEXT}
    _check_columns(p, columns, ("dataset", *META_REQUIRED), allowed)
    out: dict[str, dict[str, Any]] = {}
    first: dict[str, int] = {}
    for line, row in _rows(p):
        cell = _Cell(p, line, row)
        name = cell.name("dataset")
        if name in out:
            raise InputError(
                f"{p}: line {line}, column 'dataset': data set '{name}' was already described "
                f"on line {first[name]}; expected one line per data set; nothing was imported"
            )
        out[name], first[name] = _meta_of(cell, ""), line
    return out


def _check_columns(
    path: Path, columns: list[str], required: tuple[str, ...], allowed: set[str]
) -> None:
    missing = [c for c in required if c not in columns]
    if missing and len(columns) == 1 and (sep := _other_separator(columns[0])):
        raise InputError(
            f"{path}: line 1: one column {columns[0][:60]!r}: the cells look separated by "
            f"{sep!r}; expected a CSV file separated by commas (save it again as CSV with ',' "
            "as the separator and '.' as the decimal point); nothing was imported"
        )
    if missing:
        raise InputError(
            f"{path}: line 1: missing column(s) {', '.join(missing)}; expected at least "
            f"{', '.join(required)}; nothing was imported"
        )
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise InputError(
            f"{path}: line 1: unknown column(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(sorted(allowed))}; nothing was imported"
        )
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise InputError(f"{path}: line 1: column(s) {', '.join(dup)} appear twice")


def _check_meta_columns(path: Path, meta_cols: list[str]) -> None:
    """Refuse unknown ``meta_`` columns, and ``meta_`` columns without the required ones."""
    names = {c[len(META_PREFIX) :] for c in meta_cols}
    allowed_meta = {*META_REQUIRED, *META_OPTIONAL_INTS, *META_INTS, *META_TEXT}
    bad = sorted(names - allowed_meta)
    if bad:
        raise InputError(
            f"{path}: line 1: unknown meta-feature column(s) "
            f"{', '.join(META_PREFIX + b for b in bad)}; expected meta_ plus one of "
            f"{', '.join(sorted(allowed_meta))}; nothing was imported"
        )
    absent = [META_PREFIX + c for c in META_REQUIRED if c not in names]
    if absent:
        raise InputError(
            f"{path}: line 1: meta-feature columns are given, but {', '.join(absent)} "
            "is missing; nothing was imported"
        )


def read_results(
    path: str | Path,
    meta_path: str | Path | None = None,
    known_meta: Mapping[str, dict[str, Any]] | None = None,
) -> ResultTable:
    """Read and validate a long-format file. Meta-features come from ``meta_`` columns, from
    the file ``meta_path``, or from ``known_meta`` (imported before), in that order; a data set
    with none of them is an error naming the first line that uses it."""
    p = Path(path)
    columns = _header(p)
    meta_cols = [c for c in columns if c.startswith(META_PREFIX)]
    allowed = {*REQUIRED, "extra_data", *OPTIONAL_NUMBERS, *meta_cols}
    _check_columns(p, columns, REQUIRED, allowed)
    if meta_cols:
        _check_meta_columns(p, meta_cols)
    file_meta = dict(read_meta(meta_path)) if meta_path is not None else {}
    row_meta: dict[str, tuple[int, dict[str, Any]]] = {}
    rows: list[ResultRow] = []
    seen: dict[tuple[str, str, str], int] = {}
    for line, row in _rows(p):
        if len(rows) >= MAX_ROWS:
            raise InputError(
                f"{p}: line {line}: more than {MAX_ROWS:,} result rows; expected a table of "
                f"published results of at most {MAX_ROWS:,} rows (split a larger one into "
                "several sources); nothing was imported"
            )
        cell = _Cell(p, line, row)
        dataset = cell.name("dataset")
        metric = cell.text("metric").lower()
        if metric not in METRICS:
            raise cell.fail("metric", "one of " + ", ".join(METRICS))
        value = cell.number("value", low=0.0, high=1.0)
        assert value is not None
        extra = cell.text("extra_data", required=False) or "none"
        if extra not in ("none", "nearest"):
            raise cell.fail("extra_data", "none or nearest (or empty)")
        strategy = {
            "arch": cell.plain("arch"),
            "init": known_spelling(cell.plain("init"), INITS),
            "mode": known_spelling(cell.plain("mode"), MODES),
            "img_size": cell.integer("img_size", low=1, high=MAX_SIDE_PX),
            "extra_data": extra,
        }
        n_seeds = cell.integer("n_seeds", required=False, low=1) if "n_seeds" in row else None
        result = ResultRow(
            line=line,
            dataset=dataset,
            strategy=strategy,
            metric=metric,
            value=value,
            std=_optional(cell, "std", 1.0),
            n_seeds=n_seeds,
            cost_s=_optional(cell, "cost_s", MAX_COST_S),
            gpu_hours=_optional(cell, "gpu_hours", MAX_COST_S / 3600),
        )
        key = (dataset, result.strategy_key, metric)
        if key in seen:
            raise InputError(
                f"{p}: line {line}: duplicates line {seen[key]} (same dataset, strategy "
                f"columns {', '.join(STRATEGY_FIELDS)} and metric); expected one row per "
                "(dataset, strategy, metric); nothing was imported"
            )
        seen[key] = line
        if meta_cols:
            meta = _meta_of(cell, META_PREFIX)
            if dataset in row_meta and row_meta[dataset][1] != meta:
                raise InputError(
                    f"{p}: line {line}: meta-features of '{dataset}' differ from line "
                    f"{row_meta[dataset][0]}; expected the same meta_ values on every row of "
                    "a data set; nothing was imported"
                )
            row_meta.setdefault(dataset, (line, meta))
        elif dataset not in file_meta and dataset not in (known_meta or {}):
            where = f"the meta-feature file {meta_path}" if meta_path else "meta_ columns"
            raise InputError(
                f"{p}: line {line}, column 'dataset': data set '{dataset}' has no "
                f"meta-features (not in {where}, nor imported before); expected its task "
                "type, channels, classes and training size; nothing was imported"
            )
        rows.append(result)
    if not rows:
        raise InputError(f"{p}: no result rows after the header; nothing was imported")
    used = {r.dataset for r in rows}
    meta_out = {d: m for d, (_, m) in row_meta.items()}
    for d in used - set(meta_out):
        meta_out[d] = dict(file_meta.get(d) or (known_meta or {})[d])
    return ResultTable(p, rows, meta_out)
