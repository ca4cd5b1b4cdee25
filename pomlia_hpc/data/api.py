"""The data room's library API: ingest, list, show, verify, sample grids.

::

    from pomlia_hpc.data.api import ingest
    rec = ingest(workspace, registry, "pathmnist", "medmnist:pathmnist", root="/data/medmnist")
    rec = ingest(workspace, registry, "mine", "/data/mine.npz", class_names=["a", "b"])
    rec.version, rec.store_path, rec.created, rec.fingerprint

Everything here raises :class:`~pomlia_hpc.errors.PomliaError` subclasses for bad input; the
CLI (``pomlia data``) only parses and renders.
"""

from __future__ import annotations

import errno
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from pomlia_hpc.data.carry import carry_split
from pomlia_hpc.data.explicit_fingerprint import compute_fingerprint, label_counts
from pomlia_hpc.data.sources import Source, open_source
from pomlia_hpc.data.store import (
    FINGERPRINT_ATTR,
    META_ATTR,
    SPLITS,
    DatasetStore,
    check_name,
    compare_digests,
    current_row,
    find_version,
    open_store,
    store_damage,
    store_path,
)
from pomlia_hpc.data.versioning import (
    VERSION_CHARS,
    VersionRecord,
    content_hash,
    latest_version,
    publish,
    record_version,
    sweep_empty_folders,
    to_record,
    unpublish,
)
from pomlia_hpc.data.writer import StoreWriter
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import probe_writable, sweep_stale_temps, temp_name
from pomlia_hpc.registry import Dataset, DatasetVersion, Registry
from pomlia_hpc.registry.lookup import by_name_or_id
from pomlia_hpc.workspace import Workspace

ProgressFn = Callable[[str, int, int], None]
"""progress(stage, images_done_since_last_call, images_total); stages "ingest", "fingerprint",
"check store" (identical content: the existing store read back against it)."""

STORE_FORMAT = 1


def clean_stale_staging(workspace: Workspace) -> list[Path]:
    """Remove staging folders of ingests on this host whose process is gone (killed ingests):
    they have :func:`~pomlia_hpc.files.temp_name` names in ``<home>/stores/`` (and, from
    older versions, ``<home>/tmp/``), so the one sweep of the artifact layer finds them
    (those of other hosts, on a shared file system, are left alone)."""
    return sweep_stale_temps(workspace.stores) + sweep_stale_temps(workspace.tmp)


def _writable_dirs(workspace: Workspace, name: str) -> Path:
    """Create the staging folder beside the stores (on their file system, so publishing is
    one rename) and check it is writable; a readable error if not. ``stores/<name>/`` itself
    is made only when a version is published, so a refused ingest leaves no empty folder
    behind; a file in its place is refused here, before any work."""
    folder = workspace.stores / name
    if folder.exists() and not folder.is_dir():
        raise InputError(
            f"'{folder}' is a file, not a folder: expected a folder for the stores of "
            f"dataset '{name}' (or nothing there); move the file away and run `pomlia data "
            "add` again"
        )
    staging = temp_name(workspace.stores / f"ingest-{name}-{uuid.uuid4().hex[:8]}")
    try:
        staging.mkdir(parents=True)
        probe_writable(staging)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(
            f"store path '{workspace.stores}' is not writable ({exc.strerror or exc}): "
            "expected a writable directory inside the workspace (POMLIA_HOME / --home)"
        ) from exc
    return staging


def _no_space(exc: OSError, staging: Path, src: Source | None) -> InputError:
    """The one-line error for a full disk (or quota) while a store was written or published:
    the path, the space the store needs at most (uncompressed) and what is free there."""
    need = ""
    if src is not None:
        mb = src.n_images * src.height * src.width * src.channels / 1e6
        need = f"the store needs up to {mb:,.1f} MB (uncompressed), "
    try:
        free = f"{shutil.disk_usage(staging.parent).free / 1e6:,.1f} MB"
    except OSError:
        free = "unknown"
    return InputError(
        f"no space left writing dataset store under '{staging.parent}' "
        f"({exc.strerror or exc}): {need}{free} free there; expected room for the store "
        "(free space, or point POMLIA_HOME / --home at a larger file system); nothing was kept"
    )


