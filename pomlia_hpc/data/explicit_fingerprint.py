"""The explicit (human-readable) fingerprint of a dataset version, in the spirit of nnU-Net's
``dataset_fingerprint.json``.

Computed chunk by chunk with dask over the store's ``images`` array: each task reads one chunk
and returns small summaries (a 256-bin histogram per channel, a near-constant count and one
64-bit hash per image); only those are kept, so memory is a few chunks however large the set.
Intensity statistics are exact (uint8 histograms).

Fields (``version`` 1):

- ``n_images``, ``counts`` (per split), ``image_size`` ([H, W]), ``channels``
- ``n_classes``, ``task_type``, ``class_balance``: per split ``counts`` per class (positives per
  label for multi-label), ``fractions``, ``imbalance_ratio`` (largest / smallest non-empty
  class), ``normalized_entropy`` (1 = perfectly balanced), ``empty_classes``
- ``intensity``: per channel ``mean``, ``std``, ``min``, ``max`` and ``percentiles`` (0.5, 1, 5,
  25, 50, 75, 95, 99, 99.5), in uint8 grey levels 0..255
- ``near_constant``: images whose pixel standard deviation (over at least 512 evenly spaced
  pixels) is below ``NEAR_CONSTANT_STD`` grey levels in every channel (a flat colour counts):
  ``count`` and ``fraction``
- ``duplicates``: exact pixel duplicates by hash: ``unique_images``, ``duplicate_images``
  (rows equal to an earlier row), ``groups``, ``across_splits`` (val/test images whose
  pixels also occur in train: leakage) and ``conflicting_labels`` (rows equal to an earlier
  row whose label differs from that row's: the same image under two classes; absent from
  fingerprints computed before it existed)
- ``pixel_set``: a digest of the distinct images, whatever their order, split or labels
  (:func:`pixel_set`; absent from fingerprints computed before it existed)
- ``split_pixel_sets``: the same digest of each split's images (split name -> digest): equal
  for the same images split the same way, whatever their order or labels (absent from
  fingerprints computed before it existed)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import dask.threaded
import numpy as np
from dask.callbacks import Callback

from pomlia_hpc.data.store import SPLITS, DatasetStore

NEAR_CONSTANT_STD = 2.0
PERCENTILES = (0.5, 1, 5, 25, 50, 75, 95, 99, 99.5)
FINGERPRINT_VERSION = 1


def _image_std(x: np.ndarray, block: int = 256, samples: int = 512) -> np.ndarray:
    """Per-image pixel standard deviation of uint8 images (b, H, W, C), float64 (b,): the
    largest over the channels, each estimated from ``samples`` or more evenly spaced pixels
    (all pixels when H * W < 2 * samples).

    Pixels, not raw bytes, are sampled so that every channel is seen whatever the image size.
    Only used to flag near-constant images, for which 512 pixels are plenty; sums in integers
    and squares in float32 blocks keep it fast and its temporaries small."""
    b, c = x.shape[0], x.shape[-1]
    pixels = x.reshape(b, -1, c)
    pixels = pixels[:, :: max(1, pixels.shape[1] // samples)]  # (b, p, C)
    p = pixels.shape[1]
    mean = pixels.sum(axis=1, dtype=np.uint64).astype(np.float64) / p  # (b, C)
    sq = np.empty((b, c), np.float64)
    for lo in range(0, b, block):
        f = pixels[lo : lo + block].astype(np.float32)
        sq[lo : lo + block] = np.einsum("ipc,ipc->ic", f, f, dtype=np.float64)
    return np.sqrt(np.maximum(sq / p - mean**2, 0.0)).max(axis=1)


def pair_histogram(x: np.ndarray) -> np.ndarray:
    """(C, 256) int64 histogram of a uint8 (..., C) array.

    Counts pixel pairs as uint16 (65,536 bins over half as many values), then adds the two
    marginals: about 1.6x faster than one ``bincount`` per channel, and exact."""
    c = x.shape[-1]
    planes = np.ascontiguousarray(np.moveaxis(x.reshape(-1, c), 1, 0))  # (C, P)
    out = np.empty((c, 256), np.int64)
    for k in range(c):
        p = planes[k]
        pairs = np.bincount(p[: len(p) // 2 * 2].view(np.uint16), minlength=65536)
        square = pairs.reshape(256, 256)  # [high byte, low byte] = [2nd, 1st] of each pair
        out[k] = square.sum(axis=0) + square.sum(axis=1)
        if len(p) % 2:
            out[k, p[-1]] += 1
    return out


def image_hashes(x: np.ndarray) -> np.ndarray:
    """One uint64 hash of the pixels of each image of ``x`` (n, ...): equal pixels, equal
    hash. The duplicates of the fingerprint and of a harvest are counted by it."""
    flat = np.ascontiguousarray(x).reshape(x.shape[0], -1)
    # SHA-1 is used as a fast content hash (duplicates), not for security.
    return np.frombuffer(
        b"".join(hashlib.sha1(row.data).digest()[:8] for row in flat), dtype=np.uint64
    )


def chunk_stats(x: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """(C, 256) histogram, near-constant count and per-image uint64 hashes of one chunk."""
    hist = pair_histogram(x)
    near = int((_image_std(x) < NEAR_CONSTANT_STD).sum())
    return hist, near, image_hashes(x)


class _Progress(Callback):
    def __init__(self, report: Callable[[int], None]) -> None:
        super().__init__()
        self._report = report

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if isinstance(result, tuple) and len(result) == 3:
            self._report(len(result[2]))


def _percentile(hist: np.ndarray, q: float) -> float:
    cdf = np.cumsum(hist)
    return float(np.searchsorted(cdf, q / 100.0 * cdf[-1], side="left"))


def _intensity(hist: np.ndarray) -> list[dict[str, Any]]:
    levels = np.arange(256, dtype=np.float64)
    out = []
    for h in hist:
        total = max(int(h.sum()), 1)
        mean = float((h * levels).sum() / total)
        var = float((h * (levels - mean) ** 2).sum() / total)
        nz = np.flatnonzero(h)
        out.append(
            {
                "mean": round(mean, 3),
                "std": round(var**0.5, 3),
                "min": int(nz[0]) if nz.size else 0,
                "max": int(nz[-1]) if nz.size else 0,
                "percentiles": {str(q): _percentile(h, q) for q in PERCENTILES},
            }
        )
    return out


def _balance(counts: np.ndarray) -> dict[str, Any]:
    total = max(int(counts.sum()), 1)
    frac = counts / total
    nonzero = counts[counts > 0]
    p = frac[frac > 0]
    ent = float(-(p * np.log(p)).sum() / np.log(len(counts))) if len(counts) > 1 else 1.0
    return {
        "counts": [int(c) for c in counts],
        "fractions": [round(float(f), 5) for f in frac],
        "imbalance_ratio": round(float(nonzero.max() / nonzero.min()), 3) if nonzero.size else None,
        "normalized_entropy": round(ent, 4),
        "empty_classes": [int(i) for i in np.flatnonzero(counts == 0)],
    }


def label_counts(labels: np.ndarray, n_classes: int, multi_label: bool) -> np.ndarray:
    """Images per class (single-label) or positives per label (multi-label)."""
    if multi_label:
        return labels.sum(axis=0).astype(np.int64)
    return np.bincount(labels[:, 0], minlength=n_classes).astype(np.int64)


def _duplicates(
    hashes: np.ndarray, ranges: dict[str, tuple[int, int]], labels: np.ndarray
) -> dict[str, Any]:
    """Duplicate counts of the images with pixel ``hashes`` (one per row), split row
    ``ranges`` and ``labels`` (n, label width)."""
    uniq, first, inverse, counts = np.unique(
        hashes, return_index=True, return_inverse=True, return_counts=True
    )
    rows = labels.reshape(len(labels), -1)
    conflicting = int((rows != rows[first[inverse.ravel()]]).any(axis=1).sum()) if len(rows) else 0
    train = hashes[slice(*ranges["train"])] if "train" in ranges else hashes[:0]
    across = {}
    for s in ("val", "test"):
        if s in ranges:
            across[s] = int(np.isin(hashes[slice(*ranges[s])], train).sum())
    return {
        "unique_images": len(uniq),
        "duplicate_images": int(len(hashes) - len(uniq)),
        "groups": int((counts > 1).sum()),
        "across_splits": across,
        "conflicting_labels": conflicting,
    }


def compute_fingerprint(
    store: DatasetStore,
    *,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The explicit fingerprint of ``store`` (see the module docstring); ``progress`` is called
    with the number of images of every chunk done."""
    images = da.from_array(store.images, chunks=store.images.chunks, asarray=True)
    tasks = [dask.delayed(chunk_stats)(blk) for blk in images.to_delayed().ravel()]
    callbacks = [_Progress(progress)] if progress else []
    # The threaded scheduler's get, passed directly: naming "threads" makes dask import
    # distributed first to look for a client (0.4 s), which this never uses.
    with dask.callbacks.add_callbacks(*callbacks):
        results = dask.compute(*tasks, scheduler=dask.threaded.get, num_workers=workers)
    h, w, c = store.image_shape
    hist = sum((r[0] for r in results), np.zeros((c, 256), np.int64))
    near = sum(r[1] for r in results)
    hashes = np.concatenate([r[2] for r in results]) if results else np.zeros(0, np.uint64)
    meta = store.meta
    n = store.n_images
    ranges = {s: r for s in SPLITS if (r := store.split_range(s))[1] > r[0]}
    labels = store.read_labels()
    multi = str(meta["task_type"]).startswith("multi-label")
    n_classes = int(meta["n_classes"])
    balance = {
        s: _balance(label_counts(labels[lo:hi], n_classes, multi)) for s, (lo, hi) in ranges.items()
    }
    balance["all"] = _balance(label_counts(labels, n_classes, multi))
    return {
        "version": FINGERPRINT_VERSION,
        "n_images": n,
        "counts": {s: hi - lo for s, (lo, hi) in ranges.items()},
        "image_size": [h, w],
        "channels": c,
        "n_classes": n_classes,
        "task_type": meta["task_type"],
        "class_balance": balance,
        "intensity": _intensity(hist),
        "near_constant": {
            "threshold_std": NEAR_CONSTANT_STD,
            "count": int(near),
            "fraction": round(near / max(n, 1), 6),
        },
        "duplicates": _duplicates(hashes, ranges, labels),
        "pixel_set": pixel_set(hashes),
        "split_pixel_sets": {s: pixel_set(hashes[lo:hi]) for s, (lo, hi) in ranges.items()},
    }


def pixel_set(hashes: np.ndarray) -> str:
    """A digest (16 hex digits) of the distinct images of a version, whatever their order,
    split or labels: equal for the same images registered under another name or split
    otherwise (:func:`pomlia_hpc.data.leakage.copies_elsewhere`)."""
    # SHA-256 of the sorted distinct per-image hashes: a content digest, not for security.
    return hashlib.sha256(np.unique(hashes).astype("<u8").tobytes()).hexdigest()[:16]
