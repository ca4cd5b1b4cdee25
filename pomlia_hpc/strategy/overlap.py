"""Rows the knowledge base would hold twice: one strategy spelled two ways in one file, or a
figure that another source gives differently.

The knowledge base keeps one value per (data set, strategy, metric) (the learner's matrix has
one cell for it) and spells an architecture the AutoML space has as the space does
(:func:`~pomlia_hpc.strategy.translate.canonical_arch`: ``ResNet-18`` and ``resnet18`` are one
strategy). Two rows of one cell used to be imported both, and the recommender then used
whichever the database returned last, an order no query fixed. :class:`WithinFile` and
:class:`Elsewhere` refuse them at import, naming the file, the line and the column, so nothing
is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import KbDataset, KbResult, KbSource
from pomlia_hpc.strategy.longformat import (
    ResultRow,
    ResultTable,
    canonical_words,
    strategy_key,
)
from pomlia_hpc.strategy.translate import canonical_arch
from pomlia_hpc.vocab import METRICS


def canonical_key(strategy: dict[str, Any]) -> str:
    """The key of ``strategy`` with its architecture, initial weights and mode spelled as the
    knowledge base spells them (the key the recommender's matrix uses)."""
    arch = str(strategy.get("arch", ""))
    return strategy_key({**canonical_words(strategy), "arch": canonical_arch(arch)})


#: The other sources' figures are read this many at a time (not all the rows at once).
FETCH_ROWS = 10_000


class WithinFile:
    """Refuses two rows of one file that are one strategy once architectures are spelled as
    the AutoML space spells them (rows equal as written are refused by the reader). Given the
    file's rows chunk by chunk (:func:`.longformat.scan_results`); keeps one int per row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.canonical: dict[str, int] = {}  # canonical strategy key -> its id
        self.strategies: dict[str, tuple[int, int]] = {}  # key as written -> (canonical, own) id
        self.archs: list[str] = []  # the architecture as written, by own id
        self.datasets: dict[str, int] = {}
        self.first: dict[int, int] = {}  # cell -> its first line << 20 | that row's own id

    def check(self, rows: list[ResultRow]) -> None:
        """Refuse the first row of ``rows`` whose cell an earlier row of the file holds."""
        for row in rows:
            ids = self.strategies.get(row.strategy_key)
            if ids is None:
                ckey = canonical_key(row.strategy)
                canon = self.canonical.setdefault(ckey, len(self.canonical))
                ids = self.strategies[row.strategy_key] = (canon, len(self.archs))
                self.archs.append(str(row.strategy["arch"]))
            ds = self.datasets.setdefault(row.dataset, len(self.datasets))
            # one int per row (< 2^62: at most MAX_ROWS < 2^20 strategies and data sets)
            cell = (ids[0] << 30 | ds) << 2 | METRICS.index(row.metric)
            seen = self.first.setdefault(cell, row.line << 20 | ids[1])
            if seen >> 20 != row.line:
                self._refuse(row, seen >> 20, self.archs[seen & ((1 << 20) - 1)])

    def _refuse(self, row: ResultRow, line: int, arch_then: str) -> None:
        arch = row.strategy["arch"]
        raise InputError(
            f"{self.path}: line {row.line}, column 'arch': {arch!r} is the strategy of "
            f"line {line} ({arch_then!r}; both are the architecture "
            f"'{canonical_arch(str(arch))}'), on the same data set and metric; expected one "
            "row per (dataset, strategy, metric); nothing was imported"
        )


def _text(strategy: dict[str, Any]) -> str:
    """``ResNet-18 pretrained/full 28px`` (``+nearest images`` with extra data)."""
    extra = " +nearest images" if strategy.get("extra_data") == "nearest" else ""
    return (
        f"{strategy['arch']} {strategy['init']}/{strategy['mode']} {strategy['img_size']}px{extra}"
    )


class Elsewhere:
    """Refuses a figure of the file that differs from the value another source gives for the
    same data set, strategy and metric (the same value is no conflict: the same results
    published twice change nothing). Made in ``s``, the import's transaction, after the lock
    every import takes (:func:`.kb.import_table`), so that a source imported at the same time
    is seen; then given the file's rows chunk by chunk. The other sources' figures on the
    file's data sets are held as ints and tuples (about 200 bytes each: 500,000 of them took
    700 MB as objects of their own)."""

    def __init__(self, s: Session, table: ResultTable, source: str) -> None:
        self.path = table.path
        self.sources: dict[int, tuple[str, str]] = {}  # id -> (name, file)
        self.canonical: dict[str, int] = {}  # canonical strategy key -> its id
        self.keys: dict[str, int | None] = {}  # a strategy key as stored -> canonical id
        self.datasets: dict[str, int] = {}
        #: cell -> (source id, line, value) of the first source (by id) that holds it
        self.held: dict[int, tuple[int, int | None, float]] = {}
        self._load(s, table, source)

    def _load(self, s: Session, table: ResultTable, source: str) -> None:
        where = (KbDataset.name.in_(sorted(table.meta)), KbSource.name != source)
        joined = (
            select(KbResult.id)
            .join(KbDataset, KbResult.dataset_id == KbDataset.id)
            .join(KbSource, KbResult.source_id == KbSource.id)
            .where(*where)
        )
        # One stored strategy per key (its JSON read once, not once per row).
        first = joined.with_only_columns(func.min(KbResult.id)).group_by(KbResult.strategy_key)
        for key, strategy in s.execute(
            select(KbResult.strategy_key, KbResult.strategy).where(KbResult.id.in_(first))
        ):
            ckey = canonical_key(dict(strategy))
            self.keys[key] = self.canonical.setdefault(ckey, len(self.canonical))
        rows = joined.with_only_columns(
            KbSource.id,
            KbSource.name,
            KbSource.file,
            KbDataset.name,
            KbResult.strategy_key,
            KbResult.metric,
            KbResult.value,
            KbResult.line,
        ).order_by(KbSource.id, KbResult.id)
        for src, name, file, dataset, key, metric, value, line in s.execute(
            rows.execution_options(yield_per=FETCH_ROWS)
        ):
            self.sources.setdefault(src, (name, file))
            cell = self._cell(dataset, self.keys[key], metric)
            self.held.setdefault(cell, (src, line, float(value)))

    def _cell(self, dataset: str, canonical: int | None, metric: str) -> int:
        ds = self.datasets.setdefault(dataset, len(self.datasets))
        return ((canonical or 0) << 30 | ds) << 2 | METRICS.index(metric)

    def check(self, rows: list[ResultRow]) -> None:
        """One :class:`InputError` naming the file, line and column of the first row of
        ``rows`` that another source gives differently."""
        if not self.held:
            return
        for row in rows:
            if row.strategy_key not in self.keys:
                ckey = canonical_key(row.strategy)
                self.keys[row.strategy_key] = self.canonical.get(ckey)
            canonical = self.keys[row.strategy_key]
            if canonical is None or row.dataset not in self.datasets:
                continue  # no other source holds this strategy, or this data set
            other = self.held.get(self._cell(row.dataset, canonical, row.metric))
            if other is None or other[2] == row.value:
                continue
            self._refuse(row, *other)

    def _refuse(self, row: ResultRow, src: int, line: int | None, value: float) -> None:
        name, file = self.sources[src]
        where = f"line {line} of {file}" if line else file
        # Shortest round-trip forms, not 6 significant digits: 0.9123451 and 0.9123449
        # both read "0.912345", a refusal of a value equal to the one it names.
        raise InputError(
            f"{self.path}: line {row.line}, column 'value': {row.value!r} for data set "
            f"'{row.dataset}', {_text(row.strategy)}, {row.metric}, but source "
            f"'{name}' gives {value!r} ({where}); expected one value per "
            "data set, strategy and metric in the knowledge base (it would use only one): "
            "leave the row out, name the data set differently, or correct the other "
            "source; nothing was imported"
        )
