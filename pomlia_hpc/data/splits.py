"""Whether a dataset version has images in every split, and how to get them where it does not.

AutoML trains on ``train``, picks configurations on ``val`` and reports ``test``: a version
with an empty split is a faithful copy of its source (``data add`` keeps it, with a warning),
but no task can learn from it (``task add`` and ``automl run`` refuse it up front instead of
every trial crashing on an empty tensor). The hint names the way to fill the split for the
kind of source the version came from (``meta["source"]``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from pomlia_hpc.data.sources.folder_layout import CLASS_SPLIT_FOLDERS, SPLIT_FOLDERS
from pomlia_hpc.data.store import SPLITS, DatasetStore
from pomlia_hpc.errors import InputError

#: Fewest images a split that AutoML evaluates (val, test) must hold: the metric functions
#: (MedMNIST's) squeeze their inputs, which breaks on a single image.
MIN_EVAL_IMAGES = 2


def split_sizes(meta: dict[str, Any]) -> dict[str, int]:
    """Images per split of a store's ``meta`` (``split_sizes``, else the ``splits`` ranges)."""
    sizes = meta.get("split_sizes")
    if isinstance(sizes, dict):
        return {s: int(sizes.get(s, 0)) for s in SPLITS}
    ranges = meta.get("splits") or {}
    return {s: int(ranges[s][1]) - int(ranges[s][0]) if s in ranges else 0 for s in SPLITS}


def empty_splits(meta: dict[str, Any]) -> list[str]:
    """The splits of a store's ``meta`` without images, in train, val, test order."""
    return [s for s, n in split_sizes(meta).items() if n == 0]


def _or(names: list[str]) -> str:
    return " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"


def fill_hint(meta: dict[str, Any], empty: list[str]) -> str:
    """How to give the ``empty`` splits images, for the kind of source ``meta`` came from."""
    source = meta.get("source") or {}
    kind = source.get("kind")
    if kind == "npz":
        arrays = ", ".join(f"{s}_images/{s}_labels" for s in empty)
        return f"add the arrays {arrays} to the npz file and run `pomlia data add` again"
    if kind == "folder" and source.get("layout") in (SPLIT_FOLDERS, CLASS_SPLIT_FOLDERS):
        inner = source.get("layout") == CLASS_SPLIT_FOLDERS  # root/<class>/<split>/
        folders = ", ".join(f"<class>/{s}/" if inner else f"{s}/<class>/" for s in empty)
        carve = " / ".join(f"--{s}-fraction F" for s in empty if s != "train")
        how = f", or carve it from train with {carve}" if carve else ""
        return f"add the folder(s) {folders} with images and run `pomlia data add` again{how}"
    if kind == "folder":
        fractions = " / ".join(f"--{s}-fraction" for s in empty if s != "train")
        more = f"a larger {fractions} or " if fractions else ""
        return (
            f"add the images again with {more}more images per class (each class of 3 or more "
            "images gives val and test at least one each; a fraction of 0 gives none)"
        )
    if kind == "hdf5":
        codes = ", ".join(f"{SPLITS.index(s)} ({s})" for s in empty)
        if source.get("split"):
            return f"give some rows the code(s) {codes} in the --split dataset"
        fractions = " / ".join(f"--{s}-fraction" for s in empty if s != "train")
        how = f"a larger {fractions}" if fractions else "smaller --val-fraction / --test-fraction"
        return f"add it again with {how}, or a --split dataset holding the codes {codes}"
    return f"ingest a version of this dataset with {_or(empty)} images"


def require_eval_sizes(meta: dict[str, Any], ref: str) -> None:
    """Refuse a version (``ref``, its store's ``meta``) whose val or test split holds images
    but fewer than :data:`MIN_EVAL_IMAGES`: every trial would train, then fail to evaluate
    (recorded as crashed runs). One :class:`InputError` naming the split(s) and counts."""
    sizes = split_sizes(meta)
    few = [s for s in ("val", "test") if 0 < sizes[s] < MIN_EVAL_IMAGES]
    if few:
        counts = ", ".join(f"{s} has {sizes[s]}" for s in few)
        raise InputError(
            f"dataset '{ref}': {counts} image(s) ({describe_splits(meta)}): expected at least "
            f"{MIN_EVAL_IMAGES} images in val and in test (AutoML evaluates every trial on "
            f"both); ingest a version with more {_or(few)} images (more in the source's "
            f"{_or(few)} split, or a larger --{few[0]}-fraction where the split is carved)"
        )


