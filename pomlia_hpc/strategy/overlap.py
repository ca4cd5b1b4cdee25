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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
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


@dataclass(frozen=True)
class _Held:
    """A figure another source already holds."""

    source: str
    file: str
    line: int | None
    value: float


def _cell(dataset: str, strategy: dict[str, Any], metric: str) -> tuple[str, str, str]:
    return dataset, canonical_key(strategy), metric


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


def _held_elsewhere(
    s: Session, table: ResultTable, source: str
) -> dict[tuple[str, str, str], _Held]:
    """The figures other sources hold on the data sets of ``table``, by cell."""
    held: dict[tuple[str, str, str], _Held] = {}
    q = (
        select(
            KbSource.name,
            KbSource.file,
            KbDataset.name,
            KbResult.strategy,
            KbResult.metric,
            KbResult.value,
            KbResult.line,
        )
        .join(KbDataset, KbResult.dataset_id == KbDataset.id)
        .join(KbSource, KbResult.source_id == KbSource.id)
        .where(KbDataset.name.in_(sorted(table.meta)), KbSource.name != source)
        .order_by(KbSource.id, KbResult.id)
    )
    for src, file, dataset, strategy, metric, value, line in s.execute(q):
        held.setdefault(
            _cell(dataset, dict(strategy), metric), _Held(src, file, line, float(value))
        )
    return held


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
    is seen; then given the file's rows chunk by chunk."""

    def __init__(self, s: Session, table: ResultTable, source: str) -> None:
        self.path = table.path
        self.held = _held_elsewhere(s, table, source)
        self.keys: dict[str, str] = {}  # a row's strategy key -> the canonical one

    def check(self, rows: list[ResultRow]) -> None:
        """One :class:`InputError` naming the file, line and column of the first row of
        ``rows`` that another source gives differently."""
        if not self.held:
            return
        for row in rows:
            ckey = self.keys.get(row.strategy_key)
            if ckey is None:
                ckey = self.keys[row.strategy_key] = canonical_key(row.strategy)
            other = self.held.get((row.dataset, ckey, row.metric))
            if other is None or other.value == row.value:
                continue
            where = f"line {other.line} of {other.file}" if other.line else other.file
            # Shortest round-trip forms, not 6 significant digits: 0.9123451 and 0.9123449
            # both read "0.912345", a refusal of a value equal to the one it names.
            raise InputError(
                f"{self.path}: line {row.line}, column 'value': {row.value!r} for data set "
                f"'{row.dataset}', {_text(row.strategy)}, {row.metric}, but source "
                f"'{other.source}' gives {other.value!r} ({where}); expected one value per "
                "data set, strategy and metric in the knowledge base (it would use only one): "
                "leave the row out, name the data set differently, or correct the other "
                "source; nothing was imported"
            )
