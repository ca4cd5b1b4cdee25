"""Version ids, atomic publishing and registry records of dataset versions.

Version id = the first 16 hex digits of a SHA-256 over the content: a header (shape, task
type, class names, split sizes, chunk rows), the SHA-256 of every image chunk in order, and
the SHA-256 of the labels and split arrays. Source paths and ingest times are not content, so
the same pixels and labels from another file give the same version.

Publishing: a store is written in a staging folder beside the stores
(``<home>/stores/.ingest-<name>-*.tmp/``, so on their file system) and renamed to
``<home>/stores/<name>/<version>.zarr`` (atomic). If that path already exists and holds the
same content (every chunk hash checked) the new copy is dropped; a damaged one is replaced.
Only then is the version recorded in the registry, so an interrupted ingest leaves nothing
that ``data list`` or ``open_version`` can see, and re-running it finishes the job; a
recording that fails removes the store it had just published, unless another ingest of the
same content recorded it meanwhile (:func:`unpublish`).

Concurrency: :func:`record_version` checks and creates the dataset's rows under a lock on the
dataset's name (``lock_name``: an advisory lock on PostgreSQL), so ingests of one name at once
each record their version (or find it recorded) instead of failing on a unique key. The
folder ``stores/<name>/`` is made right before the rename into it (the store's files are
flushed first), and :func:`sweep_empty_folders` removes those a killed ingest left empty; an
ingest whose folder such a sweep removed between the two steps makes it again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from pomlia_hpc.data.store import current_row
from pomlia_hpc.errors import BusyError, PomliaError
from pomlia_hpc.files import (
    fsync_made_dirs,
    fsync_path,
    fsync_tree,
    make_dirs,
    publish_dir,
    remove_made_dirs,
    temp_name,
)
from pomlia_hpc.registry import Dataset, DatasetVersion, Registry
from pomlia_hpc.registry.db import lock_name

VERSION_CHARS = 16

#: How often :func:`publish` makes ``stores/<name>/`` again when a concurrent
#: :func:`sweep_empty_folders` removed it between the mkdir and the rename.
PUBLISH_TRIES = 5


def content_hash(header: dict[str, Any], digests: dict[str, Any]) -> str:
    """Full SHA-256 hex of a store's content (see the module docstring)."""
    h = hashlib.sha256()
    h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    for d in digests["images"]:
        h.update(bytes.fromhex(d))
    h.update(bytes.fromhex(digests["labels"]))
    h.update(bytes.fromhex(digests["split"]))
    return h.hexdigest()


def publish(tmp_store: Path, final: Path, *, replace: bool = False) -> bool:
    """Rename ``tmp_store`` to ``final`` (files flushed first, and the folders made for it
    after, in their parents: a new dataset's ``stores/<name>/``); False (and ``tmp_store``
    removed) if ``final`` exists: another ingest of the same content got there first.
    ``replace``: a damaged ``final`` is replaced instead (see :func:`publish_dir`).

    A ``final`` on another file system than ``tmp_store`` (a dataset's folder mounted
    elsewhere) is reached by a copy beside it, then the same rename. On an error nothing is
    left: not the copy, not a ``stores/<name>/`` folder this call made. The files are flushed
    before ``stores/<name>/`` is made (flushing a large store takes a while, and a kill then
    would leave the folder empty), and the folder is made again when another ingest's
    :func:`sweep_empty_folders` removed it before the rename."""
    fsync_tree(tmp_store)
    for _ in range(PUBLISH_TRIES):
        made = make_dirs(final.parent)
        try:
            ok = _publish_once(tmp_store, final, replace)
        except FileNotFoundError:
            if final.parent.exists() or not tmp_store.exists():
                remove_made_dirs(made)
                raise
            continue  # swept as empty between the mkdir and the rename: make it again
        except BaseException:
            remove_made_dirs(made)
            raise
        if not ok:
            shutil.rmtree(tmp_store, ignore_errors=True)
        else:  # a new dataset's stores/<name>/: its entry in stores/ too, before the row
            fsync_made_dirs(made)
        return ok
    raise OSError(errno.ENOENT, f"{final.parent} was removed {PUBLISH_TRIES} times meanwhile")


def _publish_once(tmp_store: Path, final: Path, replace: bool) -> bool:
    """One try of :func:`publish` (its files already flushed) into an existing folder."""
    if not replace and final.exists():
        return False
    try:
        ok = publish_dir(tmp_store, final, replace=replace, fsync=False)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy = temp_name(final)
        try:
            shutil.copytree(tmp_store, copy)
            ok = publish_dir(copy, final, replace=replace)
        finally:
            shutil.rmtree(copy, ignore_errors=True)
    if ok:
        fsync_path(final.parent)
    return ok


def unpublish(registry: Registry, name: str, version: str, final: Path) -> bool:
    """Remove the store :func:`publish` just made at ``final`` for ``name@version`` (its
    recording failed), and ``stores/<name>/`` with it when that leaves the folder empty: no
    store without its row. Returns whether it was removed.

    The store is content-addressed: another ingest of the same content may have found it
    published and recorded it meanwhile, so it is removed only when no row names it, checked
    under the name's lock that :func:`record_version` holds to its commit (which records no
    new row for a store no longer there). When the registry cannot be asked (the failure was
    the registry's), the store is kept: the next ingest of that content and ``registry
    recover`` find it, where removing it could take a recorded version's store."""
    try:
        with registry.session() as s:
            lock_name(s, f"dataset:{name}")
            recorded = s.scalar(
                select(DatasetVersion.id)
                .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
                .where(Dataset.name == name, DatasetVersion.version == version)
            )
            if recorded is not None:
                return False
            shutil.rmtree(final, ignore_errors=True)
    except (SQLAlchemyError, PomliaError):
        return False
    with contextlib.suppress(OSError):  # not empty: another ingest's store is there
        final.parent.rmdir()
    return True


