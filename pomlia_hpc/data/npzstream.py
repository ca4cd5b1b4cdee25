"""Streaming reads of arrays inside an npz file, a few rows at a time.

``np.load`` on an npz inflates a whole member into memory (PathMNIST at 224 px is 13.5 GB);
this reader parses the ``.npy`` header of a member and then reads rows in batches straight
from the zip stream, compressed or not, so memory stays at one batch.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from pomlia_hpc.errors import InputError, NotFoundError

# Damaged input makes zipfile, zlib and numpy's header parser (ast.literal_eval on file bytes)
# raise a dozen types (BadZipFile, zlib.error, EOFError, NotImplementedError, SyntaxError,
# tokenize.TokenError, RecursionError, ...; found by tests/test_fuzz.py): every one of them is
# a file that cannot be read, said in one message, never a traceback.
_READ_ERRORS = (Exception,)


class NpzFile:
    """An open npz file: its member names and a streaming reader per member."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except FileNotFoundError as exc:
            raise NotFoundError(f"npz file '{path}' does not exist") from exc
        except Exception as exc:  # BadZipFile, OSError, ValueError, NotImplementedError...
            raise InputError(
                f"npz file '{path}' is truncated or not an npz file: expected a zip archive "
                f"of .npy arrays ({exc})"
            ) from exc
        self.keys = sorted(n[:-4] for n in self._zip.namelist() if n.endswith(".npy"))

    def __enter__(self) -> NpzFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def require(self, key: str) -> None:
        if key not in self.keys:
            raise InputError(
                f"npz file '{self.path}' has no key '{key}': expected MedMNIST's keys "
                "(train_images, train_labels, val_*, test_*); found "
                f"{', '.join(self.keys) or 'none'}"
            )

    def member(self, key: str) -> NpyMember:
        self.require(key)
        return NpyMember(self, key)

    def load(self, key: str) -> np.ndarray:
        """The whole array ``key`` (for small arrays such as labels)."""
        m = self.member(key)
        return m.read_all()


class NpyMember:
    """Header and row-batch reader of one ``.npy`` array inside an npz."""

    def __init__(self, npz: NpzFile, key: str) -> None:
        self.npz = npz
        self.key = key
        with self._open() as fh:
            self.shape, fortran, self.dtype, self._offset = self._header(fh)
        if fortran and len(self.shape) > 1:
            raise InputError(self._msg("is stored in Fortran order: expected C order"))
        if self.dtype.hasobject:
            raise InputError(self._msg(f"has dtype {self.dtype}: expected a numeric array"))
        # The header is a claim; the zip directory says how many bytes the member inflates to.
        # A header that announces more (or less) is refused here, before any data is read, so
        # a small file claiming a huge array costs nothing.
        size = npz._zip.getinfo(f"{key}.npy").file_size
        need = self._offset + math.prod(self.shape) * self.dtype.itemsize
        if size != need:
            raise InputError(
                self._msg(
                    f"declares shape {self.shape} of {self.dtype} ({need} bytes with its "
                    f"header) but holds {size} bytes: expected the data its header announces"
                )
            )

    def _msg(self, what: str) -> str:
        return f"npz file '{self.npz.path}', key '{self.key}' {what}"

    def _open(self) -> IO[bytes]:
        try:
            return self.npz._zip.open(f"{self.key}.npy")
        except _READ_ERRORS as exc:
            raise InputError(self._msg(f"cannot be read: {exc}")) from exc

    def _header(self, fh: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
        try:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
            else:  # 2.0, and 3.0 (the same with a UTF-8 header)
                shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
        except _READ_ERRORS as exc:
            raise InputError(self._msg(f"is not a valid .npy array ({exc})")) from exc
        return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype), fh.tell()

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 0

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def iter_rows(self, batch_rows: int) -> Iterator[np.ndarray]:
        """Arrays of up to ``batch_rows`` rows, in order."""
        row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        n = self.n_rows
        with self._open() as fh:
            try:
                fh.read(self._offset)
                done = 0
                while done < n:
                    b = min(batch_rows, n - done)
                    buf = fh.read(b * row_bytes)
                    if len(buf) != b * row_bytes:
                        raise EOFError(f"ends after row {done + len(buf) // max(row_bytes, 1)}")
                    yield np.frombuffer(buf, dtype=self.dtype).reshape((b, *self.row_shape))
                    done += b
            except _READ_ERRORS as exc:
                raise InputError(
                    self._msg(f"is truncated or damaged: expected {n} rows ({exc})")
                ) from exc

    def iter_image_pieces(self, max_bytes: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(row, first line, lines)`` for every row (image) in order, each read in pieces of
        at most ``max_bytes`` (at least one line of pixels): ``lines`` is (1, h, W[, C]). For
        images too large to hold twice (a float64 image is 8x its uint8 form)."""
        if len(self.shape) < 2:
            raise ValueError("pieces need rows of at least one dimension")
        height = self.shape[1]
        line_shape = self.shape[2:]
        line_bytes = max(1, math.prod(line_shape) * self.dtype.itemsize)
        step = max(1, max_bytes // line_bytes)
        with self._open() as fh:
            try:
                fh.read(self._offset)
                for row in range(self.n_rows):
                    for lo in range(0, height, step):
                        h = min(step, height - lo)
                        buf = fh.read(h * line_bytes)
                        if len(buf) != h * line_bytes:
                            raise EOFError(f"ends in row {row}")
                        yield row, lo, np.frombuffer(buf, self.dtype).reshape((1, h, *line_shape))
            except _READ_ERRORS as exc:
                raise InputError(
                    self._msg(f"is truncated or damaged: expected {self.n_rows} rows ({exc})")
                ) from exc

    def read_all(self) -> np.ndarray:
        parts = list(self.iter_rows(max(self.n_rows, 1)))
        if not parts:
            return np.empty(self.shape, self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
