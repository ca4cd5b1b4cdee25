"""The knowledge base: published results imported into the registry, plus the registry's runs.

:func:`import_table` validates a long-format file (:mod:`.longformat`) completely before any
lock, keeping its rows on disk as they are checked (:mod:`.spool`; none in memory but a chunk),
then inserts them in one transaction: any error leaves the registry as it was. :func:`load` gathers
:class:`Observation` rows for one metric from any imported source and from the registry's own
runs (every task; crashed runs count as failures of their strategy: :mod:`.kbruns`, whose
names are re-exported here).

A registry run's strategy is its configuration reduced to the strategy fields (architecture,
initial weights, training mode, input size = the data set's, extra images); its value is the
test metric of the run with the best validation metric among that strategy's runs on the task
(kept up to date incrementally by :mod:`.runstats`); its cost, the wall seconds of one run at
the task's full budget (:func:`.cost.full_epochs`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, delete, func, select
from sqlalchemy.orm import Session

from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.names import validate_name
from pomlia_hpc.registry import KbDataset, KbResult, KbSource, Registry
from pomlia_hpc.registry.db import lock_name
from pomlia_hpc.strategy import overlap
from pomlia_hpc.strategy.kbruns import (
    COUNTED_EPOCHS,
    HPARAMS,
    REGISTRY_SOURCE,
    SHORT_SHARE,
    Observation,
    counted_epochs,
    counted_epochs_by_task,
    registry_observations,
    run_hparams,
    version_meta,
)
from pomlia_hpc.strategy.longformat import (
    MAX_COST_S,
    META_TEXT,
    ResultRow,
    ResultTable,
    canonical_words,
    reading,
    scan_results,
    strategy_key,
)
from pomlia_hpc.strategy.spool import RowSpool
from pomlia_hpc.strategy.translate import canonical_arch
from pomlia_hpc.vocab import check_metric

__all__ = [
    "CHANGED",
    "COUNTED_EPOCHS",
    "HPARAMS",
    "PUBLISHED_SUFFIX",
    "REGISTRY_SOURCE",
    "SHIPPED_DATA",
    "SHIPPED_META",
    "SHIPPED_TABLES",
    "SHORT_SHARE",
    "ImportReport",
    "KnowledgeBase",
    "Observation",
    "SourceInfo",
    "check_file",
    "counted_epochs",
    "counted_epochs_by_task",
    "dimensionality",
    "import_table",
    "list_sources",
    "load",
    "of_dimensionality",
    "registry_observations",
    "run_hparams",
    "task_type_note",
    "version_meta",
]

#: The published tables shipped with pomlia-hpc (``data/SOURCES.md``): the folder, (source
#: name, file) of each table, and the file of their data sets' meta-features.
SHIPPED_DATA = Path(__file__).resolve().parent / "data"
SHIPPED_TABLES = (
    ("medmnist_plus", "medmnist_plus_doerrich2025.csv"),
    ("medmnist_v2", "medmnist_v2_yang2023.csv"),
)
SHIPPED_META = "medmnist_meta_features.csv"


@dataclass(frozen=True)
class ImportReport:
    source: str
    file: str
    n_results: int
    n_datasets: int
    replaced: int
    seconds: float


@dataclass
class KnowledgeBase:
    """Observations of one metric and the meta-features of the data sets they name."""

    metric: str
    observations: list[Observation] = field(default_factory=list)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (task, strategy key) -> its successful runs far below the task's full budget, which
    #: give no value (:data:`SHORT_SHARE`): ``strategy``, ``n``, best test ``value`` (a lower
    #: bound),
    #: most ``epochs``, the full budget's ``full_epochs``, the epochs that count
    #: (``counted_epochs``)
    short: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def datasets(self) -> list[str]:
        return sorted({o.dataset for o in self.observations if o.value is not None})


def _sha256(path: Path) -> str:
    """The file's SHA-256, read in blocks (not the whole file in memory at once)."""
    with reading(path), path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _known_meta(registry: Registry, exclude_source: str | None) -> dict[str, dict[str, Any]]:
    """Meta-features imported before (any other source), by data set name."""
    with registry.session() as s:
        q = select(KbDataset.name, KbDataset.meta, KbSource.name).join(
            KbSource, KbDataset.source_id == KbSource.id
        )
        return {name: dict(meta) for name, meta, src in s.execute(q) if src != exclude_source}