def sweep_empty_folders(stores: Path, registry: Registry) -> list[Path]:
    """Remove the empty ``stores/<name>/`` folders of datasets without a registered version
    (left by an ingest killed between making the folder and publishing into it); return them.
    ``rmdir`` removes only an empty folder, and an ingest that made one and loses it to this
    sweep before its rename makes it again (:func:`publish`)."""
    try:
        empty = [p for p in stores.iterdir() if not p.name.startswith(".") and _empty_dir(p)]
    except OSError:
        return []
    if not empty:
        return []
    with registry.session() as s:
        known = set(
            s.scalars(
                select(Dataset.name)
                .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
                .where(Dataset.name.in_([p.name for p in empty]))
            )
        )
    removed = []
    for folder in empty:
        if folder.name in known:
            continue
        with contextlib.suppress(OSError):  # filled meanwhile, or removed by another sweep
            folder.rmdir()
            removed.append(folder)
    return removed


def _empty_dir(path: Path) -> bool:
    """Whether ``path`` is a folder (not a link to one) with nothing in it."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


@dataclass(frozen=True)
class VersionRecord:
    """What :func:`ingest` returns: the registry row's fields plus whether it is new."""

    id: int
    dataset_id: int
    name: str
    version: str
    parent: str | None
    store_path: Path
    n_images: int
    meta: dict[str, Any]
    fingerprint: dict[str, Any]
    created: bool
    repaired: tuple[str, ...] = ()
    """Identical content whose store was damaged or missing: what was wrong with it (the
    store was rewritten from this ingest); empty otherwise."""
    was_current: str | None = None
    """The version the plain name meant before this ingest, when that was another one."""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def latest_version(registry: Registry, name: str) -> DatasetVersion | None:
    """The version the plain ``name`` means (:func:`~pomlia_hpc.data.store.current_row`: the
    one last added), or None for a dataset without versions."""
    with registry.session() as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == name))
        if ds is None:
            return None
        rows = list(s.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)))
        return current_row(rows, ds.current_version_id)


def to_record(name: str, row: DatasetVersion, parent: str | None, created: bool) -> VersionRecord:
    """The record of registry row ``row`` of dataset ``name``; ``parent``: its version string."""
    return VersionRecord(
        id=row.id,
        dataset_id=row.dataset_id,
        name=name,
        version=row.version,
        parent=parent,
        store_path=Path(row.store_path),
        n_images=row.n_images,
        meta=dict(row.meta),
        fingerprint=dict(row.fingerprint),
        created=created,
    )


def record_version(
    registry: Registry,
    name: str,
    version: str,
    store_path: Path,
    n_images: int,
    meta: dict[str, Any],
    fingerprint: dict[str, Any],
    *,
    recovered: bool = False,
) -> VersionRecord:
    """Get or create the Dataset and DatasetVersion rows. A new version's parent is the version
    ``meta["parent"]`` names, the one its store grew from (its split carried from it: the
    version the plain name meant when the ingest began, or the one a harvest asked for), also
    when another ingest of the name was recorded meanwhile; none when that version is not
    registered. The version (new, or existing with identical content) becomes the dataset's
    current one: what the plain name means from now on.

    ``recovered``: a store registered again from its own metadata (``registry recover``): the
    dataset's current version stays as it is (a dataset made here records none: its newest
    registered version), as recovering a store changes nothing a user chose.

    Checked and created under a lock on the name, held to the commit: two ingests of one
    name at once (PostgreSQL) would otherwise both find no row and one fail on the unique
    key of ``datasets.name`` or of ``(dataset_id, version)``."""
    with registry.session() as s:
        lock_name(s, f"dataset:{name}")
        ds = s.scalar(select(Dataset).where(Dataset.name == name))
        if ds is None:
            ds = Dataset(name=name, description=str(meta.get("description", "")))
            s.add(ds)
            s.flush()
        existing = s.scalar(
            select(DatasetVersion).where(
                DatasetVersion.dataset_id == ds.id, DatasetVersion.version == version
            )
        )
        if existing is not None:
            if not recovered:  # what was just added is what the name means
                ds.current_version_id = existing.id
            parent_row = s.get(DatasetVersion, existing.parent_id) if existing.parent_id else None
            return to_record(name, existing, parent_row.version if parent_row else None, False)
        if not store_path.is_dir():  # see unpublish: an ingest whose recording failed
            raise BusyError(
                f"dataset {name}@{version}: its store {store_path} was removed meanwhile by "
                "another ingest of the same content, whose recording failed; nothing was "
                "recorded; expected the store in place: run the same command again"
            )
        # what the store grew from: not the version recorded just before it (another ingest
        # of the name, or the one recovered before it)
        named = meta.get("parent")
        parent_row = (
            None
            if named is None
            else s.scalar(
                select(DatasetVersion).where(
                    DatasetVersion.dataset_id == ds.id, DatasetVersion.version == named
                )
            )
        )
        row = DatasetVersion(
            dataset_id=ds.id,
            version=version,
            parent_id=parent_row.id if parent_row else None,
            store_path=str(store_path),
            n_images=n_images,
            meta={**meta, "parent": parent_row.version if parent_row else None},
            fingerprint=fingerprint,
        )
        s.add(row)
        s.flush()
        if not recovered:
            ds.current_version_id = row.id
        return to_record(name, row, parent_row.version if parent_row else None, True)