def _split_codes(src: Source) -> np.ndarray:
    return np.concatenate(
        [np.full(src.split_sizes.get(s, 0), i, np.int8) for i, s in enumerate(SPLITS)]
    )


def _meta(
    name: str,
    src: Source,
    writer: StoreWriter,
    labels: np.ndarray,
    digests: dict[str, Any],
    full_hash: str,
    parent: str | None,
) -> dict[str, Any]:
    info = src.label_info
    offsets = src.split_offsets()
    splits = {s: [offsets[s], offsets[s] + src.split_sizes.get(s, 0)] for s in SPLITS}
    multi = info.task_type.startswith("multi-label")
    dist = {
        s: [int(c) for c in label_counts(labels[lo:hi], info.n_classes, multi)]
        for s, (lo, hi) in splits.items()
    }
    return {
        "format": STORE_FORMAT,
        "name": name,
        "version": full_hash[:VERSION_CHARS],
        "content_hash": full_hash,
        "parent": parent,
        "task_type": info.task_type,
        "class_names": info.class_names,
        "n_classes": info.n_classes,
        "label_width": info.label_width,
        "channels": src.channels,
        "height": src.height,
        "width": src.width,
        "size": src.height,
        "n_images": src.n_images,
        "chunk_rows": writer.chunk_rows,
        "splits": splits,
        "split_sizes": {s: src.split_sizes.get(s, 0) for s in SPLITS},
        "label_distribution": dist,
        "source": src.describe(),
        "ingested_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "chunk_hashes": digests,
    }


def _per_chunk(progress: ProgressFn | None, total: int) -> Callable[[int, int], None] | None:
    """The ``on_chunk(lo, hi)`` of :func:`store_damage` that reports the rows checked as stage
    ``check store`` of ``progress`` (``total``: images in the store), or None without one."""
    if progress is None:
        return None
    return lambda lo, hi: progress("check store", hi - lo, total)


def _registered(registry: Registry, name: str, version: str) -> DatasetVersion | None:
    """The registry row of ``name@version`` exactly, or None."""
    with registry.session() as s:
        return s.scalar(
            select(DatasetVersion)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(Dataset.name == name, DatasetVersion.version == version)
        )


def _write_store(
    staging: Path, src: Source, workers: int, progress: ProgressFn | None
) -> tuple[StoreWriter, np.ndarray, dict[str, Any]]:
    """Write ``src``'s rows, labels and split as a store at ``staging``; return the writer,
    the labels and the content digests. On any error the writer's threads are stopped before
    it is raised: a chunk still being written when a failure surfaced in ``finish`` (a full
    disk on an earlier chunk) made the staging folder again after the caller removed it."""
    writer = StoreWriter(
        staging,
        src.n_images,
        (src.height, src.width, src.channels),
        src.label_info.label_width,
        workers=workers,
    )
    try:
        for start, rows in src.iter_rows(writer.chunk_rows):
            writer.put(start, rows)
            if progress:
                progress("ingest", len(rows), src.n_images)
        labels = src.labels()
        return writer, labels, writer.finish(labels, _split_codes(src))
    except BaseException:
        writer.abort()
        raise


