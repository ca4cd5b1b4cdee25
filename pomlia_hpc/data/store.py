"""Reading dataset stores: one Zarr v3 group per dataset version (the stable reader API).

Layout of a store (``<home>/stores/<name>/<version>.zarr``)::

    images   uint8 (N, H, W, C)  chunked along N only: chunk = (chunk_rows, H, W, C),
                                 Blosc-zstd compressed; C is 1 (gray) or 3 (RGB)
    labels   int32 (N, L)        L = 1 for single-label tasks (class index),
                                 L = n_classes for multi-label tasks (0/1 per class)
    split    int8  (N,)          0 = train, 1 = val, 2 = test; rows are ordered by split, so
                                 each split is one contiguous row range (``meta["splits"]``)
    attrs["pomlia"]              metadata dict (see below)
    attrs["fingerprint"]         the explicit fingerprint JSON (see ``explicit_fingerprint``)

``meta`` keys that readers may rely on: ``name``, ``version``, ``task_type`` (MedMNIST's
strings: ``"multi-class"``, ``"binary-class"``, ``"multi-label, binary-class"``,
``"ordinal-regression"``), ``class_names`` (list[str]), ``n_classes``, ``channels``, ``height``,
``width``, ``size`` (= height for square images), ``n_images``, ``chunk_rows``, ``splits``
(``{"train": [start, stop], "val": [...], "test": [...]}``, row ranges, stop exclusive),
``label_distribution`` (``{split: [count per class]}``), ``source`` (dict), ``ingested_at``
(ISO time, UTC), ``parent`` (parent version id or ``None``), ``content_hash``.

Reads are checked: :meth:`DatasetStore.read_rows` compares every image chunk it decodes with
the SHA-256 recorded at ingest (``meta["chunk_hashes"]``; once per chunk and store object, at
hashing speed, about 1 GB/s per core) and :meth:`~DatasetStore.read_labels` the labels, so a
flipped byte that Blosc decodes without complaint stops the reader with a
:class:`~pomlia_hpc.errors.DataIntegrityError` naming dataset, version and chunk, instead of
training on damaged data.

Typical use (fingerprint extraction, AutoML)::

    from pomlia_hpc.data.store import open_version
    ds = open_version(workspace, "pathmnist")          # current version (the last added)
    ds = open_version(registry, "pathmnist@3fa2c1")    # a version, by id or unique prefix
    for start, stop in ds.chunk_ranges():               # whole chunks: one read each
        x = ds.read_rows(start, stop)                   # uint8 (n, H, W, C)
        y = ds.read_labels(start, stop)                 # int32 (n, L)
    lo, hi = ds.split_range("train")

``open_version`` accepts a :class:`~pomlia_hpc.registry.Registry`, a
:class:`~pomlia_hpc.workspace.Workspace` (its registry is opened) or, via :func:`open_store`,
a path to a store directory. This API is stable: new keys may be added to ``meta``; nothing
listed here changes meaning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from sqlalchemy import select

from pomlia_hpc.errors import DataIntegrityError, InputError, NotFoundError
from pomlia_hpc.names import DATASET_NAME_MAX, validate_name
from pomlia_hpc.registry import Dataset, DatasetVersion, Registry
from pomlia_hpc.registry.lookup import by_name_or_id
from pomlia_hpc.workspace import Workspace

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Split names; the code stored in ``split`` is the index in this tuple."""

SPLIT_CODE: dict[str, int] = {s: i for i, s in enumerate(SPLITS)}

