"""A carved split that stays put as its source grows.

Where ingest carves the split itself (an image folder without split folders or with a
fraction for a missing one, an HDF5 file without a split dataset), the split of each class
depends on how many images the class has and on how the new images' hashes rank among the
old ones: adding images moved former val and test images into train, so a model trained on
the new version had seen the old version's held-out images. Here every carved image whose
pixels the parent version holds keeps the parent's split (a val or test image stays out of
train, whatever was added); only images new to the parent are carved, by the usual rule
(:func:`~pomlia_hpc.data.sources.base.stratified_split`, so each class keeps about its
fractions). Copies of a parent image go where the parent had it; an image the parent held
in several splits (pixel copies under other bytes: the carve keeps only byte copies together,
and `data add` warned of them) stays in each where it is carved into one of them, so the
same source gives the same version. The new images are compared
as the parent's store made its pixels (:func:`stored_as`): a 16-bit set's maximum and its
channel count may change as it grows, and every stored value with them. A split the source gives
(split folders, an npz's arrays, an HDF5 split dataset) is never changed.

Asked for other fractions than the parent's, the split is carved afresh (what the user asked
for); the parent's val / test images that land in train are counted and ``data add`` warns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pomlia_hpc.data.sources import Source
from pomlia_hpc.data.sources.base import Held
from pomlia_hpc.data.sources.intensity import StoredAs
from pomlia_hpc.data.store import DatasetStore, open_store
from pomlia_hpc.registry import DatasetVersion

#: The progress stages of :func:`carry_split`: the parent's store read, the carved images read.
STAGE_PARENT, STAGE_CARRY = "read parent split", "carry split"
#: Told how many more images a pass has read, and how many it reads in all.
Tick = Callable[[int, int], None]

#: The fraction keys both kinds of carving sources record in ``meta["source"]``.
_FRACTIONS = ("val_fraction", "test_fraction")


def held_splits(store: DatasetStore, tick: Tick | None = None) -> Held:
    """The splits each image of ``store`` is in (:data:`~pomlia_hpc.data.sources.base.Held`:
    the sorted uint64 hashes of its distinct pixels, and a bit mask for each, bit ``c`` set
    for split code ``c``, 0 train, 1 val, 2 test); several bits for an image stored in
    several splits (pixel copies under other bytes, which the carve does not keep together,
    or a version made before copies were kept together). Reads the whole store, a chunk at a
    time (``tick``: called with each chunk's image count); 9 bytes per image held, numpy
    arrays (a dict of 700k Python ints took 65 MB, of tens of millions gigabytes)."""
    from pomlia_hpc.data.explicit_fingerprint import image_hashes

    codes = np.zeros(store.n_images, np.uint8)
    for code, split in enumerate(("train", "val", "test")):
        s_lo, s_hi = (store.meta.get("splits") or {}).get(split, (0, 0))
        codes[s_lo:s_hi] = 1 << code
    parts = []
    for lo, hi in store.chunk_ranges():
        parts.append(image_hashes(store.read_rows(lo, hi)))
        if tick is not None:
            tick(hi - lo, store.n_images)
    keys, where = np.unique(np.concatenate(parts or [np.zeros(0, np.uint64)]), return_inverse=True)
    bits = np.zeros(len(keys), np.uint8)
    np.bitwise_or.at(bits, where, codes)
    return keys, bits


def _stage(progress: Callable[[str, int, int], None] | None, stage: str) -> Tick | None:
    """A :data:`Tick` that reports ``stage`` to ``progress``; None without."""
    if progress is None:
        return None
    return lambda k, total: progress(stage, k, total)


def stored_as(store: DatasetStore) -> StoredAs:
    """How ``store`` made its pixels: the new version's images are hashed the same way, since
    a 16-bit set's maximum (every stored value scales by it) or its channel count (one colour
    image makes a grey folder RGB) may change as the source grows."""
    scaling = (store.meta.get("source") or {}).get("intensity_scaling") or {}
    top = scaling.get("max") if scaling.get("from") == "uint16" else None
    return StoredAs(int(store.images.shape[-1]), None if top is None else float(top))


def _same_fractions(source: dict[str, Any], parent_source: dict[str, Any]) -> bool:
    """Whether the parent carved each split that both carve with the fraction now asked for
    (a split given by a folder now, or one the parent did not carve, e.g. an npz's own
    split, has nothing to differ in)."""
    given = {*(source.get("split_folders") or {}), *(parent_source.get("split_folders") or {})}
    for key, split in zip(_FRACTIONS, ("val", "test"), strict=True):
        if split in given:
            continue
        now, then = source.get(key), parent_source.get(key)
        # None: not carved; 0.0 is a fraction asked for (a split left empty on purpose)
        if now is not None and then is not None and float(now) != float(then):
            return False
    return True


def carry_split(
    src: Source,
    parent: DatasetVersion | None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any] | None:
    """Carry ``parent``'s split forward into the carved split of ``src`` (see the module
    docstring) and record what was done in ``src.extra["split_carried"]``: ``from`` (the
    parent version), ``applied`` (False: other fractions, carved afresh) and the counts of
    :func:`~pomlia_hpc.data.sources.base.carried_codes`. None, and nothing done, without a
    parent, without a carved split, or where the parent's store cannot be read (recorded as
    ``unreadable``, which ``data add`` warns of; ``data verify`` finds the damage).
    ``progress`` (stage, images done, total) hears of both full reads: the parent's store
    (``read parent split``) and the carved images, decoded once more (``carry split``)."""
    if parent is None or not src.carves_split:  # nothing to read the parent for
        return None
    try:
        store = open_store(parent.store_path)
        held, like = (
            held_splits(store, _stage(progress, STAGE_PARENT)),
            stored_as(store),
        )
    except Exception as exc:  # a damaged or missing parent: carved afresh, and said so
        src.extra["split_carried"] = {"from": parent.version, "unreadable": str(exc)[:300]}
        return None
    apply = _same_fractions(src.describe(), (parent.meta or {}).get("source") or {})
    tick = _stage(progress, STAGE_CARRY)
    counts = src.carry_splits(held, apply=apply, like=like, tick=tick)
    if counts is None:
        return None
    record = {"from": parent.version, "applied": apply, **counts}
    src.extra["split_carried"] = record
    return record


def carried_note(source: dict[str, Any], parent_ref: str) -> list[tuple[str, str]]:
    """(level, text) lines for ``data add`` on ``meta["source"]["split_carried"]``: a note
    where images kept their split of ``parent_ref``, a warning where former val / test images
    of it are in train (other fractions, or a split folder given now); none where nothing
    was carried."""
    rec = source.get("split_carried") or {}
    out: list[tuple[str, str]] = []
    if not rec:
        return out
    if rec.get("unreadable"):
        return [
            (
                "warning",
                f"the split of {parent_ref} could not be read ({rec['unreadable']}), so this "
                f"version was carved afresh: former val/test images of {parent_ref} may be in "
                f"train now (`pomlia data verify {parent_ref}`)",
            )
        ]
    moved = int(rec.get("into_train") or 0)
    if rec.get("applied") and int(rec.get("kept") or 0):
        prevented = int(rec.get("prevented") or 0)
        out.append(
            (
                "note",
                f"{rec['kept']} image(s) kept their split of {parent_ref}, {rec['new']} new "
                "image(s) carved by the fractions"
                + (
                    f" ({prevented} former val/test image(s) kept out of train)"
                    if prevented
                    else ""
                ),
            )
        )
    if moved:
        why = (
            "the split was carved afresh for the other --val-fraction / --test-fraction"
            if not rec.get("applied")
            else "their split is given by a folder of this source and carved no more"
        )
        out.append(
            (
                "warning",
                f"{moved} val/test image(s) of {parent_ref} are in train now ({why}): a model "
                f"trained on this version has seen them, so do not compare it with "
                f"{parent_ref}'s models on {parent_ref}'s val/test",
            )
        )
    return out