def ingest(
    workspace: Workspace,
    registry: Registry,
    name: str,
    source: str | Path | Source,
    *,
    progress: ProgressFn | None = None,
    workers: int = 2,
    parent: str | None = None,
    **options: Any,
) -> VersionRecord:
    """Ingest ``source`` as a version of dataset ``name``; return its registry record.

    ``source`` and ``options`` are as in :func:`pomlia_hpc.data.sources.open_source`. Identical
    content gives the existing version (``created=False``) and no second copy, after its store
    is checked chunk by chunk against the new content: a damaged or missing store is rewritten
    (``repaired`` says what was wrong). New content gives a new version whose parent is the
    dataset's current version (or version ``parent``, as a harvest asks: the model's training
    version). Either way the version becomes the one the plain name means. On any error
    nothing is published or registered and the staging folder is removed; a full disk is one
    :class:`~pomlia_hpc.errors.InputError` naming the path and the space.
    """
    check_name(name)
    staging = _writable_dirs(workspace, name)
    clean_stale_staging(workspace)
    sweep_stale_temps(workspace.stores / name)  # copies across file systems of killed ingests
    src: Source | None = None
    try:
        sweep_empty_folders(workspace.stores, registry)  # stores/<name>/ of killed ingests
        src = open_source(source, **options)
        prev = latest_version(registry, name)
        # Before writing: a carved split keeps the images of the version it grows from
        # where they were (data.carry), so no former val/test image reaches train.
        carry_split(src, prev if parent is None else _registered(registry, name, parent), progress)
        writer, labels, digests = _write_store(staging / "store", src, workers, progress)
        header = {
            "format": STORE_FORMAT,
            "shape": [src.n_images, src.height, src.width, src.channels],
            "chunk_rows": writer.chunk_rows,
            "task_type": src.label_info.task_type,
            "class_names": src.label_info.class_names,
            "label_width": src.label_info.label_width,
            "split_sizes": {s: src.split_sizes.get(s, 0) for s in SPLITS},
        }
        full = content_hash(header, digests)
        version = full[:VERSION_CHARS]
        final = store_path(workspace, name, version)
        parent_version = parent if parent is not None else (prev.version if prev else None)
        if parent_version == version:
            parent_version = None
        known = _registered(registry, name, version)
        repaired: list[str] = []
        if final.exists():
            # Reads the whole existing store: minutes for a large one, so it reports progress
            # like the stages before it (a Slurm output file would otherwise fall silent).
            repaired = store_damage(final, digests, _per_chunk(progress, src.n_images))
        elif known is not None:
            repaired = [f"store {final} is missing"]
        published = False  # a new store this run made visible: removed if its row is not
        if not final.exists() or repaired:
            if known is not None:  # the registered metadata and fingerprint, as they were
                meta, fp = dict(known.meta), dict(known.fingerprint)
            else:
                meta = _meta(name, src, writer, labels, digests, full, parent_version)
                writer.group.attrs[META_ATTR] = meta
                staged = DatasetStore(staging / "store")
                n = src.n_images
                fp_progress = (lambda k: progress("fingerprint", k, n)) if progress else None
                fp = compute_fingerprint(staged, workers=workers, progress=fp_progress)
            writer.group.attrs.update({META_ATTR: meta, FINGERPRINT_ATTR: fp})
            ok = publish(staging / "store", final, replace=bool(repaired))
            published = ok and known is None
        done = open_store(final)
        try:
            rec = record_version(
                registry, name, version, final, done.n_images, done.meta, done.fingerprint
            )
        except BaseException:
            if published:
                unpublish(registry, name, version, final)
            raise
        before = prev.version if prev is not None and prev.version != version else None
        return replace(rec, repaired=tuple(repaired), was_current=before)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            shutil.rmtree(staging, ignore_errors=True)  # first: the free space shown is real
            raise _no_space(exc, staging, src) from exc
        raise
    finally:
        if src is not None and hasattr(src, "close"):
            src.close()
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class VersionSummary:
    """One row of ``data list``."""

    name: str
    version: str
    parent: str | None
    n_images: int
    task_type: str
    n_classes: int
    image_size: tuple[int, int]
    channels: int
    created_at: datetime
    store_path: str
    current: bool = False
    """Whether the plain name means this version (the one last added)."""


