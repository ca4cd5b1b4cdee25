"""Harvest: labelled production images become a new version of a model's training dataset.

The new version's parent is the version the model was trained on. It holds every row of the
parent, split as before, plus the new images, each assigned to train, val or test by a hash of
its key (the prediction id), so the same image always lands in the same split whatever else is
harvested with it. An image whose pixels the parent already holds (a served val or test image,
say) goes instead to the split of its first copy there (train before val before test), and
images of equal pixels harvested together go to one split (the hash split of the smallest key
among them, unless one of them has a copy in the parent): a copy in another split than its
original is train/test leakage, which would inflate the val and test metrics (and the gate's)
of every model trained on the version. ``placed_with_copy`` counts the images so placed in
another split than their hash's. Rows stay ordered by split; within a split the parent's rows
come first::

    train: parent train | new train      val: parent val | new val
    test:  parent test (the fixed test split) | new test (the "production" test subset)

``meta["source"]["intensity_scaling"]`` is the parent's (the kept inputs were made 8-bit on
its scale), so a model retrained on the version serves 16-bit uploads as its parent did.
``meta["source"]["harvest"]`` records the provenance (model, window, counts, where the images
came from) and the two test ranges the gate compares champion and challenger on:
``fixed_test_rows`` and ``production_test_rows`` (store rows, stop exclusive).

A version remembers which prediction id each harvested row came from (``prediction_rows``:
id -> store row, for every harvested row of its lineage, carried from version to version), so
an image is never added twice. A new image whose id is already in the parent is skipped when
its label is the parent's (a ``--since`` reaching back into an earlier harvest's window) and
*replaces* the parent's row when its label differs (a corrected label, ``"replaces": true``):
the parent's row of that id is left out of the new version and the image is added as a new row
with the new label (same hash split). ``skipped_in_parent`` and ``replaced`` (with the ids)
record both. A parent harvested before ids were recorded has no ``prediction_rows``; its rows
cannot be matched, and ``lineage_ids_unknown`` says so.

This module only builds the version from arrays; finding the labelled images (the prediction
log and the kept inputs) is the serving room's (:mod:`pomlia_hpc.serve.labelled`), and the
command that joins both is the loop's (:mod:`pomlia_hpc.loop.harvest`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.explicit_fingerprint import image_hashes
from pomlia_hpc.data.sources.base import LabelInfo, Source
from pomlia_hpc.data.store import SPLITS, DatasetStore, open_store
from pomlia_hpc.data.versioning import VersionRecord
from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import DatasetVersion, Registry
from pomlia_hpc.workspace import Workspace

#: Default share of new images per split (train, val, test).
FRACTIONS = (0.6, 0.1, 0.3)


def hash_split(key: str, fractions: Sequence[float] = FRACTIONS) -> str:
    """The split of the image with ``key``: a stable function of the key alone."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64
    edge = 0.0
    for split, share in zip(SPLITS, fractions, strict=True):
        edge += share
        if u < edge:
            return split
    return SPLITS[-1]


@dataclass(frozen=True)
class NewImages:
    """Labelled images to add: uint8 (n, H, W, C), int labels (n, L), one key per image."""

    images: np.ndarray
    labels: np.ndarray
    keys: list[str]

    def __post_init__(self) -> None:
        n = len(self.keys)
        if self.images.shape[0] != n or self.labels.shape[0] != n:
            raise InputError(
                f"harvest: {self.images.shape[0]} images, {self.labels.shape[0]} labels and "
                f"{n} keys: expected one label and one key per image"
            )


