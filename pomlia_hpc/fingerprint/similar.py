"""Similar datasets and nearest images — what AutoML and the strategy recommender call.

Public API::

    dataset_fingerprint(registry, encoder, "pathmnist") -> dict
        mean embedding (the paper's fingerprint), n, plus the explicit fingerprint JSON
    similar_datasets(registry, encoder, "pathmnist", k=5, distance="frechet")
        -> [SimilarDataset(ref, distance, n_vectors), ...] nearest first
    nearest_images(registry, workspace, encoder, "pathmnist", n=1000)
        -> [NearestImage(ref, split, row, distance), ...] from other datasets, nearest first
    embedding_sample(registry, encoder, "pathmnist", max_n=5000, split=None) -> (n, d) array

``encoder`` is an encoder id, name or registry row; datasets are ``name`` (newest version) or
``name@version`` and must have been extracted with that encoder (``pomlia fingerprint
extract``). Distances are those of :mod:`pomlia_hpc.fingerprint.distances`. Other versions of
the query's own dataset are left out unless ``include_same_dataset=True``.

Nearest images: up to ``max_queries`` embeddings of the query dataset (evenly spaced) are
searched in the encoder's FAISS index with the query dataset excluded by an id selector; each
candidate image is ranked by its smallest distance to any query image, and the ``n`` best are
returned (the search widens until ``n`` distinct images are found or the index is exhausted).
Read the images with ``open_version(registry, hit.ref).read_rows(hit.row, hit.row + 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from sqlalchemy import select

from pomlia_hpc.data.store import find_version, open_store
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.fingerprint.distances import get_distance
from pomlia_hpc.fingerprint.index import complete_sets, load_index
from pomlia_hpc.fingerprint.train import get_encoder
from pomlia_hpc.registry import Encoder, FingerprintSet, Registry
from pomlia_hpc.workspace import Workspace

EncoderRef = int | str | Encoder


@dataclass(frozen=True)
class SimilarDataset:
    ref: str
    distance: float
    n_vectors: int


@dataclass(frozen=True)
class NearestImage:
    ref: str
    split: str
    row: int
    distance: float


def fingerprint_set(
    registry: Registry, encoder: EncoderRef, ref: str
) -> tuple[FingerprintSet, str]:
    """The complete fingerprint set of dataset ``ref`` under ``encoder``, with its full ref."""
    enc = get_encoder(registry, encoder)
    version = find_version(registry, ref)
    with registry.session() as s:
        fs = s.scalar(
            select(FingerprintSet).where(
                FingerprintSet.encoder_id == enc.id,
                FingerprintSet.dataset_version_id == version.id,
            )
        )
        if fs is not None:
            s.expunge(fs)
    store = open_store(version.store_path)
    if fs is None or fs.status != "complete":
        state = "not extracted" if fs is None else f"extraction {fs.status}"
        raise NotFoundError(
            f"dataset '{store.ref}' has no embeddings under encoder '{enc.name}' ({state})",
            hint=f"run `pomlia fingerprint extract --encoder {enc.name} {store.ref}`",
        )
    return fs, store.ref


#: A sample of a large range reads at least this many of its chunks (all of them if fewer).
SAMPLE_MIN_CHUNKS = 64
#: ... and at least this many times as many chunks as would hold the sample.
SAMPLE_CHUNK_FACTOR = 8


def sample_rows(path: str, lo: int, hi: int, max_n: int) -> np.ndarray:
    """Up to ``max_n`` rows of ``z`` in [lo, hi), evenly spaced (deterministic).

    A large range is sampled from a subset of its chunks, evenly spread over the range: many
    more chunks than would hold ``max_n`` rows, since rows are often sorted by class within a
    split (image folders, HDF5 files) and a few chunks would cover only a few classes."""
    arr: Any = zarr.open_group(path, mode="r")["z"]
    n = hi - lo
    if n <= 0:
        return np.zeros((0, arr.shape[1]), np.float32)
    if n > 4 * max_n:
        step = int(arr.chunks[0])
        chunks = list(range(lo // step, math.ceil(hi / step)))
        want = max(SAMPLE_MIN_CHUNKS, SAMPLE_CHUNK_FACTOR * math.ceil(max_n / step))
        pick = np.linspace(0, len(chunks) - 1, min(len(chunks), want)).round().astype(int)
        x = np.concatenate(
            [
                np.asarray(arr[max(lo, c * step) : min(hi, (c + 1) * step)])
                for c in sorted({chunks[i] for i in pick})
            ]
        )
    else:
        x = np.asarray(arr[lo:hi])
    if len(x) > max_n:
        x = x[np.linspace(0, len(x) - 1, max_n).round().astype(int)]
    return x


def embedding_sample(
    registry: Registry,
    encoder: EncoderRef,
    ref: str,
    max_n: int = 5000,
    split: str | None = None,
) -> np.ndarray:
    """Up to ``max_n`` embeddings (float32 (n, d)) of dataset ``ref``, evenly spaced over its
    rows (or over one ``split``)."""
    fs, full = fingerprint_set(registry, encoder, ref)
    lo, hi = 0, fs.n_vectors
    if split is not None:
        lo, hi = open_store(find_version(registry, full).store_path).split_range(split)
    return sample_rows(fs.embeddings_path, lo, hi, max_n)


def dataset_fingerprint(registry: Registry, encoder: EncoderRef, ref: str) -> dict[str, Any]:
    """The dataset-level fingerprint: mean embedding, size, and the explicit fingerprint."""
    fs, full = fingerprint_set(registry, encoder, ref)
    store = open_store(find_version(registry, full).store_path)
    return {
        "dataset": full,
        "encoder": get_encoder(registry, encoder).name,
        "n_vectors": fs.n_vectors,
        "mean": list(fs.mean),
        "explicit": store.fingerprint,
    }


def similar_datasets(
    registry: Registry,
    encoder: EncoderRef,
    ref: str,
    k: int = 5,
    distance: str = "frechet",
    *,
    max_samples: int = 5000,
    include_same_dataset: bool = False,
) -> list[SimilarDataset]:
    """The ``k`` datasets whose embedding distributions are nearest to ``ref``'s.

    ``mean`` compares the stored mean embeddings (exact, over all vectors); the other
    distances compare samples of up to ``max_samples`` vectors per dataset."""
    if k < 1:
        raise InputError(f"k={k}: expected an integer >= 1")
    fn = get_distance(distance)
    enc = get_encoder(registry, encoder)
    fs, full = fingerprint_set(registry, enc, ref)

    def sample(s: FingerprintSet) -> np.ndarray:
        if distance == "mean":  # exact: the stored mean of all vectors, not a sample's
            return np.asarray([s.mean], np.float64)
        return sample_rows(s.embeddings_path, 0, s.n_vectors, max_samples)

    query = sample(fs)
    name = full.split("@")[0]
    out = []
    for other, other_ref in complete_sets(registry, enc.id):
        if other.id == fs.id or (not include_same_dataset and other_ref.split("@")[0] == name):
            continue
        out.append(SimilarDataset(other_ref, fn(query, sample(other)), other.n_vectors))
    out.sort(key=lambda r: r.distance)
    return out[:k]


def nearest_images(
    registry: Registry,
    workspace: Workspace,
    encoder: EncoderRef,
    ref: str,
    n: int,
    *,
    split: str | None = None,
    max_queries: int = 2000,
    include_same_dataset: bool = False,
) -> list[NearestImage]:
    """The ``n`` images of other datasets nearest to dataset ``ref`` (see module docstring)."""
    if n < 1:
        raise InputError(f"n={n}: expected an integer >= 1")
    enc = get_encoder(registry, encoder)
    fs, full = fingerprint_set(registry, enc, ref)
    index = load_index(registry, workspace, enc)
    name = full.split("@")[0]
    exclude = tuple(
        sid
        for sid, e in index.manifest.sets.items()
        if sid == fs.id or (not include_same_dataset and e.ref.split("@")[0] == name)
    )
    lo, hi = 0, fs.n_vectors
    if split is not None:
        lo, hi = open_store(find_version(registry, full).store_path).split_range(split)
    queries = sample_rows(fs.embeddings_path, lo, hi, max_queries)
    available = index.manifest.ntotal - sum(
        index.manifest.sets[s].n_images * index.manifest.sets[s].tiles
        for s in exclude
        if s in index.manifest.sets
    )
    if len(queries) == 0 or available <= 0:
        return []
    k = min(available, 1024, max(4, math.ceil(2 * n / len(queries))))
    while True:
        dist, ids = index.search(queries, k, exclude_sets=exclude)
        best: dict[int, float] = {}
        for d, i in zip(dist.ravel(), ids.ravel(), strict=True):
            if i >= 0 and d < best.get(int(i), math.inf):
                best[int(i)] = float(d)
        if len(best) >= n or k >= min(available, 1024):
            break
        k = min(available, 1024, k * 4)
    ranked = sorted(best.items(), key=lambda kv: (kv[1], kv[0]))[:n]
    out = []
    for vid, d in ranked:
        hit = index.decode(vid, d)
        out.append(NearestImage(hit.ref, hit.split, hit.row, d))
    return out
