"""Per-version summary statistics of a fingerprint set, written when its extraction completes.

Dataset distances read these few kilobytes instead of the embeddings, so ranking a query
against thousands of dataset versions costs one small file per version. Stored beside the
embeddings group as ``<version>.summary.npz`` (written atomically, after all shards are done):

===============  =========================================================================
key              what
===============  =========================================================================
n                number of vectors
mean, cov        exact mean (d,) and covariance (d, d) over all vectors (float64)
quantiles        binned marginals: :data:`QUANTILES` quantiles of every latent axis (q, d)
sample           a fixed-size sample of the vectors (up to :data:`SAMPLE_SIZE`, evenly spaced,
                 read from many chunks), float32 (k, d)
typical          bool (k,): the sample rows kept by the outlier trim (:func:`typical_rows`)
trim_mean,       mean and covariance of the typical rows: what the ``trimmed`` distance uses
trim_cov
explicit         the explicit-fingerprint feature vector (:func:`explicit_features`)
patch_*          the same statistics of the patch vectors, when the set has patches
===============  =========================================================================

:func:`typical_rows` is the trim: a row's typicality is its distance to its ``k``-th nearest
neighbour in the sample with ``k`` = 2 x :data:`TRIM` x sample size, and the :data:`TRIM`
fraction of rows with the largest distance is dropped. ``k`` is larger than a contaminating
group of up to ``TRIM`` x n foreign images, so such a group cannot shelter its own members:
its rows must reach into the main distribution for their ``k``-th neighbour and are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pomlia_hpc.files import write_npz

SAMPLE_SIZE = 512
QUANTILES = 21
#: Fraction of the least typical sample rows dropped by the trim.
TRIM = 0.1
SUMMARY_VERSION = 1
#: A large set is sampled from at least this many of its chunks (rows are often sorted by class).
_MIN_CHUNKS = 64


@dataclass(frozen=True)
class Stats:
    """Statistics of one set of vectors (images or patches)."""

    n: int
    mean: np.ndarray
    cov: np.ndarray
    quantiles: np.ndarray
    sample: np.ndarray
    typical: np.ndarray
    trim_mean: np.ndarray
    trim_cov: np.ndarray


@dataclass(frozen=True)
class Summary:
    """What :func:`write_summary` stores for one fingerprint set."""

    images: Stats
    explicit: np.ndarray
    patches: Stats | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def summary_path(embeddings_path: str | Path) -> Path:
    """``<version>.summary.npz`` beside the embeddings group ``<version>.zarr``."""
    p = Path(embeddings_path)
    return p.with_name(p.name.removesuffix(".zarr") + ".summary.npz")


def _cov(x: np.ndarray) -> np.ndarray:
    d = x.shape[1]
    if len(x) < 2:
        return np.zeros((d, d))
    return np.atleast_2d(np.cov(x, rowvar=False))


def typical_rows(sample: np.ndarray, trim: float = TRIM) -> np.ndarray:
    """Boolean mask (k,) of the rows of ``sample`` (k, d) kept by the trim (module docstring)."""
    k = len(sample)
    drop = math.floor(trim * k)
    if drop == 0:
        return np.ones(k, bool)
    x = np.asarray(sample, np.float64)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    kth = min(k - 1, max(5, math.ceil(2 * trim * k)))
    score = np.partition(d2, kth, axis=1)[:, kth]  # column 0 is the row itself
    keep = np.ones(k, bool)
    # Stable order: ties (duplicated rows) are broken by row number, so the mask repeats.
    keep[np.argsort(-score, kind="stable")[:drop]] = False
    return keep


def _chunk_rows(arr: Any) -> int:
    """Rows per chunk of a Zarr array; a numpy array is read in blocks of 4,096 rows."""
    chunks = getattr(arr, "chunks", None)
    return int(chunks[0]) if chunks else 4096


def _sample_rows(arr: Any, max_n: int) -> np.ndarray:
    """Up to ``max_n`` rows of the (n, ...) array, evenly spaced over many chunks."""
    n = int(arr.shape[0])
    if n <= 4 * max_n:
        x = np.asarray(arr[:])
    else:
        step = _chunk_rows(arr)
        n_chunks = math.ceil(n / step)
        want = min(n_chunks, max(_MIN_CHUNKS, 8 * math.ceil(max_n / step)))
        picks = sorted(set(np.linspace(0, n_chunks - 1, want).round().astype(int).tolist()))
        x = np.concatenate([np.asarray(arr[c * step : min(n, (c + 1) * step)]) for c in picks])
    if len(x) > max_n:
        x = x[np.linspace(0, len(x) - 1, max_n).round().astype(int)]
    return x


def _moments(arr: Any) -> tuple[int, np.ndarray, np.ndarray]:
    """Exact count, mean and covariance of the rows of ``arr`` (read chunk by chunk)."""
    n = int(arr.shape[0])
    d = int(arr.shape[-1])
    step = _chunk_rows(arr)
    total = np.zeros(d)
    outer = np.zeros((d, d))
    count = 0
    for lo in range(0, n, step):
        x = np.asarray(arr[lo : min(n, lo + step)], np.float64).reshape(-1, d)
        total += x.sum(0)
        outer += x.T @ x
        count += len(x)
    if count == 0:
        return 0, np.zeros(d), np.zeros((d, d))
    mean = total / count
    cov = (outer - count * np.outer(mean, mean)) / max(count - 1, 1)
    return count, mean, (cov + cov.T) / 2.0


def stats_of(arr: Any) -> Stats:
    """:class:`Stats` of an embeddings array (n, d) or patch array (n, p, d), Zarr or numpy."""
    n, mean, cov = _moments(arr)
    d = int(arr.shape[-1])
    sample = _sample_rows(arr, SAMPLE_SIZE if arr.ndim == 2 else max(1, SAMPLE_SIZE // 4))
    sample = np.asarray(sample, np.float32).reshape(-1, d)[: 4 * SAMPLE_SIZE]
    if len(sample) > SAMPLE_SIZE:
        sample = sample[np.linspace(0, len(sample) - 1, SAMPLE_SIZE).round().astype(int)]
    quantiles = (
        np.quantile(sample, np.linspace(0, 1, QUANTILES), axis=0)
        if len(sample)
        else np.zeros((QUANTILES, d))
    )
    typical = typical_rows(sample)
    kept = sample[typical].astype(np.float64)
    trim_mean = kept.mean(0) if len(kept) else mean
    return Stats(n, mean, cov, quantiles, sample, typical, trim_mean, _cov(kept))


def explicit_features(fp: dict[str, Any]) -> np.ndarray:
    """A numeric vector of an explicit fingerprint (:mod:`pomlia_hpc.data.explicit_fingerprint`):
    per channel (gray repeated to 3) the intensity mean, std and 9 percentiles in [0, 1];
    then RGB (0/1), log2 image side / 8, log2 classes / 8, class-balance entropy. Missing
    fields count as 0."""
    channels = list(fp.get("intensity") or [])
    if len(channels) == 1:
        channels = channels * 3
    per: list[float] = []
    for c in (channels + [{}] * 3)[:3]:
        pct = c.get("percentiles", {}) if isinstance(c, dict) else {}
        vals = [float(c.get("mean", 0.0)) / 255.0, float(c.get("std", 0.0)) / 255.0]
        vals += [float(v) / 255.0 for _k, v in sorted(pct.items(), key=lambda kv: float(kv[0]))]
        per += (vals + [0.0] * 11)[:11]
    size = fp.get("image_size") or [1, 1]
    balance = (fp.get("class_balance") or {}).get("all", {})
    rest = [
        1.0 if int(fp.get("channels", 1)) == 3 else 0.0,
        math.log2(max(1, int(size[0]))) / 8.0,
        math.log2(max(1, int(fp.get("n_classes", 1)))) / 8.0,
        float(balance.get("normalized_entropy", 1.0)),
    ]
    return np.asarray(per + rest, np.float64)


def compute_summary(embeddings_path: str | Path, explicit: dict[str, Any] | None = None) -> Summary:
    """The summary of the (complete) embeddings group at ``embeddings_path``."""
    g = zarr.open_group(str(embeddings_path), mode="r")
    images = stats_of(g["z"])
    patches = stats_of(g["patches"]) if "patches" in g else None
    return Summary(images, explicit_features(explicit or {}), patches)


def _encode(prefix: str, s: Stats) -> dict[str, np.ndarray]:
    return {
        f"{prefix}n": np.asarray(s.n),
        f"{prefix}mean": s.mean,
        f"{prefix}cov": s.cov,
        f"{prefix}quantiles": s.quantiles,
        f"{prefix}sample": s.sample,
        f"{prefix}typical": s.typical,
        f"{prefix}trim_mean": s.trim_mean,
        f"{prefix}trim_cov": s.trim_cov,
    }


_STAT_FIELDS = ("mean", "cov", "quantiles", "sample", "typical", "trim_mean", "trim_cov")


def _decode(prefix: str, d: Any, fields: frozenset[str] | None = None) -> Stats:
    # Each member of an npz costs a zip lookup: read only the fields a distance needs (the
    # others are empty arrays), which makes ranking thousands of versions several times faster.
    def get(k: str) -> np.ndarray:
        if fields is not None and k not in fields:
            return np.zeros(0)
        return np.asarray(d[f"{prefix}{k}"])

    return Stats(int(d[f"{prefix}n"]), *(get(k) for k in _STAT_FIELDS))


def write_summary(embeddings_path: str | Path, summary: Summary) -> Path:
    """Store ``summary`` beside the embeddings group (atomically); returns the file."""
    arrays = _encode("", summary.images) | {
        "explicit": summary.explicit,
        "version": np.asarray(SUMMARY_VERSION),
    }
    if summary.patches is not None:
        arrays |= _encode("patch_", summary.patches)
    return write_npz(summary_path(embeddings_path), arrays, compress=False)


def read_summary(
    embeddings_path: str | Path, fields: frozenset[str] | None = None
) -> Summary | None:
    """The stored summary of an embeddings group, or None if there is none (extracted before
    summaries existed, or not complete). ``fields``: only these :class:`Stats` fields are read
    (the others are empty arrays); None reads all."""
    path = summary_path(embeddings_path)
    try:
        with np.load(path) as d:
            patches = _decode("patch_", d, fields) if "patch_n" in d.files else None
            return Summary(_decode("", d, fields), np.asarray(d["explicit"]), patches)
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return None