class HarvestSource(Source):
    """The parent store's rows plus the new images, in the row order of the module docstring."""

    def __init__(
        self,
        parent: DatasetStore,
        new: NewImages,
        provenance: dict[str, Any],
        fractions: Sequence[float] = FRACTIONS,
        drop: frozenset[int] = frozenset(),
        splits: Sequence[str] | None = None,
    ) -> None:
        """``drop``: parent store rows to leave out (their ids come again with a new label);
        ``splits``: the split of each new image (default: :func:`hash_split` of its key)."""
        super().__init__(path=parent.path, kind="harvest")
        h, w, c = parent.image_shape
        if new.images.dtype != np.uint8 or new.images.shape[1:] != (h, w, c):
            raise InputError(
                f"harvest: new images are {new.images.dtype} {tuple(new.images.shape[1:])}: "
                f"expected uint8 ({h}, {w}, {c}) like {parent.ref}"
            )
        self.height, self.width, self.channels = h, w, c
        self._parent = parent
        self._new = new
        if splits is None:
            splits = [hash_split(k, fractions) for k in new.keys]
        order = {s: [i for i, x in enumerate(splits) if x == s] for s in SPLITS}
        self._new_rows = {s: np.asarray(v, dtype=np.int64) for s, v in order.items()}
        self._drop = np.asarray(sorted(drop), dtype=np.int64)
        self._drop_set = drop
        kept: dict[str, int] = {}
        for s in SPLITS:
            lo, hi = parent.split_range(s)
            kept[s] = (hi - lo) - int(((self._drop >= lo) & (self._drop < hi)).sum())
            self.split_sizes[s] = kept[s] + len(order[s])
        meta = parent.meta
        self.label_info = LabelInfo(
            str(meta["task_type"]), [str(x) for x in meta["class_names"]], int(meta["label_width"])
        )
        # The kept inputs were scaled to 8 bits on the parent's scale (the server applies the
        # card's scaling): the version keeps it, so a model retrained on it scales alike.
        scaling = meta.get("intensity_scaling") or (meta.get("source") or {}).get(
            "intensity_scaling"
        )
        if isinstance(scaling, dict) and scaling:
            self.extra["intensity_scaling"] = dict(scaling)
        offsets = self.split_offsets()
        fixed_end = offsets["test"] + kept["test"]
        self.extra["harvest"] = {
            **provenance,
            "prediction_rows": self._row_map(offsets, order),
            "parent": parent.ref,
            "n_new": len(new.keys),
            "new_per_split": {s: len(order[s]) for s in SPLITS},
            "split_fractions": list(fractions),
            "fixed_test_rows": [offsets["test"], fixed_end],
            "production_test_rows": [fixed_end, fixed_end + len(order["test"])],
        }

    def _row_map(self, offsets: dict[str, int], order: dict[str, list[int]]) -> dict[str, int]:
        """Prediction id -> row in the new store: the parent's harvested rows that stay
        (shifted past the rows dropped before them and the splits' new offsets), then the
        new images."""
        out: dict[str, int] = {}
        starts = {s: self._parent.split_range(s)[0] for s in SPLITS}
        for key, row in parent_rows(self._parent.meta).items():
            if row in self._drop_set:
                continue
            split = next(s for s in SPLITS if starts[s] <= row < self._parent.split_range(s)[1])
            gone = int(((self._drop >= starts[split]) & (self._drop < row)).sum())
            out[key] = offsets[split] + (row - starts[split]) - gone
        for s in SPLITS:
            base = offsets[s] + self.split_sizes[s] - len(order[s])
            for j, i in enumerate(order[s]):
                out[self._new.keys[i]] = base + j
        return out

    def _kept(self, start: int, arr: np.ndarray) -> np.ndarray:
        """``arr`` (parent rows from ``start``) without the dropped rows."""
        hit = self._drop[(self._drop >= start) & (self._drop < start + len(arr))]
        return np.delete(arr, hit - start, axis=0) if len(hit) else arr

    def labels(self) -> np.ndarray:
        parts = []
        for s in SPLITS:
            lo, hi = self._parent.split_range(s)
            parts.append(self._kept(lo, self._parent.read_labels(lo, hi)))
            parts.append(
                self._new.labels[self._new_rows[s]].reshape(-1, self.label_info.label_width)
            )
        return np.concatenate(parts).astype(np.int32)

    def iter_rows(self, batch_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        pos = 0
        for s in SPLITS:
            lo, hi = self._parent.split_range(s)
            for start in range(lo, hi, batch_rows):
                rows = self._kept(start, self._parent.read_rows(start, min(hi, start + batch_rows)))
                if not len(rows):
                    continue
                yield pos, rows
                pos += len(rows)
            idx = self._new_rows[s]
            for start in range(0, len(idx), batch_rows):
                rows = self._new.images[idx[start : start + batch_rows]]
                yield pos, rows
                pos += len(rows)


def harvest_version(
    workspace: Workspace,
    registry: Registry,
    parent: DatasetVersion,
    dataset_name: str,
    new: NewImages,
    provenance: dict[str, Any],
    *,
    fractions: Sequence[float] = FRACTIONS,
) -> VersionRecord:
    """Ingest ``parent`` plus ``new`` as a version of ``dataset_name`` whose parent is
    ``parent``. The same inputs give the same version (``created=False``) and no copy.
    Images whose prediction id the parent already holds are skipped or replace the parent's
    row (module docstring); nothing left to add is an :class:`InputError` saying so."""
    if not new.keys:
        raise InputError(
            "harvest: no labelled images to add; expected predictions with kept inputs "
            "(`pomlia serve --keep-inputs`) and feedback labels in the window"
        )
    store = open_store(Path(parent.store_path))
    new, drop, skipped, replaced = _against_parent(store, new)
    if not new.keys:
        raise InputError(
            f"harvest: all {skipped} labelled image(s) in the window are already in "
            f"{parent.version} (the parent) with the same label; nothing new to add "
            "(a --since before the parent's harvest window reads them again)"
        )
    provenance = {
        **provenance,
        "skipped_in_parent": skipped,
        "replaced": len(replaced),
        "replaced_ids": replaced,
    }
    splits = splits_beside_copies(store, new, frozenset(drop), fractions)
    provenance["placed_with_copy"] = sum(
        x != hash_split(k, fractions) for x, k in zip(splits, new.keys, strict=True)
    )
    before = harvest_info(store.meta)
    if before is not None and "prediction_rows" not in before:
        provenance["lineage_ids_unknown"] = True  # harvested before ids were recorded
    source = HarvestSource(store, new, provenance, fractions, frozenset(drop), splits)
    return ingest(workspace, registry, dataset_name, source, parent=parent.version)


def splits_beside_copies(
    parent: DatasetStore,
    new: NewImages,
    drop: frozenset[int] = frozenset(),
    fractions: Sequence[float] = FRACTIONS,
) -> list[str]:
    """The split of each new image (module docstring): that of its first pixel copy among the
    parent's rows (those in ``drop`` left out), else the hash split of the smallest key of the
    new images with its pixels. One pass over the parent's rows, a chunk at a time."""
    hashes = image_hashes(new.images)
    found: dict[int, str] = {}
    wanted = set(hashes.tolist())
    step = max(int(parent.meta.get("chunk_rows") or 0), 256)
    for split in SPLITS:  # rows are stored train, val, test: a first copy is in the first split
        lo, hi = parent.split_range(split)
        for start in range(lo, hi, step):
            stop = min(hi, start + step)
            got = image_hashes(parent.read_rows(start, stop))
            for row, h in zip(range(start, stop), got.tolist(), strict=True):
                if h in wanted and h not in found and row not in drop:
                    found[h] = split
    first_key: dict[int, str] = {}
    for h, key in zip(hashes.tolist(), new.keys, strict=True):
        first_key[h] = min(first_key.get(h, key), key)
    return [found.get(h) or hash_split(first_key[h], fractions) for h in hashes.tolist()]


def parent_rows(meta: dict[str, Any]) -> dict[str, int]:
    """Prediction id -> store row of every harvested row of a version (empty for an ordinary
    ingest or a harvest made before ids were recorded)."""
    rows = (harvest_info(meta) or {}).get("prediction_rows") or {}
    return {str(k): int(v) for k, v in rows.items()}


def _against_parent(
    parent: DatasetStore, new: NewImages
) -> tuple[NewImages, list[int], int, list[str]]:
    """``new`` without the ids ``parent`` holds with the same label; the parent rows of ids
    that come with another label (to drop), how many were skipped, the replaced ids."""
    rows = parent_rows(parent.meta)
    # One read of all labels: a read checks the labels' hash, once per call.
    old_labels = parent.read_labels(0, parent.n_images) if rows else None
    keep: list[int] = []
    drop: list[int] = []
    replaced: list[str] = []
    for i, key in enumerate(new.keys):
        row = rows.get(key)
        if row is None:
            keep.append(i)
            continue
        assert old_labels is not None
        old = old_labels[row].reshape(-1)
        if np.array_equal(old, np.asarray(new.labels[i]).reshape(-1)):
            continue
        keep.append(i)
        drop.append(row)
        replaced.append(key)
    skipped = len(new.keys) - len(keep)
    if len(keep) == len(new.keys):
        return new, drop, 0, replaced
    idx = np.asarray(keep, dtype=np.int64)
    kept = NewImages(new.images[idx], new.labels[idx], [new.keys[i] for i in keep])
    return kept, drop, skipped, replaced


def harvest_info(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The harvest provenance of a version's metadata, or None for an ordinary ingest."""
    info = (meta.get("source") or {}).get("harvest")
    return dict(info) if isinstance(info, dict) else None
