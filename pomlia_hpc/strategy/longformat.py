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
``n_seeds``    no        number of seeds (integer in [1, :data:`MAX_SEEDS`])
``cost_s``     no        wall seconds of one training run (at most :data:`MAX_COST_S`)
``gpu_hours``  no        GPU hours of one training run (at most :data:`MAX_COST_S` / 3600)
``meta_*``     no        meta-features as columns (see below), the same on every row of a
                         data set
=============  ========  ===============================================================

Meta-features (a second file, or ``meta_``-prefixed columns): ``dataset``, ``task_type``
(``multi-class``, ``binary``, ``multi-label``, ``ordinal``), ``n_channels``, ``n_classes``,
``n_train`` are required; ``n_val``, ``n_test``, ``image_size``, ``dims`` are optional
integers; ``license`` and ``notes`` optional text. An empty optional cell means "unknown".
Column names, ``metric`` and ``extra_data`` are read in any case.
Text cells (``arch``, ``init``, ``mode``, ``license``, ``notes``) may not hold control
characters nor start with ``=``, ``+``, ``-`` or ``@`` (a spreadsheet formula).
A known ``init`` or ``mode`` is read in any case and whatever ``-``, ``_`` or spaces it holds
or lacks (``Linear_Probe``, ``linear-probe``, ``LinearProbe``, ``k-NN``), and stored as listed
above; another word is kept as written. A file holds at most :data:`MAX_ROWS` result rows.
The limits are those of ``pomlia data add``: 1 or 3 channels, 2 or 3 dims, at most 500
classes and 4096 px, at most :data:`MAX_IMAGES` images per split.
``n_classes`` must agree with ``task_type``: 2 for ``binary``, at least 2 for ``multi-class``
and ``ordinal`` (as ``pomlia data add`` requires).

Every problem is an :class:`~pomlia_hpc.errors.InputError` naming the file, the line (the
header is line 1) and the column, and saying what was expected.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pomlia_hpc import vocab
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.strategy.cells import Cell
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
#: The most seeds a published result may be the mean of (an integer the registry's column holds).
MAX_SEEDS = 10**6
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
#: A file made by mistake (a concatenation, a generated grid) is refused while it is read,
#: before it is imported.
MAX_ROWS = 500_000
#: Rows :func:`scan_results` hands on at a time: an import inserts them in one statement, so
#: its memory stays that of one chunk whatever the file's length.
CHUNK_ROWS = 5000
#: The largest cost of one training run a table may give (seconds; about 32 years of one
#: GPU): the recommender scales costs by training-set size and epochs, and a larger figure
#: (``1e308``) overflowed to infinity, which no JSON column or output can hold.
MAX_COST_S = 1e9


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One validated row: ``strategy`` holds the :data:`STRATEGY_FIELDS` (a dict the rows of
    one strategy share: not to be changed), ``key`` its :func:`strategy_key`."""

    line: int
    dataset: str
    strategy: dict[str, Any]
    metric: str
    value: float
    std: float | None = None
    n_seeds: int | None = None
    cost_s: float | None = None
    gpu_hours: float | None = None
    key: str = ""

    @property
    def strategy_key(self) -> str:
        return self.key or strategy_key(self.strategy)

    def columns(self) -> dict[str, Any]:
        """The row's ``kb_results`` columns but its source's and data set's ids."""
        fields = ("strategy", "metric", "value", "std", "n_seeds", "cost_s", "gpu_hours", "line")
        return {"strategy_key": self.strategy_key} | {f: getattr(self, f) for f in fields}


@dataclass
class ResultTable:
    """A validated file: its rows (none when scanned: :func:`scan_results`), how many it has
    and the meta-features of each data set it names."""

    path: Path
    rows: list[ResultRow]
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_rows: int = 0