def _check_meta_agrees(s: Session, table: ResultTable, source: str) -> None:
    """Refuse meta-features of a data set that another source defines differently: the
    knowledge base merges data sets by name (one row of the matrix, one set of
    meta-features, the first source's), so the two could not both hold."""
    q = (
        select(KbDataset.name, KbDataset.meta, KbSource.name)
        .join(KbSource, KbDataset.source_id == KbSource.id)
        .where(KbDataset.name.in_(list(table.meta)), KbSource.name != source)
        .order_by(KbSource.id)
    )
    for name, meta, other in s.execute(q):
        new = table.meta[name]
        # Free text (licence, notes) may be worded differently; the recommender reads
        # only the numbers and the task type.
        shared = (set(new) & set(meta)) - set(META_TEXT)
        differ = sorted(k for k in shared if new[k] != meta[k])
        if differ:
            shown = ", ".join(f"{k} {new[k]!r} here, {meta[k]!r} there" for k in differ)
            raise InputError(
                f"{table.path}: data set '{name}': meta-features differ from those of "
                f"source '{other}' ({shown}); expected the same meta-features for a data "
                "set in every source (they are merged by name): correct them, or name the "
                "data set differently; nothing was imported"
            )


def check_file(
    path: Path,
    meta_path: str | Path | None,
    known_meta: dict[str, dict[str, Any]],
    spool: RowSpool | None = None,
) -> ResultTable:
    """Validate the long-format file ``path`` whole, keeping none of its rows in memory (the
    table's ``n_rows`` and meta-features only): what :func:`import_table` checks before its
    transaction, refusing two rows of one strategy too (:class:`.overlap.WithinFile`).
    ``spool``: each chunk of rows goes there once checked (what the import inserts)."""
    within = overlap.WithinFile(path)

    def checked(rows: list[ResultRow]) -> None:
        within.check(rows)
        if spool is not None:
            spool.add(rows)

    return scan_results(path, meta_path, known_meta, checked)


def import_table(
    registry: Registry,
    path: str | Path,
    source: str,
    *,
    meta_path: str | Path | None = None,
    replace: bool = False,
) -> ImportReport:
    """Validate ``path`` (and ``meta_path``) and store them as source ``source``, all in one
    transaction. An existing source is an error unless ``replace`` (then its rows go)."""
    t0 = time.perf_counter()
    validate_name("source", source)
    if source == REGISTRY_SOURCE:
        raise InputError(f"source name '{source}' is reserved for the registry's own runs")
    p = Path(path)

    def refuse_existing(s: Session) -> KbSource | None:
        old = s.scalar(select(KbSource).where(KbSource.name == source))
        if old is not None and not replace:
            raise InputError(
                f"source '{source}' was already imported ({old.n_results} results from "
                f"{old.file}); pass --replace to replace it, or choose another --source"
            )
        return old

    with registry.session() as s:  # first, so the file's own problems do not hide it
        refuse_existing(s)
    known = _known_meta(registry, source)
    sha256 = _sha256(p)  # a missing file (NotFoundError) or a folder (InputError): one line
    # The file is read and validated before any lock, its rows kept on disk as they are
    # checked (not in memory: 1.5 GB for 500,000); the transaction inserts what was kept. Read
    # again inside it, a 500,000-row file held SQLite's write lock for the parsing (~30 s).
    with RowSpool(p) as spool:
        table = check_file(p, meta_path, known, spool)
        # The checksum, taken before the reading, holds after it: the rows kept are those of
        # the file the source records (a file changed meanwhile is refused, not half-read).
        if _sha256(p) != sha256 or spool.n_rows != table.n_rows:
            raise InputError(CHANGED.format(p))
        replaced = _insert(registry, source, table, spool, sha256, meta_path, refuse_existing)
    return ImportReport(
        source, str(p), table.n_rows, len(table.meta), replaced, time.perf_counter() - t0
    )