META_ATTR = "pomlia"
FINGERPRINT_ATTR = "fingerprint"
STORE_SUFFIX = ".zarr"


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid dataset name (:mod:`pomlia_hpc.names`), else raise."""
    return validate_name("dataset", name, max_len=DATASET_NAME_MAX)


def store_path(workspace: Workspace, name: str, version: str) -> Path:
    """Where the store of ``name`` at ``version`` lives inside ``workspace``."""
    return workspace.stores / name / f"{version}{STORE_SUFFIX}"


def _attr_dict(group: zarr.Group, key: str) -> dict[str, Any]:
    value = group.attrs.get(key, {})
    return dict(value) if isinstance(value, dict) else {}


@dataclass(frozen=True)
class DatasetStore:
    """Read access to one published dataset version (see the module docstring for the layout).

    ``verify`` (default on): check what is read against the hashes recorded at ingest."""

    path: Path
    verify: bool = True

    @cached_property
    def group(self) -> zarr.Group:
        try:
            return zarr.open_group(str(self.path), mode="r")
        except Exception as exc:  # zarr raises several types for a missing/broken group
            raise InputError(
                f"dataset store '{self.path}' cannot be opened: expected a Zarr v3 group "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    @cached_property
    def meta(self) -> dict[str, Any]:
        """The metadata dict (task_type, class_names, channels, size, splits, ...)."""
        return _attr_dict(self.group, META_ATTR)

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        """The explicit fingerprint JSON (empty dict if not computed yet)."""
        return _attr_dict(self.group, FINGERPRINT_ATTR)

    @property
    def images(self) -> zarr.Array:
        """uint8 array (N, H, W, C), chunked along N."""
        arr = self.group["images"]
        assert isinstance(arr, zarr.Array)
        return arr

    @property
    def labels(self) -> zarr.Array:
        """int32 array (N, L)."""
        arr = self.group["labels"]
        assert isinstance(arr, zarr.Array)
        return arr

    @property
    def split(self) -> zarr.Array:
        """int8 array (N,): 0 train, 1 val, 2 test."""
        arr = self.group["split"]
        assert isinstance(arr, zarr.Array)
        return arr

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.parent.name))

    @property
    def version(self) -> str:
        return str(self.meta.get("version", self.path.name.removesuffix(STORE_SUFFIX)))

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def chunk_rows(self) -> int:
        """Rows (images) per chunk of ``images``; reads aligned to it touch whole chunks."""
        return int(self.images.chunks[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        h, w, c = self.images.shape[1:]
        return int(h), int(w), int(c)

    @property
    def task_type(self) -> str:
        return str(self.meta["task_type"])

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.meta["class_names"]]

    def split_range(self, split: str) -> tuple[int, int]:
        """Row range [start, stop) of ``split`` ("train", "val" or "test")."""
        if split not in SPLITS:
            raise InputError(f"split '{split}' is not known: expected one of {', '.join(SPLITS)}")
        lo, hi = self.meta["splits"].get(split, [0, 0])
        return int(lo), int(hi)

    def first_rows(self, split: str, max_images: int | None = None) -> tuple[int, int]:
        """Rows [lo, hi) of ``split`` (``all``: every row), the first ``max_images`` of them
        when given; empty when the split has none. What a fingerprint encoder's training
        reads of this store (:mod:`pomlia_hpc.fingerprint.rows`), and so what the leakage
        checks count as seen by it (:mod:`pomlia_hpc.models.seen`)."""
        lo, hi = (0, self.n_images) if split == "all" else self.split_range(split)
        if max_images is not None:
            hi = min(hi, lo + max_images)
        return lo, max(lo, hi)

    def chunk_ranges(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, int]]:
        """Chunk-aligned row ranges covering [start, stop)."""
        stop = self.n_images if stop is None else min(stop, self.n_images)
        step = self.chunk_rows
        pos = start
        while pos < stop:
            nxt = min(stop, (pos // step + 1) * step)
            yield pos, nxt
            pos = nxt

    @cached_property
    def _chunk_hashes(self) -> list[str] | None:
        hashes = (self.meta.get("chunk_hashes") or {}).get("images")
        return [str(h) for h in hashes] if self.verify and isinstance(hashes, list) else None

    @cached_property
    def verified_chunks(self) -> set[int]:
        """Chunks already checked by this object (each is hashed once)."""
        return set()

    def _damaged(self, what: str, why: str) -> DataIntegrityError:
        ref = f"{self.name}@{self.version}"
        return DataIntegrityError(
            f"dataset '{self.name}' version '{self.version}': {what} of store '{self.path}' "
            f"{why}; run `pomlia data verify {ref}` to list the damage, then re-ingest the "
            "dataset or restore the store"
        )

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Images of rows [start, stop): uint8 (n, H, W, C). Every chunk touched is checked
        against its ingest hash the first time (the read is widened to whole chunks for it);
        raises :class:`~pomlia_hpc.errors.DataIntegrityError` on a damaged chunk."""
        hashes = self._chunk_hashes
        stop = min(stop, self.n_images)
        if start >= stop:
            return np.asarray(self.images[start:stop])
        step = self.chunk_rows
        first, last = start // step, (stop - 1) // step
        todo = [i for i in range(first, last + 1) if i not in self.verified_chunks]
        if hashes is None or not todo:
            return self._decode(start, stop, first, last)
        lo, hi = first * step, min(self.n_images, (last + 1) * step)
        block = self._decode(lo, hi, first, last)
        for idx in todo:
            a, b = idx * step - lo, min(hi, (idx + 1) * step) - lo
            got = hashlib.sha256(np.ascontiguousarray(block[a:b]).data).hexdigest()
            if idx >= len(hashes) or got != hashes[idx]:
                rows = f"rows {idx * step}..{idx * step + b - a - 1}"
                raise self._damaged(
                    f"image chunk {idx} ({rows})", "differs from the hash recorded at ingest"
                )
            self.verified_chunks.add(idx)
        if (lo, hi) == (start, stop):
            return block
        return np.ascontiguousarray(block[start - lo : stop - lo])  # not a view of the chunks

    def _decode(self, start: int, stop: int, first: int, last: int) -> np.ndarray:
        try:
            return np.asarray(self.images[start:stop])
        except (RuntimeError, ValueError, OSError) as exc:  # Blosc/zarr: bytes not decodable
            chunks = f"image chunk {first}" if first == last else f"image chunks {first}..{last}"
            raise self._damaged(chunks, f"cannot be decoded ({type(exc).__name__}: {exc})") from exc

    @cached_property
    def _all_labels(self) -> np.ndarray:
        try:
            labels = np.asarray(self.labels[:])
        except (RuntimeError, ValueError, OSError) as exc:
            raise self._damaged("the labels", f"cannot be decoded ({exc})") from exc
        want = (self.meta.get("chunk_hashes") or {}).get("labels")
        if self.verify and want is not None:
            got = hashlib.sha256(np.ascontiguousarray(labels, dtype="<i4").data).hexdigest()
            if got != want:
                raise self._damaged("the labels", "differ from the hash recorded at ingest")
        return labels

    def read_labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Labels of rows [start, stop): int32 (n, L). The whole label array is read and
        checked against its ingest hash on the first call (it is small)."""
        return self._all_labels[start : self.n_images if stop is None else stop].copy()

    def read_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """All images and labels of one split (loads them into memory; small sets only)."""
        lo, hi = self.split_range(split)
        return self.read_rows(lo, hi), self.read_labels(lo, hi)


@dataclass(frozen=True)
class DigestCheck:
    """Where an open store's content differs from its ingest digests (see
    :func:`compare_digests`): image chunk indices and array names ("labels", "split")."""

    damaged_chunks: list[int]
    damaged_arrays: list[str]


def compare_digests(
    store: DatasetStore,
    digests: dict[str, Any],
    on_chunk: Callable[[int, int], None] | None = None,
) -> DigestCheck:
    """Hash every image chunk, the labels and the split of ``store`` and compare them with
    ``digests`` (as ``meta["chunk_hashes"]``); an unreadable chunk or array counts as damaged,
    as does a chunk beyond those listed. ``on_chunk(lo, hi)`` is called after each chunk."""
    want = list(digests.get("images", []))
    images = store.images
    bad = []
    for idx, (lo, hi) in enumerate(store.chunk_ranges()):
        try:
            got = hashlib.sha256(np.ascontiguousarray(images[lo:hi]).data).hexdigest()
        except Exception:  # undecodable chunk bytes (truncated, overwritten)
            got = ""
        if idx >= len(want) or got != want[idx]:
            bad.append(idx)
        if on_chunk is not None:
            on_chunk(lo, hi)
    arrays = []
    for what, dtype in (("labels", "<i4"), ("split", "i1")):
        try:  # a missing array fails here: damaged too
            arr = store.labels if what == "labels" else store.split
            data = np.ascontiguousarray(np.asarray(arr[:]), dtype=dtype)
            got = hashlib.sha256(data.data).hexdigest()
        except Exception:
            got = ""
        if got != digests.get(what):
            arrays.append(what)
    return DigestCheck(bad, arrays)


def store_damage(
    path: str | Path,
    digests: dict[str, Any],
    on_chunk: Callable[[int, int], None] | None = None,
) -> list[str]:
    """What differs between the store at ``path`` and the content ``digests`` (as
    ``meta["chunk_hashes"]``: SHA-256 per image chunk, of labels and of split): one line per
    problem, empty when the store holds exactly that content. Reads the whole store once;
    ``on_chunk(lo, hi)`` is called after each image chunk (rows ``lo`` .. ``hi``-1), for
    progress."""
    try:
        store = DatasetStore(Path(path), verify=False)
        _ = (store.images, store.labels, store.split)  # opening them may fail
    except Exception as exc:  # a store too damaged to open is a finding, not a crash
        return [f"store cannot be opened ({type(exc).__name__}: {exc})"]
    n_want, n_have = len(digests.get("images", [])), len(list(store.chunk_ranges()))
    if n_want != n_have:
        return [f"the store has {n_have} image chunks, expected {n_want}"]
    found = compare_digests(store, digests, on_chunk)
    bad = found.damaged_chunks
    problems = [f"damaged image chunk(s) {', '.join(map(str, bad[:20]))}"] if bad else []
    return problems + [f"damaged {what}" for what in found.damaged_arrays]


def open_store(path: str | Path, *, verify: bool = True) -> DatasetStore:
    """Open the store directory at ``path`` (``verify``: check reads, see the module doc)."""
    p = Path(path)
    if not (p / "zarr.json").is_file():
        raise NotFoundError(f"no dataset store at '{p}': expected a directory with zarr.json")
    return DatasetStore(p, verify=verify)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """Split ``"name@version"`` into (name, version or None); the version in lower case
    (version ids are hex). ``"name@"`` (nothing after the @) is an
    :class:`~pomlia_hpc.errors.InputError`: it never silently means the newest version."""
    name, at, version = ref.partition("@")
    if at and not version.strip():
        raise InputError(
            f"'{ref}': expected a version (an id or its prefix) after '@', or the name alone "
            "for the current version"
        )
    return name, (version.strip().lower() or None)


def current_row(rows: list[DatasetVersion], current_id: int | None) -> DatasetVersion | None:
    """The version the plain dataset name means among ``rows`` (any order): the dataset's
    recorded current version (the one last added, also when identical to an older one), else
    the newest registered."""
    chosen = next((r for r in rows if current_id is not None and r.id == current_id), None)
    return chosen or max(rows, key=lambda r: r.id, default=None)


def current_versions(registry: Registry) -> dict[str, DatasetVersion]:
    """Dataset name → the version its plain name means (:func:`current_row`), for every
    dataset with versions: the one rule wherever "which version of a data set" is decided."""
    with registry.session() as s:
        rows = s.execute(
            select(Dataset.name, Dataset.current_version_id, DatasetVersion).join(
                DatasetVersion, DatasetVersion.dataset_id == Dataset.id
            )
        ).all()
        by_name: dict[str, tuple[int | None, list[DatasetVersion]]] = {}
        for name, current_id, v in rows:
            by_name.setdefault(name, (current_id, []))[1].append(v)
        out: dict[str, DatasetVersion] = {}
        for name, (current_id, versions) in by_name.items():
            row = current_row(versions, current_id)
            if row is not None:
                s.expunge(row)
                out[name] = row
    return out


def find_version(registry: Registry, ref: str) -> DatasetVersion:
    """The registry row for ``"name"`` (its current version: the one last added, see
    :func:`current_row`) or ``"name@version"`` (id or unique prefix, any case)."""
    name, version = parse_ref(ref)
    with registry.session() as s:
        ds = by_name_or_id(s, Dataset, name, "dataset")
        q = select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)
        rows = list(s.scalars(q.order_by(DatasetVersion.id.desc())))
        if version is None:
            row = current_row(rows, ds.current_version_id)
            if row is None:
                raise NotFoundError(f"dataset '{name}' has no versions")
            return row
        hits = [r for r in rows if r.version.lower().startswith(version)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise NotFoundError(
                f"version '{version}' of dataset '{name}' is ambiguous: it starts "
                f"{len(hits)} versions ({', '.join(r.version for r in hits)}); give more digits"
            )
        known = ", ".join(r.version for r in rows) or "none"
        raise NotFoundError(
            f"version '{version}' of dataset '{name}' is not known (versions: {known})"
        )


def open_version(where: Registry | Workspace, ref: str) -> DatasetStore:
    """Open the store of ``ref`` (``"name"`` = its current version, see :func:`find_version`,
    or ``"name@version"``). A workspace's registry is opened for the lookup and closed again;
    a workspace without one is a :class:`~pomlia_hpc.registry.RegistryMissingError` (a reader
    never creates an empty registry in its place, as only `pomlia init` does)."""
    if isinstance(where, Registry):
        return open_store(find_version(where, ref).store_path)
    registry = Registry.open(where.db_url, busy_timeout_s=where.sqlite_busy_timeout_s, create=False)
    try:
        row = find_version(registry, ref)
    finally:
        registry.dispose()  # a PostgreSQL pool's connection is not left open
    return open_store(row.store_path)