def strategy_key(strategy: Mapping[str, Any]) -> str:
    """A short stable id of a strategy (16 hex digits of the SHA-1 of its sorted JSON)."""
    text = json.dumps({k: strategy[k] for k in sorted(strategy)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@lru_cache(maxsize=4096)  # a table repeats a few words over all its rows
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


#: What a file (the results or the meta-features) that could not be read as CSV text was
#: expected to be, and that the import stopped before writing anything.
UNREAD = "; expected a readable UTF-8 CSV file; nothing was imported"


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Reading ``path``: a file that is not there is one :class:`NotFoundError` (exit 4, as
    for any file a command is pointed at), one that cannot be read as CSV text one
    :class:`InputError`; both say what was expected and that nothing was imported."""
    try:
        yield
    except FileNotFoundError as exc:
        raise NotFoundError(
            f"{path}: no such file; expected a CSV file; nothing was imported"
        ) from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror}){UNREAD}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason}){UNREAD}") from exc
    except csv.Error as exc:
        raise InputError(f"{path}: not a valid CSV file ({exc}){UNREAD}") from exc


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; an unreadable file is one error (:func:`reading`)."""
    with reading(path), path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise InputError(
                f"{path}: the file is empty; expected a CSV header line; nothing was imported"
            )
        # As the header check reads them (:func:`_header`): `dataset, arch, ...` written
        # with a space after each comma named columns ' arch', whose cells read as empty.
        reader.fieldnames = [c.strip().lower() for c in reader.fieldnames]
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


def _header(path: Path) -> list[str]:
    with reading(path), path.open(newline="", encoding="utf-8-sig") as f:
        first = next(csv.reader(f), None)
    if first is None:
        raise InputError(
            f"{path}: the file is empty; expected a CSV header line; nothing was imported"
        )
    if not first:
        raise InputError(
            f"{path}: line 1 is blank; expected the CSV header line there; nothing was imported"
        )
    # Any case: a spreadsheet's `Dataset,Arch,...` was refused as missing every column.
    return [c.strip().lower() for c in first]


def _optional(cell: Cell, column: str, high: float) -> float | None:
    """The optional number in ``column`` (in [0, ``high``]); ``None`` where the file has no
    such column or the cell is empty."""
    return cell.number(column, required=False, low=0.0, high=high) if column in cell.row else None


def _meta_of(cell: Cell, prefix: str) -> dict[str, Any]:
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


def _check_classes(cell: Cell, prefix: str, task_type: str, n_classes: int) -> None:
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
        cell = Cell(p, line, row)
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
    unnamed = [str(i + 1) for i, c in enumerate(columns) if not c]
    if unnamed:  # `dataset,arch,...,value,` (a trailing comma) named a column ''
        raise InputError(
            f"{path}: line 1: column(s) {', '.join(unnamed)} of {len(columns)} have no name "
            "(a trailing comma?); expected a name for every column; nothing was imported"
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


class _Strategies:
    """The strategies of one file, each kept once: a table repeats a few hundred strategies
    over its rows, and a row of its own copy of the dict, key and strings weighed about 1 KB
    (1.5 GB to import 500,000 rows). A strategy's ``id`` is its number in this file."""

    def __init__(self) -> None:
        self.known: dict[tuple[Any, ...], tuple[dict[str, Any], str, int]] = {}
        self.datasets: dict[str, int] = {}
        self.names: dict[str, str] = {}  # each data set's name, one string for all its rows

    def get(self, values: tuple[Any, ...]) -> tuple[dict[str, Any], str, int]:
        """(strategy, its key, its id) of the :data:`STRATEGY_FIELDS` ``values``."""
        got = self.known.get(values)
        if got is None:
            strategy = dict(zip(STRATEGY_FIELDS, values, strict=True))
            got = self.known[values] = (strategy, strategy_key(strategy), len(self.known))
        return got

    def cell(self, dataset: str, strategy_id: int, metric: str) -> int:
        """One int for (data set, strategy, metric): a 500,000-row file's cells fit in
        tens of MB (each below 2^60: at most :data:`MAX_ROWS` data sets and strategies)."""
        ds = self.datasets.setdefault(dataset, len(self.datasets))
        return (strategy_id << 30 | ds) << 2 | METRICS.index(metric)


def _result(cell: Cell, strategies: _Strategies) -> tuple[ResultRow, int]:
    """The validated result of one row (its data set's name and its strategy shared with the
    file's earlier rows) and its strategy's id."""
    name = cell.name("dataset")
    dataset = strategies.names.setdefault(name, name)
    metric = cell.text("metric").lower()
    if metric not in METRICS:
        raise cell.fail("metric", "one of " + ", ".join(METRICS))
    value = cell.number("value", low=0.0, high=1.0)
    assert value is not None
    extra = (cell.text("extra_data", required=False) or "none").lower()
    if extra not in ("none", "nearest"):
        raise cell.fail("extra_data", "none or nearest (or empty)")
    strategy, key, strategy_id = strategies.get(
        (
            cell.plain("arch"),
            known_spelling(cell.plain("init"), INITS),
            known_spelling(cell.plain("mode"), MODES),
            cell.integer("img_size", low=1, high=MAX_SIDE_PX),
            extra,
        )
    )
    n_seeds = (
        cell.integer("n_seeds", required=False, low=1, high=MAX_SEEDS)
        if "n_seeds" in cell.row
        else None
    )
    result = ResultRow(
        line=cell.line,
        dataset=dataset,
        strategy=strategy,
        metric=METRICS[METRICS.index(metric)],  # one string object for every row
        value=value,
        std=_optional(cell, "std", 1.0),
        n_seeds=n_seeds,
        cost_s=_optional(cell, "cost_s", MAX_COST_S),
        gpu_hours=_optional(cell, "gpu_hours", MAX_COST_S / 3600),
        key=key,
    )
    return result, strategy_id


def scan_results(
    path: str | Path,
    meta_path: str | Path | None = None,
    known_meta: Mapping[str, dict[str, Any]] | None = None,
    on_rows: Callable[[list[ResultRow]], None] = lambda _rows: None,
) -> ResultTable:
    """Read and validate a long-format file, handing its rows to ``on_rows`` in lists of at
    most :data:`CHUNK_ROWS` and keeping none: the returned table has no ``rows``, only
    ``n_rows`` and the meta-features. Meta-features come from ``meta_`` columns, from the file
    ``meta_path``, or from ``known_meta`` (imported before), in that order; a data set with
    none of them is an error naming the first line that uses it."""
    p = Path(path)
    columns = _header(p)
    meta_cols = [c for c in columns if c.startswith(META_PREFIX)]
    allowed = {*REQUIRED, "extra_data", *OPTIONAL_NUMBERS, *meta_cols}
    _check_columns(p, columns, REQUIRED, allowed)
    if meta_cols:
        _check_meta_columns(p, meta_cols)
    if meta_cols and meta_path is not None:  # the file's were used, the other's not read
        raise InputError(
            f"{p}: line 1: meta-feature columns ({', '.join(meta_cols)}) and the meta-feature "
            f"file {meta_path} both give meta-features; expected one of them; nothing was "
            "imported"
        )
    file_meta = dict(read_meta(meta_path)) if meta_path is not None else {}
    row_meta: dict[str, tuple[int, dict[str, Any]]] = {}
    strategies = _Strategies()
    seen: dict[int, int] = {}  # cell -> its line
    chunk: list[ResultRow] = []
    n_rows = 0
    for line, row in _rows(p):
        if n_rows >= MAX_ROWS:
            raise InputError(
                f"{p}: line {line}: more than {MAX_ROWS:,} result rows; expected a table of "
                f"published results of at most {MAX_ROWS:,} rows (split a larger one into "
                "several sources); nothing was imported"
            )
        cell = Cell(p, line, row)
        result, strategy_id = _result(cell, strategies)
        dataset = result.dataset
        key = strategies.cell(dataset, strategy_id, result.metric)
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
        chunk.append(result)
        n_rows += 1
        if len(chunk) >= CHUNK_ROWS:
            on_rows(chunk)
            chunk = []
    if chunk:
        on_rows(chunk)
    if not n_rows:
        raise InputError(f"{p}: no result rows after the header; nothing was imported")
    meta_out = {d: m for d, (_, m) in row_meta.items()}
    for d in set(strategies.datasets) - set(meta_out):
        meta_out[d] = dict(file_meta.get(d) or (known_meta or {})[d])
    return ResultTable(p, [], meta_out, n_rows)


def read_results(
    path: str | Path,
    meta_path: str | Path | None = None,
    known_meta: Mapping[str, dict[str, Any]] | None = None,
) -> ResultTable:
    """:func:`scan_results` with every row kept in ``rows`` (a small file: each row weighs
    about 200 bytes here)."""
    rows: list[ResultRow] = []
    table = scan_results(path, meta_path, known_meta, rows.extend)
    table.rows = rows
    return table