def describe_splits(meta: dict[str, Any]) -> str:
    """``train 50, val 0, test 0``."""
    return ", ".join(f"{s} {n}" for s, n in split_sizes(meta).items())


def require_all_splits(meta: dict[str, Any], ref: str) -> None:
    """Refuse a version (``ref``, its store's ``meta``) with an empty split: one
    :class:`InputError` naming the empty split(s) and how to fill them."""
    empty = empty_splits(meta)
    if empty:
        raise InputError(
            f"dataset '{ref}' has no {_or(empty)} images ({describe_splits(meta)}): expected "
            "images in train, val and test (AutoML trains on train, picks on val, reports "
            f"test); {fill_hint(meta, empty)}"
        )


RowHashes = tuple[np.ndarray, np.ndarray]
""":func:`row_hashes` of two stores, computed once for :func:`same_images` and the note."""


def same_images(a: DatasetStore, b: DatasetStore, hashes: RowHashes | None = None) -> bool:
    """Whether stores ``a`` and ``b`` hold the same images under the same labels, each as
    often, whatever split they are in (a re-added source split another way). Reads both, a
    chunk at a time, unless their :func:`row_hashes` are given (``hashes``, a's then b's);
    False at once when their sizes, image shapes or classes differ."""
    if (a.n_images, a.image_shape, a.class_names) != (b.n_images, b.image_shape, b.class_names):
        return False
    ha, hb = hashes if hashes is not None else (row_hashes(a), row_hashes(b))
    return bool(np.array_equal(_canonical(ha), _canonical(hb)))


def row_hashes(store: DatasetStore) -> np.ndarray:
    """(n, 2) uint64 pixel and label hashes of every row of ``store``, in store order; reads
    the whole store, a chunk at a time."""
    from pomlia_hpc.data.explicit_fingerprint import image_hashes

    pixels = np.concatenate(
        [image_hashes(store.read_rows(lo, hi)) for lo, hi in store.chunk_ranges()]
        or [np.zeros(0, np.uint64)]
    )
    labels = store.read_labels()
    return np.stack([pixels, image_hashes(labels.reshape(len(labels), -1))], axis=1)


def _canonical(pairs: np.ndarray) -> np.ndarray:
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _changed_split(new: DatasetStore, parent: DatasetStore, hashes: RowHashes) -> int:
    """Images of ``new`` in another split than in ``parent`` (same images, each as often),
    from their :func:`row_hashes` (``hashes``, new's then parent's)."""
    moved = 0
    rows = dict(zip((new, parent), hashes, strict=True))
    for split in SPLITS:
        have = {}
        for store in (new, parent):
            lo, hi = store.meta["splits"].get(split, [0, 0])
            have[store] = Counter(map(tuple, rows[store][lo:hi].tolist()))
        moved += sum((have[new] - have[parent]).values())
    return moved


#: Why an unchanged folder or HDF5 source splits another way than it did (CHANGELOG).
ROUNDING = "split sizes now round half up since 607d07e"


#: Why a folder source with copies of images splits another way than it did (CHANGELOG).
COPIES_TOGETHER = "copies of one image are now carved into one split"


def _split_carved(src: dict[str, Any]) -> bool:
    """Whether ingest carved (some of) the split of a version with source meta ``src``: an
    image folder with fractions in use, an HDF5 file without a split dataset. Only there does
    :data:`COPIES_TOGETHER` decide a split (an npz's, a split dataset's are the file's own)."""
    if src.get("kind") == "folder":
        return bool(src.get("val_fraction") or src.get("test_fraction"))
    return src.get("kind") == "hdf5" and not src.get("split")


def _copies_across(store: DatasetStore) -> int:
    """Val/test images of ``store`` that are pixel copies of its training images, as its
    explicit fingerprint counts them."""
    dup = store.fingerprint.get("duplicates") or {}
    return sum(int(n) for n in (dup.get("across_splits") or {}).values())


def _old_count(n: int, fraction: float) -> int:
    """A class's carved count before 607d07e: Python's round(), half to even."""
    return 0 if fraction <= 0 else max(1, round(n * fraction))


def _carved(
    n: int, fractions: tuple[float, float], count: Callable[[int, float], int]
) -> list[int]:
    """(val, test) images carved from a class of ``n`` by rule ``count``, as
    :func:`~pomlia_hpc.data.sources.base.stratified_split` serves them."""
    spare = n - 1
    n_val = min(count(n, fractions[0]), max(spare, 0))
    return [n_val, min(count(n, fractions[1]), max(spare - n_val, 0))]