def _insert(
    registry: Registry,
    source: str,
    table: ResultTable,
    spool: RowSpool,
    sha256: str,
    meta_path: str | Path | None,
    refuse_existing: Callable[[Session], KbSource | None],
) -> int:
    """Store the validated ``table`` (its rows from ``spool``) as ``source`` in one
    transaction, after the checks against the other sources that need their lock; how many
    results the source replaced had."""
    p = table.path
    with registry.session() as s:
        # Two imports of one source at once: the second waits here for the first to commit
        # (it then replaces that one, or is refused without --replace) instead of deleting
        # the same rows and failing on the source's unique name.
        lock_name(s, f"kb-source:{source}")
        # Then the lock of every import, for the checks against the other sources: checked
        # before it, two imports of different sources at once each passed (neither saw the
        # other's rows) and both were imported, with values or meta-features that disagree.
        lock_name(s, "kb-sources")
        old = refuse_existing(s)  # again in the transaction: another import may have won
        _check_meta_agrees(s, table, source)
        elsewhere = overlap.Elsewhere(s, table, source)
        replaced = _drop(s, old)
        src = KbSource(
            name=source,
            # Absolute, as every path the registry records: `strategy sources` and the
            # messages naming this source are read from other folders than the import's.
            file=str(p.absolute()),
            sha256=sha256,
            n_results=table.n_rows,
            meta={"meta_file": str(Path(meta_path).absolute()) if meta_path else None},
        )
        s.add(src)
        s.flush()
        ids: dict[str, int] = {}
        for name in sorted(table.meta):
            ds = KbDataset(source_id=src.id, name=name, meta=table.meta[name])
            s.add(ds)
            s.flush()
            ids[name] = ds.id

        for rows in spool.chunks():  # exactly the rows validated, as validated
            elsewhere.check(rows)
            # Core's executemany, not the ORM's bulk insert (half the time, and no objects)
            s.connection().execute(
                cast(Table, KbResult.__table__).insert(),
                [{"source_id": src.id, "dataset_id": ids[r.dataset]} | r.columns() for r in rows],
            )
    return replaced


#: The refusal of a file that changed while the import read it (its checksum before and after).
CHANGED = "{}: the file changed while it was imported; expected it unchanged until the import \
ends: import it again; nothing was imported"


def _drop(s: Session, old: KbSource | None) -> int:
    """Delete source ``old`` (being replaced) and its rows; how many results it had."""
    if old is None:
        return 0
    # Explicit deletes: SQLite only cascades with foreign keys on, which the registry sets,
    # but being explicit keeps PostgreSQL and SQLite alike.
    s.execute(delete(KbResult).where(KbResult.source_id == old.id))
    s.execute(delete(KbDataset).where(KbDataset.source_id == old.id))
    s.delete(old)
    s.flush()
    return int(old.n_results)


@dataclass(frozen=True)
class SourceInfo:
    name: str
    file: str
    n_results: int
    n_datasets: int
    metrics: list[str]


def list_sources(registry: Registry) -> list[SourceInfo]:
    """The imported sources (oldest first) with their sizes and metrics."""
    with registry.session() as s:
        out = []
        for src in s.scalars(select(KbSource).order_by(KbSource.id)):
            n_ds = s.scalar(select(func.count()).where(KbDataset.source_id == src.id)) or 0
            metrics = sorted(
                s.scalars(select(KbResult.metric).where(KbResult.source_id == src.id).distinct())
            )
            out.append(SourceInfo(src.name, src.file, src.n_results, int(n_ds), metrics))
        return out


def _check_sources(registry: Registry, sources: Iterable[str]) -> None:
    with registry.session() as s:
        known = set(s.scalars(select(KbSource.name)))
    for name in sources:
        if name != REGISTRY_SOURCE and name not in known:
            shown = ", ".join(sorted(known | {REGISTRY_SOURCE}))
            raise NotFoundError(
                f"knowledge-base source '{name}' is not imported (known: {shown})",
                hint="pomlia strategy import FILE --source NAME",
            )


