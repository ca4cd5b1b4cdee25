"""Samples of a dataset's embeddings, read from a subset of their chunks: what the latent
plots draw and a distance over embeddings (rather than summaries) takes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import zarr

from pomlia_hpc.data.store import find_version, open_store
from pomlia_hpc.fingerprint.candidates import EncoderRef, fingerprint_set
from pomlia_hpc.registry import Registry

#: A sample of a large range reads at least this many of its chunks (all of them if fewer).
SAMPLE_MIN_CHUNKS = 64
#: ... and at least this many times as many chunks as would hold the sample.
SAMPLE_CHUNK_FACTOR = 8


def sample_rows(path: str, lo: int, hi: int, max_n: int, array: str = "z") -> np.ndarray:
    """Up to ``max_n`` rows of ``array`` (``z``, or ``patches``: (rows, tiles, d)) in
    [lo, hi), evenly spaced (deterministic).

    A large range is sampled from a subset of its chunks, evenly spread over the range: many
    more chunks than would hold ``max_n`` rows, since rows are often sorted by class within a
    split (image folders, HDF5 files) and a few chunks would cover only a few classes."""
    arr: Any = zarr.open_group(path, mode="r")[array]
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
