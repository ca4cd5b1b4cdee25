"""A carved split that stays put as its source grows.

Where ingest carves the split itself (an image folder without split folders or with a
fraction for a missing one, an HDF5 file without a split dataset), the split of each class
depends on how many images the class has and on how the new images' hashes rank among the
old ones: adding images moved former val and test images into train, so a model trained on
the new version had seen the old version's held-out images. Here every carved image whose
pixels the parent version holds keeps the parent's split (a val or test image stays out of
train, whatever was added); only images new to the parent are carved, by the usual rule
(:func:`~pomlia_hpc.data.sources.base.stratified_split`, so each class keeps about its
fractions). Copies of a parent image go where the parent had it. A split the source gives
(split folders, an npz's arrays, an HDF5 split dataset) is never changed.

Asked for other fractions than the parent's, the split is carved afresh (what the user asked
for); the parent's val / test images that land in train are counted and ``data add`` warns.
"""

from __future__ import annotations

from typing import Any

from pomlia_hpc.data.sources import Source
from pomlia_hpc.data.store import DatasetStore, open_store
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.registry import DatasetVersion

#: The fraction keys both kinds of carving sources record in ``meta["source"]``.
_FRACTIONS = ("val_fraction", "test_fraction")


def held_splits(store: DatasetStore) -> dict[int, int]:
    """The split code (0 train, 1 val, 2 test) of each image of ``store`` by the uint64 hash
    of its pixels; an image stored in several splits (a version made before copies were kept
    together) counts as the most held-out one, so it is never carried into train. Reads
    the whole store, a chunk at a time."""
    from pomlia_hpc.data.explicit_fingerprint import image_hashes

    held: dict[int, int] = {}
    bounds = store.meta.get("splits") or {}
    for lo, hi in store.chunk_ranges():
        hashes = image_hashes(store.read_rows(lo, hi))
        for code, split in enumerate(("train", "val", "test")):
            s_lo, s_hi = bounds.get(split, (0, 0))
            for h in hashes[max(s_lo, lo) - lo : max(min(s_hi, hi) - lo, 0)].tolist():
                held[h] = max(held.get(h, 0), code)
    return held


def _same_fractions(source: dict[str, Any], parent_source: dict[str, Any]) -> bool:
    """Whether the parent carved with the fractions now asked for (a parent that recorded
    none, e.g. an npz with its own split, has nothing to differ in)."""
    if not all(k in parent_source and parent_source[k] is not None for k in _FRACTIONS):
        return True
    return [source.get(k) for k in _FRACTIONS] == [parent_source[k] for k in _FRACTIONS]


def carry_split(src: Source, parent: DatasetVersion | None) -> dict[str, Any] | None:
    """Carry ``parent``'s split forward into the carved split of ``src`` (see the module
    docstring) and record what was done in ``src.extra["split_carried"]`` (``from``: the
    parent version; ``kept``, ``new``: carved images that kept the parent's split, carved
    afresh; ``held_out``: parent val / test images a fresh carve would have put (or, not
    ``applied``, put) in train). None, and nothing done, without a parent, without a carved
    split, or where the parent's store cannot be read (a damaged parent is reported by
    ``data verify``, not here)."""
    if parent is None or not src.carves_split:  # nothing to read the parent for
        return None
    try:
        held = held_splits(open_store(parent.store_path))
    except (PomliaError, OSError, ValueError):
        return None
    apply = _same_fractions(src.describe(), (parent.meta or {}).get("source") or {})
    counts = src.carry_splits(held, apply=apply)
    if counts is None:
        return None
    kept, new, held_out = counts
    record = {
        "from": parent.version,
        "kept": kept,
        "new": new,
        "held_out": held_out,
        "applied": apply,
    }
    src.extra["split_carried"] = record
    return record


def carried_note(source: dict[str, Any], parent_ref: str) -> tuple[str, str] | None:
    """(level, text) for ``data add`` on ``meta["source"]["split_carried"]``: a note where
    images kept their parent split, a warning where other fractions put former val / test
    images of ``parent_ref`` in train; None where nothing was carried or moved."""
    rec = source.get("split_carried") or {}
    if not rec:
        return None
    moved = int(rec.get("held_out") or 0)
    if not rec.get("applied"):
        if not moved:
            return None
        return (
            "warning",
            f"{moved} val/test image(s) of {parent_ref} are in train now (the split was "
            f"carved afresh for the other --val-fraction / --test-fraction): a model trained "
            f"on this version has seen them, so do not compare it with {parent_ref}'s models "
            f"on {parent_ref}'s val/test",
        )
    if not int(rec.get("kept") or 0):
        return None
    return (
        "note",
        f"{rec['kept']} image(s) kept their split of {parent_ref}, {rec['new']} new image(s) "
        f"carved by the fractions"
        + (f" ({moved} former val/test image(s) kept out of train)" if moved else ""),
    )
