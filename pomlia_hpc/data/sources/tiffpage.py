"""A compressed TIFF page assembled from its strips or tiles, each decompressed once, bounded.

tifffile (without imagecodecs) decompresses deflate, LZMA and PackBits segments with no output
limit, so :mod:`.segments` decodes each one first with a limit; handing tifffile the page
afterwards would decompress every segment a second time. Instead the page is assembled here
from those bounded decodes, by tifffile's own layout rules (its reshape of short or long
segments, its horizontal predictor, its sample order), for the layouts images come in: 8- to
64-bit samples, strips or tiles, contiguous or planar samples, no predictor or horizontal
differencing. Any other layout (bit-packed samples, reversed fill order, floating-point
differencing, which tifffile reads only with imagecodecs, 3-D volumes, mixed sample formats)
returns None: the caller checks it with
:func:`~.segments.check_segments` and lets tifffile decode it (two decodes, for rare files).
Torch-free, as :mod:`.pixels`, which calls it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import tifffile

from pomlia_hpc.data.sources.segments import DECODERS, decoded_segments

#: tifffile's predictor code of horizontal differencing.
_HORIZONTAL = 2
_WHOLE_BYTE_BITS = frozenset({8, 16, 32, 64})


def _assembles(page: Any) -> bool:
    """Whether ``page``'s layout is one :func:`page_array` assembles (see the module doc)."""
    if int(page.compression) not in DECODERS or page.dtype is None:
        return False
    bits = page.bitspersample
    formats = page.tags.get(339)  # SampleFormat: one per sample, which must agree
    mixed = formats is not None and len(set(np.atleast_1d(formats.value).tolist())) > 1
    return (
        isinstance(bits, int)
        and bits in _WHOLE_BYTE_BITS
        and bits == 8 * np.dtype(page.dtype).itemsize
        and int(page.fillorder) == 1
        and int(page.predictor) in (1, _HORIZONTAL)
        and int(page.shaped[1]) == 1  # no 3-D (SGI ImageDepth) volume
        and not page.is_subsampled
        and not mixed
        and 0 not in page.shaped
    )


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


def _segment(page: Any, index: int, data: bytes, dtype: np.dtype) -> np.ndarray:
    """Decoded segment ``index`` as (rows, columns, samples), a copy in native byte order, by
    tifffile's rules: extra bytes are dropped; a tile may hold just its part inside the image;
    fewer bytes than that is a damaged file (``TiffFileError``). Not yet clipped to the
    image: a predictor runs along the segment's whole rows."""
    seg_rows, seg_cols, contig = _segment_shape(page)
    _, _, _, rows, cols = _place(page, index)
    values = np.frombuffer(data, dtype, count=len(data) // dtype.itemsize)
    # A strip is as wide as the image: only its last one is shorter, by rows.
    full = (seg_rows if page.is_tiled else rows, seg_cols, contig)
    for shape in (full, (rows, cols, contig), (rows, seg_cols, contig)):
        size = math.prod(shape)
        if values.size >= size and (shape == full or values.size == size):
            return values[:size].reshape(shape).astype(dtype.newbyteorder("="))
    raise tifffile.TiffFileError(
        f"corrupted {'tile' if page.is_tiled else 'strip'} #{index}: {values.size} samples, "
        f"expected {math.prod(full)}"
    )


def page_array(page: Any, read: Callable[[int, int], bytes | memoryview]) -> np.ndarray | None:
    """The samples of a compressed TIFF page, shaped and typed as ``page.asarray()`` returns
    them, each segment decompressed once with an output limit
    (:func:`~.segments.decoded_segments`, which raises ``DecompressionLimitError``); None for
    a layout this module leaves to tifffile (see the module doc).

    ``page`` is a :class:`tifffile.TiffPage`; ``read(offset, count)`` returns ``count`` bytes
    of the file from byte ``offset``. Segments the file leaves empty or does not list are
    ``page.nodata`` (0 unless the file says), as tifffile fills them."""
    if not _assembles(page):
        return None
    native = np.dtype(page.dtype).newbyteorder("=")
    stored = native.newbyteorder(page.parent.byteorder)
    unpredict = None if int(page.predictor) == 1 else tifffile.TIFF.UNPREDICTORS[_HORIZONTAL]
    out = np.full(tuple(int(n) for n in page.shaped), page.nodata, dtype=native)
    planes, _, height, width, _ = out.shape
    seg_rows, seg_cols, _ = _segment_shape(page)
    count = planes * math.ceil(height / seg_rows) * math.ceil(width / seg_cols)
    for index, data in decoded_segments(page, read):
        if index >= count:
            break  # listed past the image's own segments: never read
        if data is None:
            continue
        seg = _segment(page, index, data, stored)
        if unpredict is not None:  # along each row (axis -2: columns), as tifffile does
            seg = unpredict(seg[None], axis=-2, out=seg[None])[0]
        plane, r0, c0, rows, cols = _place(page, index)
        out[plane, 0, r0 : r0 + rows, c0 : c0 + cols] = seg[:rows, :cols]
    return out.reshape(page.shape)
