"""A TIFF page assembled from its strips or tiles, each read and decompressed once, bounded.

tifffile (without imagecodecs) decompresses deflate, LZMA and PackBits segments with no output
limit, and reads an uncompressed segment by the byte count the file states (a file object's
read allocates that many bytes first), so :mod:`.segments` reads and decodes each one with a
limit, and the page is assembled here from those decodes (never handed to tifffile, which
would decompress every segment a second time), by tifffile's own layout rules (its reshape of
short or long segments, its unpacking of 1-bit rows, its horizontal predictor, its sample
order): 1-bit (bilevel) or 8- to 64-bit samples, either fill order, strips or tiles,
contiguous or planar samples, no predictor or horizontal differencing. :func:`layout_problem`
names every other layout (floating-point differencing, which tifffile reads only with
imagecodecs, 2- to 24-bit packed samples, 3-D volumes, samples of mixed formats); the caller
refuses such a page before reading any of it. An uncompressed page whose strips lie back to
back, each of its own size, is read in one read of the page's size instead, as tifffile reads
it (strip by strip it took twice tifffile's time). Torch-free, as :mod:`.pixels`, which calls it.

Memory: the page is allocated when its first segment has decoded, at its own size, which the
caller bounds before: sides checked against its limit, one 2-D image (no volume), at most 4
samples per pixel (3 colour and an alpha), at most 8 bytes each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import tifffile

from pomlia_hpc.data.sources.segments import READ_HERE, decoded_segments

#: tifffile's predictor code of horizontal differencing.
_HORIZONTAL = 2
#: Bits per sample of the samples assembled (and read): bilevel, and whole bytes.
_SAMPLE_BITS = frozenset({1, 8, 16, 32, 64})


def layout_problem(page: Any) -> str | None:
    """Why ``page`` (a :class:`tifffile.TiffPage` of grey or RGB samples) is not read here, a
    phrase that starts with a verb ("is a 3-D TIFF volume ..."), or None when it is. Its tags
    are single numbers (the caller checks)."""
    bits, predictor = int(page.bitspersample), int(page.predictor)
    formats = page.tags.get(339)  # SampleFormat: one per sample, which must agree
    kinds = sorted(set(np.atleast_1d(formats.value).tolist())) if formats is not None else []
    if int(page.shaped[1]) < 1:
        return "is a TIFF whose ImageDepth is 0: expected 1 for a 2-D image (damaged file)"
    if int(page.shaped[1]) != 1:
        return (
            f"is a 3-D TIFF volume of {int(page.shaped[1])} slices (ImageDepth): expected one "
            "2-D image per file (save each slice as its own file)"
        )
    if len(kinds) > 1:
        return (
            f"is a TIFF whose samples differ in sample format ({', '.join(map(str, kinds))}): "
            "expected samples of one type"
        )
    if bits not in _SAMPLE_BITS or (bits > 1 and bits != 8 * np.dtype(page.dtype).itemsize):
        return f"is a TIFF of {bits}-bit samples: expected 1-, 8-, 16-, 32- or 64-bit samples"
    if predictor not in (1, _HORIZONTAL) or (bits == 1 and predictor != 1):
        name = getattr(page.predictor, "name", f"code {predictor}")
        return (
            f"is a TIFF of {bits}-bit samples stored with predictor {name}, which is not "
            "decoded here: expected no predictor or horizontal differencing of 8-bit or "
            "wider samples (save it again so)"
        )
    if page.is_subsampled:
        return "is a TIFF of chroma-subsampled samples: expected grey or RGB samples"
    return None


def _segment_shape(page: Any) -> tuple[int, int, int]:
    """Rows, columns and contiguous samples of one full strip or tile."""
    contig = int(page.shaped[4])
    if page.is_tiled:
        return int(page.tilelength), int(page.tilewidth), contig
    return int(page.rowsperstrip), int(page.imagewidth), contig


def _place(page: Any, index: int) -> tuple[int, int, int, int, int]:
    """Where segment ``index`` lies: (plane, first row, first column, rows, columns), its rows
    and columns clipped to the image."""
    _, _, height, width, _ = (int(n) for n in page.shaped)
    seg_rows, seg_cols, _ = _segment_shape(page)
    down, across = math.ceil(height / seg_rows), math.ceil(width / seg_cols)
    plane, rest = divmod(index, down * across)
    row, col = divmod(rest, across)
    r0, c0 = row * seg_rows, col * seg_cols
    return plane, r0, c0, min(seg_rows, height - r0), min(seg_cols, width - c0)


def _samples(page: Any, data: bytes, dtype: np.dtype) -> np.ndarray:
    """A decoded segment's samples, flat, in ``dtype`` (the file's byte order). 1-bit rows are
    unpacked as tifffile does: each row starts on a byte, its padding bits dropped."""
    if int(page.bitspersample) != 1:
        return np.frombuffer(data, dtype, count=len(data) // dtype.itemsize)
    _, seg_cols, contig = _segment_shape(page)
    run = seg_cols * contig  # samples per row
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    if run % 8:
        padded = run + 8 - run % 8
        if bits.size % padded:
            raise tifffile.TiffFileError(
                f"corrupted bilevel {'tile' if page.is_tiled else 'strip'}: {len(data)} bytes "
                f"do not hold whole rows of {padded // 8} bytes"
            )
        bits = bits.reshape(-1, padded)[:, :run].reshape(-1)
    return bits.astype(np.bool_)


def _segment(page: Any, index: int, data: bytes, dtype: np.dtype) -> np.ndarray:
    """Decoded segment ``index`` as (rows, columns, samples) in native byte order (a view of
    ``data`` where it is stored so, else a copy), by tifffile's rules: extra bytes are
    dropped; a tile may hold just its part inside the image; fewer bytes than that is a
    damaged file (``TiffFileError``). Not yet clipped to the image: a predictor runs along
    the segment's whole rows."""
    seg_rows, seg_cols, contig = _segment_shape(page)
    _, _, _, rows, cols = _place(page, index)
    values = _samples(page, data, dtype)
    # A strip is as wide as the image: only its last one is shorter, by rows.
    full = (seg_rows if page.is_tiled else rows, seg_cols, contig)
    for shape in (full, (rows, cols, contig), (rows, seg_cols, contig)):
        size = math.prod(shape)
        if values.size >= size and (shape == full or values.size == size):
            return values[:size].reshape(shape).astype(dtype.newbyteorder("="), copy=False)
    raise tifffile.TiffFileError(
        f"corrupted {'tile' if page.is_tiled else 'strip'} #{index}: {values.size} samples, "
        f"expected {math.prod(full)}"
    )


