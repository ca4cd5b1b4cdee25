"""Writing a new store: rows arrive in batches at any position; whole chunks are compressed,
written and hashed on worker threads as soon as they are complete.

Why full chunks bypass zarr's ``array[lo:hi] = x``: zarr's synchronous API runs every write
through one event loop, and Blosc called off the main thread is single-threaded, so writes were
serialised (about 50 ms per 4.8 MB chunk; see docs/BENCHMARKS.md). Here each worker encodes
with the array's own Blosc codec settings (numcodecs, which releases the GIL) and writes the
chunk file under the key zarr itself computes (``metadata.encode_chunk_key``); the last,
partial chunk goes through zarr, which pads it. Readers see an ordinary Zarr v3 array.

Memory stays at a few chunks: a batch that covers a whole chunk is written straight from the
batch; a partly covered chunk waits in a buffer until its remaining rows arrive (rows of one
chunk can come from two splits, e.g. HDF5 rows scattered by split), and at most
``2 * workers`` chunks are in flight. Each chunk's SHA-256 over its raw C-order bytes is kept:
together they give the version id and let ``verify`` name a damaged chunk.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pomlia_hpc.errors import InputError

CHUNK_TARGET_BYTES = 8 << 20
"""Uncompressed bytes per image chunk the chunk size aims at (rounded down to a power of 2)."""


CNAME: Literal["zstd"] = "zstd"
CLEVEL = 1
BLOCKSIZE = 2 << 20  # bytes; larger blocks let zstd find more redundancy


def compressor() -> BloscCodec:
    """Blosc-zstd level 1, bit-shuffle, 2 MiB blocks: on uint8 images smaller than the
    zlib-compressed npz (MedMNIST's format) and faster to write than to inflate the npz.
    Measured on 28 px RGB look-alikes (MB per CPU-second encode / decode, size vs raw):
    zstd-1 2 MiB blocks 351 / 757 / 0.880; zstd-1 1 MiB 302 / 613 / 0.880; zstd-3 default
    blocks 120 / 349 / 0.904; lz4 bit-shuffle 874 / 1133 / 0.941 (larger than the npz);
    zlib-6 (the npz itself) 21 / 119 / 0.913."""
    return BloscCodec(
        typesize=1, cname=CNAME, clevel=CLEVEL, shuffle="bitshuffle", blocksize=BLOCKSIZE
    )


def _numcodecs_blosc() -> numcodecs.Blosc:
    """The numcodecs codec zarr's :func:`compressor` uses to encode a chunk (same settings)."""
    return numcodecs.Blosc(
        cname=CNAME, clevel=CLEVEL, shuffle=numcodecs.Blosc.BITSHUFFLE, blocksize=BLOCKSIZE
    )


def chunk_rows_for(height: int, width: int, channels: int) -> int:
    """Rows per chunk: the largest power of two with at most CHUNK_TARGET_BYTES per chunk."""
    per_image = max(1, height * width * channels)
    rows = max(1, CHUNK_TARGET_BYTES // per_image)
    return int(min(1 << 16, 1 << (rows.bit_length() - 1)))


def sha256_hex(data: np.ndarray | bytes) -> str:
    buf = data if isinstance(data, bytes) else np.ascontiguousarray(data).data
    return hashlib.sha256(buf).hexdigest()


class StoreWriter:
    """Creates the arrays of a new store at ``path`` and fills ``images`` chunk by chunk."""

    def __init__(
        self,
        path: Path,
        n: int,
        shape: tuple[int, int, int],
        label_width: int,
        *,
        chunk_rows: int | None = None,
        workers: int = 2,
    ) -> None:
        self.path = path
        self.n = n
        self.shape = shape
        self.chunk_rows = chunk_rows or chunk_rows_for(*shape)
        self.n_chunks = (n + self.chunk_rows - 1) // self.chunk_rows
        self.group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        self.images = self.group.create_array(
            "images",
            shape=(n, *shape),
            chunks=(self.chunk_rows, *shape),
            dtype="uint8",
            compressors=compressor(),
            fill_value=0,
            dimension_names=("image", "height", "width", "channel"),
        )
        self._label_width = label_width
        self._blosc = _numcodecs_blosc()
        self._images_dir = path / "images"
        self._buffers: dict[int, tuple[np.ndarray, int]] = {}
        self._digests: dict[int, str] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pomlia-write")
        self._pending: deque[Future[tuple[int, str]]] = deque()
        self._max_pending = 2 * workers
        self.rows_written = 0

    def _chunk_len(self, idx: int) -> int:
        return min(self.chunk_rows, self.n - idx * self.chunk_rows)

    def write_chunk(self, idx: int, data: np.ndarray) -> tuple[int, str]:
        """Write the images ``data`` as chunk ``idx`` (on one of the writer's threads) and
        return the index with the chunk's SHA-256 (hex)."""
        lo = idx * self.chunk_rows
        if len(data) == self.chunk_rows:
            key = self.images.metadata.encode_chunk_key((idx, 0, 0, 0))
            target = self._images_dir / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self._blosc.encode(data))
        else:  # the last, partial chunk: zarr pads it to the chunk shape
            self.images[lo : lo + len(data)] = data
        return idx, sha256_hex(data)

    def _submit(self, idx: int, data: np.ndarray) -> None:
        while len(self._pending) >= self._max_pending:
            self._collect(self._pending.popleft())
        self._pending.append(self._pool.submit(self.write_chunk, idx, data))

    def _collect(self, fut: Future[tuple[int, str]]) -> None:
        idx, digest = fut.result()
        self._digests[idx] = digest

    def put(self, start: int, rows: np.ndarray) -> None:
        """Place uint8 ``rows`` (b, H, W, C) at store rows [start, start + b)."""
        if rows.shape[1:] != self.shape or rows.dtype != np.uint8:
            raise InputError(
                f"rows of shape {rows.shape[1:]} / {rows.dtype}: expected "
                f"{self.shape} uint8 (all images of a dataset need one size)"
            )
        pos, end = start, start + len(rows)
        while pos < end:
            idx = pos // self.chunk_rows
            c_lo = idx * self.chunk_rows
            c_len = self._chunk_len(idx)
            take = min(end, c_lo + c_len) - pos
            part = rows[pos - start : pos - start + take]
            if take == c_len:
                self._submit(idx, np.ascontiguousarray(part))
            else:
                buf, filled = self._buffers.get(idx) or (
                    np.empty((c_len, *self.shape), np.uint8),
                    0,
                )
                buf[pos - c_lo : pos - c_lo + take] = part
                filled += take
                if filled == c_len:
                    del self._buffers[idx]
                    self._submit(idx, buf)
                else:
                    self._buffers[idx] = (buf, filled)
            pos += take
        self.rows_written += len(rows)

    def finish(self, labels: np.ndarray, split: np.ndarray) -> dict[str, object]:
        """Wait for all chunks, write labels and split; return the chunk and array digests."""
        while self._pending:
            self._collect(self._pending.popleft())
        self._pool.shutdown()
        if self._buffers or len(self._digests) != self.n_chunks:
            raise InputError(
                f"store '{self.path}': {self.rows_written} of {self.n} rows were "
                "written: expected every row once (source delivered too few rows)"
            )
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        split = np.ascontiguousarray(split, dtype=np.int8)
        self.group.create_array(
            "labels",
            data=labels,
            chunks=(max(1, min(len(labels), 1 << 20)), self._label_width),
            compressors=compressor(),
            dimension_names=("image", "label"),
        )
        self.group.create_array(
            "split",
            data=split,
            chunks=(max(1, min(len(split), 1 << 20)),),
            compressors=compressor(),
            dimension_names=("image",),
        )
        return {
            "images": [self._digests[i] for i in range(self.n_chunks)],
            "labels": sha256_hex(labels.astype("<i4")),
            "split": sha256_hex(split),
        }

    def abort(self) -> None:
        """Stop the workers (the caller removes the directory)."""
        for fut in self._pending:
            fut.cancel()
        self._pool.shutdown(wait=True)