def _rounding_explains(new: dict[str, Any], parent: dict[str, Any]) -> bool:
    """Whether the two versions' class counts per split are what the old (half to even) and
    the new (half up) rounding of carved sizes give for the same images."""
    from pomlia_hpc.data.sources.base import carved_count

    src = new.get("source") or {}
    fractions = (src.get("val_fraction"), src.get("test_fraction"))
    if str(new.get("task_type", "")).startswith("multi-label") or None in fractions:
        return False
    folders = src.get("split_folders") or {}
    carved = [s for s in ("val", "test") if s not in folders]
    dists = new.get("label_distribution") or {}, parent.get("label_distribution") or {}
    if not carved or dists[0] == dists[1] or not all(s in d for d in dists for s in SPLITS):
        return False
    f = (float(fractions[0] or 0), float(fractions[1] or 0))
    for c, n_train in enumerate(dists[0]["train"]):
        pool = n_train + sum(dists[0][s][c] for s in carved)
        for dist, rule in zip(dists, (carved_count, _old_count), strict=True):
            want = dict(zip(("val", "test"), _carved(pool, f, rule), strict=True))
            if any(dist[s][c] != want[s] for s in carved):
                return False
    return True


def _why_resplit(new: DatasetStore, parent: DatasetStore, hashes: RowHashes) -> str:
    """What differs, and why, for the same images in another split or order (see
    :func:`resplit_note`); ``hashes``: their :func:`row_hashes`."""
    src, old_src = new.meta.get("source") or {}, parent.meta.get("source") or {}
    keys = ("val_fraction", "test_fraction")
    # HDF5 versions made before this change did not record their fractions: nothing to compare.
    known = keys[0] in old_src
    if known and [old_src.get(k) for k in keys] != [src.get(k) for k in keys]:
        return "only the split differs (other split fractions)"
    if _rounding_explains(new.meta, parent.meta):
        return f"only the split differs ({ROUNDING})"
    if _split_carved(src) and _copies_across(parent) and not _copies_across(new):
        return (
            f"only the split differs ({COPIES_TOGETHER}; {_copies_across(parent)} val/test "
            f"image(s) of {parent.ref} were copies of training images)"
        )
    moved = _changed_split(new, parent, hashes)
    folder = src.get("kind") == "folder"
    if moved == 0:  # the rows of a split are ordered by hashes of their paths too
        why = "a file was renamed or moved: rows are ordered by file paths" if folder else ""
        return f"same split, only the order of the rows differs{f' ({why})' if why else ''}"
    same = new.meta.get("label_distribution") == parent.meta.get("label_distribution")
    sizes = (
        f"same split sizes, {describe_splits(new.meta)}"
        if same
        else f"split sizes {describe_splits(parent.meta)} -> {describe_splits(new.meta)}"
    )
    where = f"{sizes}; {moved} image(s) in another split"
    if folder:
        what = "a file was renamed or moved" if same else "files were renamed or moved"
        return f"only the split differs: {what} ({where}); the split is decided by file paths"
    if src.get("kind") == "hdf5" and not src.get("split"):
        # Moved rows keep each class's count, so other sizes without recorded fractions
        # most likely mean other fractions.
        cause = "rows were moved within the file"
        if not known and not same:
            cause = "other --val-fraction / --test-fraction, or rows moved within the file"
        return f"only the split differs: {cause} ({where}); the split is decided by row positions"
    return f"only the split differs ({where})"


def resplit_note(new: DatasetStore, parent: DatasetStore) -> str | None:
    """One line when the new version ``new`` holds exactly ``parent``'s images and only the
    split (or the order of rows) differs, saying why: other split fractions; carved split
    sizes that round half up since 607d07e (only when the class counts are what the old and
    the new rounding give); a file renamed or moved (the split and the row order are decided
    by path hashes; rows moved in an HDF5 file); else how many images changed split. None
    when the images differ."""
    shape = (new.n_images, new.image_shape, new.class_names)
    if shape != (parent.n_images, parent.image_shape, parent.class_names):
        return None  # not the same images: no need to read either store
    # Each store is read once: the same hashes answer "same images?" and "how many moved?".
    hashes = (row_hashes(new), row_hashes(parent))
    if not same_images(new, parent, hashes):
        return None
    why = _why_resplit(new, parent, hashes)
    kept = "order" if why.startswith("same split") else "split"
    return f"same images as {parent.ref}; {why}; use {parent.ref} to keep the old {kept}"