def _back_to_back(
    page: Any, read: Callable[[int, int], bytes | memoryview], stored: np.dtype
) -> np.ndarray | None:
    """An uncompressed page of whole-byte samples whose strips lie back to back in the file,
    each of exactly its own size: read in one bounded read of the page's own size, as tifffile
    reads such a page (a read and a copy per strip took twice tifffile's time); None for any
    other page, which is assembled strip by strip (the same samples: a strip here is its
    samples as they are)."""
    if (
        int(page.compression) != 1
        or int(page.predictor) != 1
        or int(page.fillorder) != 1  # each byte's bits reversed: the segments' path does it
        or int(page.bitspersample) == 1
        or page.is_tiled
    ):
        return None
    offsets, counts = list(page.dataoffsets), list(page.databytecounts)
    planes, _, height, _, contig = (int(n) for n in page.shaped)
    seg_rows = _segment_shape(page)[0]
    if len(offsets) != planes * math.ceil(height / seg_rows) or len(counts) != len(offsets):
        return None
    for index, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
        rows, cols = _place(page, index)[3:]
        if int(count) != rows * cols * contig * stored.itemsize:
            return None
        if index and int(offset) != int(offsets[index - 1]) + int(counts[index - 1]):
            return None
    size = sum(int(c) for c in counts)
    data = read(int(offsets[0]), size)
    if len(data) != size:
        return None  # cut short: the strips' own path says which one
    # astype copies: the page is writable, as an assembled one is.
    return np.frombuffer(data, stored).astype(stored.newbyteorder("=")).reshape(page.shape)


def page_array(page: Any, read: Callable[[int, int], bytes | memoryview]) -> np.ndarray:
    """The samples of a TIFF page, shaped and typed as ``page.asarray()`` returns them, each
    segment read once, no further than its samples go, and decompressed with an output limit
    (:func:`~.segments.decoded_segments`, which raises ``DecompressionLimitError``).

    ``page`` is a :class:`tifffile.TiffPage` stored uncompressed or compressed as deflate,
    LZMA or PackBits (:data:`~.segments.READ_HERE`), of a layout :func:`layout_problem`
    passes (a damaged file's error otherwise); ``read(offset, count)`` returns ``count``
    bytes of the file from byte ``offset``, fewer at its end. Segments the file leaves empty
    or does not list are ``page.nodata`` (0 unless the file says), as tifffile fills them."""
    if int(page.compression) not in READ_HERE:
        raise tifffile.TiffFileError(
            f"TIFF compression {page.compression!r} is not read here (expected none, deflate, "
            "LZMA or PackBits)"
        )
    if page.dtype is None or (problem := layout_problem(page)) is not None:
        raise tifffile.TiffFileError(f"TIFF page {problem or 'has no sample type'}")
    if 0 in page.shaped:
        raise tifffile.TiffFileError("empty image (a side of 0 px)")
    native = np.dtype(page.dtype).newbyteorder("=")
    stored = native.newbyteorder(page.parent.byteorder)
    if (whole := _back_to_back(page, read, stored)) is not None:
        return whole
    unpredict = None if int(page.predictor) == 1 else tifffile.TIFF.UNPREDICTORS[_HORIZONTAL]
    shape = tuple(int(n) for n in page.shaped)
    planes, _, height, width, _ = shape
    seg_rows, seg_cols, _ = _segment_shape(page)
    count = planes * math.ceil(height / seg_rows) * math.ceil(width / seg_cols)
    out: np.ndarray | None = None  # allocated once a segment has decoded (a bad file: never)
    placed = np.zeros(count, np.bool_)
    for index, data in decoded_segments(page, read):
        if index >= count:
            break  # listed past the image's own segments: never read
        if data is None:
            continue
        seg = _segment(page, index, data, stored)
        if unpredict is not None:  # along each row (axis -2: columns), as tifffile does
            # In place where ``seg`` is a copy; a view of read-only data gets a new array.
            seg = unpredict(seg[None], axis=-2, out=seg[None])[0]
        if out is None:
            # Not filled with nodata first: each segment's region is written once, below
            # (filling first wrote an uncompressed page twice).
            out = np.empty(shape, dtype=native)
        plane, r0, c0, rows, cols = _place(page, index)
        out[plane, 0, r0 : r0 + rows, c0 : c0 + cols] = seg[:rows, :cols]
        placed[index] = True
    if out is None:  # no segment holds data: all of it is nodata
        return np.full(shape, page.nodata, dtype=native).reshape(page.shape)
    for gap in np.flatnonzero(~placed).tolist():  # empty or not listed: nodata, as tifffile
        plane, r0, c0, rows, cols = _place(page, gap)
        out[plane, 0, r0 : r0 + rows, c0 : c0 + cols] = page.nodata
    return out.reshape(page.shape)