def load(
    registry: Registry,
    metric: str,
    sources: Iterable[str] | None = None,
    exclude_task: str | None = None,
    validate_on: str | None = None,
) -> KnowledgeBase:
    """Observations of ``metric`` from ``sources`` (default: every imported source plus the
    registry's runs; name ``registry`` for the runs), without the runs of ``exclude_task``;
    the runs of tasks on data set ``validate_on`` (any version) give their validation
    objective instead of their test metric (:func:`registry_observations`)."""
    metric = check_metric(metric)
    wanted = list(sources) if sources is not None else None
    if wanted is not None:
        _check_sources(registry, wanted)
    kb = KnowledgeBase(metric)
    with registry.session() as s:
        q = (
            select(
                KbSource.name,
                KbDataset.name,
                KbResult.strategy,
                KbResult.strategy_key,
                KbResult.value,
                KbResult.std,
                KbResult.cost_s,
                KbResult.gpu_hours,
            )
            .join(KbDataset, KbResult.dataset_id == KbDataset.id)
            .join(KbSource, KbResult.source_id == KbSource.id)
            .where(KbResult.metric == metric)
            .order_by(KbSource.id, KbResult.id)  # the same matrix on SQLite and PostgreSQL
        )
        if wanted is not None:
            q = q.where(KbSource.name.in_(wanted))
        for src, ds, strategy, key, value, std, cost, gpu_hours in s.execute(q):
            if cost is None and gpu_hours is not None:  # a table that gives GPU hours only
                cost = 3600.0 * gpu_hours  # one GPU: its hours are the run's wall time
            if cost is not None and not 0 <= cost <= MAX_COST_S:
                cost = None  # imported before the limit (1e308, inf): unknown, not infinite
            strategy, key = _canonical(dict(strategy), key)
            kb.observations.append(Observation(src, ds, strategy, key, value, std, cost))
        mq = select(KbDataset.name, KbDataset.meta).join(
            KbSource, KbDataset.source_id == KbSource.id
        )
        if wanted is not None:
            mq = mq.where(KbSource.name.in_(wanted))
        for name, meta in s.execute(mq):
            kb.meta.setdefault(name, dict(meta))
    if wanted is None or REGISTRY_SOURCE in wanted:
        obs, meta = registry_observations(
            registry, metric, exclude_task, short=kb.short, validate_on=validate_on
        )
        _rename_published(kb, set(meta))
        kb.observations.extend(obs)
        kb.meta.update(meta)
    return kb


def _canonical(strategy: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    """A published strategy with its architecture spelled as the AutoML space (and so the
    registry's runs) spell it (``ResNet-18`` -> ``resnet18``) and its initial weights and
    mode as :func:`.longformat.canonical_words` does (a source imported before the reader
    did), and its key: one strategy, whichever table or run names it."""
    canonical = canonical_words(strategy)
    if "arch" in strategy:
        canonical["arch"] = canonical_arch(str(strategy["arch"]))
    if canonical == strategy:
        return strategy, key
    return canonical, strategy_key(canonical)


def dimensionality(meta: Mapping[str, Any]) -> int:
    """A data set's dimensionality from its meta-features: 3 for volumes (``dims`` 3), else 2
    (a table that gives no ``dims``, and every registered data set, holds 2D images; the
    learner's ``dims3`` feature reads it alike)."""
    return 3 if meta.get("dims") == 3 else 2


def of_dimensionality(kb: KnowledgeBase, dims: int) -> tuple[KnowledgeBase, list[str]]:
    """``kb`` without the data sets of another dimensionality than ``dims`` (2 or 3), and
    their names: a 3D volume set (its strategies slice or convolve volumes) is no look-alike
    of a 2D task, nor evidence for its strategies, however close its other meta-features."""
    other = sorted(d for d, meta in kb.meta.items() if dimensionality(meta) != dims)
    if not other:
        return kb, []
    drop = set(other)
    kept = KnowledgeBase(
        kb.metric,
        [o for o in kb.observations if o.dataset not in drop],
        {d: meta for d, meta in kb.meta.items() if d not in drop},
        dict(kb.short),
    )
    return kept, other


def task_type_note(
    kb: KnowledgeBase, datasets: list[str], task_type: str
) -> tuple[int, str | None]:
    """How many of ``datasets`` (those the recommender ranks on) have ``task_type``, and, when
    none has, a note saying that the ranking rests on data sets of other types (a
    multi-class task ranked on multi-label data sets only looked as confident as any)."""
    types = [str(kb.meta.get(d, {}).get("task_type")) for d in datasets]
    n = sum(t == task_type for t in types)
    if n or not datasets:
        return n, None
    others = ", ".join(sorted(set(types)))
    return 0, (
        f"no known data set with metric '{kb.metric}' has the task's type '{task_type}': "
        f"the ranking rests on data sets of other types ({others}) only"
    )


#: Appended to a published data set's name when a registry task has that name.
PUBLISHED_SUFFIX = " (published)"


def _rename_published(kb: KnowledgeBase, task_names: set[str]) -> None:
    """Give the published data sets named like a registry task their own name. A user's task
    called ``bloodmnist`` (its own split sizes, budgets and meta-features) is not the published
    BloodMNIST: sharing one row would mix its runs' values with the published ones and replace
    the published meta-features with the task's."""
    clash = task_names & set(kb.meta)
    if not clash:
        return
    kb.observations = [
        dataclasses.replace(o, dataset=o.dataset + PUBLISHED_SUFFIX) if o.dataset in clash else o
        for o in kb.observations
    ]
    for name in clash:
        kb.meta[name + PUBLISHED_SUFFIX] = kb.meta.pop(name)