def list_versions(registry: Registry, name: str | None = None) -> list[VersionSummary]:
    """All registered versions (of ``name`` if given), oldest first. An unknown ``name`` is
    a :class:`~pomlia_hpc.errors.NotFoundError` listing the datasets (an empty list read as
    "no versions yet")."""
    with registry.session() as s:
        q = select(Dataset.name, DatasetVersion).join(
            Dataset, Dataset.id == DatasetVersion.dataset_id
        )
        if name is not None:  # a name or an id, as everywhere (registry.lookup)
            name = by_name_or_id(s, Dataset, name, "dataset").name
            q = q.where(Dataset.name == name)
        rows = list(s.execute(q.order_by(Dataset.name, DatasetVersion.id)))
        by_id = {v.id: v.version for _, v in rows}
        datasets = {d.name: d for d in s.scalars(select(Dataset))}
        current = {
            n: getattr(
                current_row([v for m, v in rows if m == n], d.current_version_id), "id", None
            )
            for n, d in datasets.items()
        }
        out = []
        for ds_name, v in rows:
            parent = by_id.get(v.parent_id) if v.parent_id else None
            if v.parent_id and parent is None:
                p = s.get(DatasetVersion, v.parent_id)
                parent = p.version if p else None
            m = v.meta
            out.append(
                VersionSummary(
                    name=ds_name,
                    version=v.version,
                    parent=parent,
                    n_images=v.n_images,
                    task_type=str(m.get("task_type", "")),
                    n_classes=int(m.get("n_classes", 0)),
                    image_size=(int(m.get("height", 0)), int(m.get("width", 0))),
                    channels=int(m.get("channels", 0)),
                    created_at=v.created_at,
                    store_path=v.store_path,
                    current=current.get(ds_name) == v.id,
                )
            )
    return out


def _dataset_name(registry: Registry, row: DatasetVersion) -> str:
    """The name of the dataset of version ``row`` (a reference may give the dataset's id)."""
    with registry.session() as s:
        return str(s.scalar(select(Dataset.name).where(Dataset.id == row.dataset_id)))


def show(registry: Registry, ref: str) -> VersionRecord:
    """The record of ``name`` (its current version, the last added) or ``name@version``; the
    dataset may be given by its id, and the record names it by its name."""
    row = find_version(registry, ref)
    name = _dataset_name(registry, row)
    parent = None
    if row.parent_id:
        with registry.session() as s:
            p = s.get(DatasetVersion, row.parent_id)
            parent = p.version if p else None
    return to_record(name, row, parent, created=False)


@dataclass
class VerifyResult:
    """Outcome of verifying one version."""

    ref: str
    store_path: str
    ok: bool = True
    damaged_chunks: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)


def _verify_one(ref: str, row: DatasetVersion, progress: ProgressFn | None) -> VerifyResult:
    res = VerifyResult(ref, row.store_path)
    expected = row.meta.get("chunk_hashes") or {}
    try:
        store = open_store(row.store_path)
        _ = store.images  # opening it may fail
    except Exception as exc:  # a store too damaged to open is a finding, not a crash
        res.fail(f"store cannot be opened: {exc}")
        return res
    want = list(expected.get("images", []))
    n_chunks = (store.n_images + store.chunk_rows - 1) // store.chunk_rows
    if len(want) != n_chunks:
        res.fail(f"registry lists {len(want)} image chunks, the store has {n_chunks}")

    def report(lo: int, hi: int) -> None:
        if progress:
            progress(f"verify {ref}", hi - lo, store.n_images)  # one report per version

    found = compare_digests(store, expected, report)
    res.damaged_chunks.extend(found.damaged_chunks)
    if res.damaged_chunks:
        res.fail(
            f"{len(res.damaged_chunks)} damaged image chunk(s): "
            f"{', '.join(map(str, res.damaged_chunks[:20]))} (rows of chunk i: "
            f"i*{store.chunk_rows} .. (i+1)*{store.chunk_rows}-1)"
        )
    for arr in found.damaged_arrays:
        res.fail(f"array '{arr}' is damaged (hash differs)")
    return res


def verify(
    registry: Registry, ref: str | None = None, progress: ProgressFn | None = None
) -> list[VerifyResult]:
    """Recompute the chunk hashes of one version (``ref``) or of all versions and compare them
    with the registry's; a damaged or missing chunk is reported by index."""
    if ref is not None:
        row = find_version(registry, ref)
        return [_verify_one(f"{_dataset_name(registry, row)}@{row.version}", row, progress)]
    with registry.session() as s:
        rows = list(
            s.execute(
                select(Dataset.name, DatasetVersion)
                .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
                .order_by(Dataset.name, DatasetVersion.id)
            )
        )
    return [_verify_one(f"{n}@{v.version}", v, progress) for n, v in rows]
