"""Bounded checks of a TIFF page's compressed strips and tiles, before tifffile decodes them.

Without the optional imagecodecs package, tifffile decompresses a deflate, LZMA or PackBits
strip whole, with no output limit: a 64 x 64 px page whose one strip holds 200 MB of
compressed zeros (a 30 KB LZMA upload) makes it allocate 200 MB and more, and up to 256 pages
may share that strip. So every segment is first decompressed here with an output limit of what
the page's own pixels can take (one byte past it tells "too long"), and a page with a segment
that decodes to more is refused. The check holds no more than one segment's expected bytes at
a time. Torch-free, as :mod:`.pixels`, which calls it.
"""

from __future__ import annotations

import lzma
import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import tifffile

from pomlia_hpc.errors import InputError

_CP = tifffile.COMPRESSION
#: A PackBits segment takes at most 2 bytes per decoded byte (a run of 1 literal), plus slack
#: for no-op headers; more is refused unscanned, so the pure-Python scan below stays short.
PACKBITS_BYTES_PER_BYTE = 2
PACKBITS_SLACK_BYTES = 1024
#: Most memory (bytes) an LZMA segment's decoder may take: preset 9's 64 MB dictionary, and more.
LZMA_MEMLIMIT_BYTES = 128 << 20


class DecompressionLimitError(InputError):
    """A compressed TIFF segment that decodes to more bytes than its page's pixels take (a
    decompression bomb); the message starts with a verb, as a ``PixelFormatError``'s does."""


def _zlib_size(data: memoryview, limit: int) -> int:
    """Bytes a zlib stream decodes to, counted to ``limit + 1`` at most."""
    # max_length stops inflating there: the rest stays in unconsumed_tail, never allocated.
    return len(zlib.decompressobj().decompress(data, limit + 1))


def _lzma_size(data: memoryview, limit: int) -> int:
    """Bytes LZMA data decodes to, counted to ``limit + 1`` at most; as ``lzma.decompress``
    (tifffile's decoder), concatenated streams are decoded one after another."""
    total, rest, first = 0, data, True
    while rest:
        # memlimit: a stream's header may ask for a dictionary of up to 1.5 GB; the presets
        # ask for at most 64 MB. Past the limit it raises LZMAError, a damaged file's error.
        decoder = lzma.LZMADecompressor(memlimit=LZMA_MEMLIMIT_BYTES)
        try:
            total += len(decoder.decompress(rest, max_length=limit + 1 - total))
        except lzma.LZMAError:
            if first:
                raise
            break  # junk after a stream, which lzma.decompress (tifffile's decoder) ignores
        if total > limit or not decoder.eof:
            break
        rest, first = memoryview(decoder.unused_data), False
    return total


def _packbits_size(data: memoryview, limit: int) -> int:
    """Bytes PackBits data decodes to, counted to just past ``limit``."""
    total, i, n = 0, 0, len(data)
    while i < n and total <= limit:
        head = data[i]
        if head < 128:  # a literal run of head + 1 bytes
            total, i = total + head + 1, i + head + 2
        elif head > 128:  # one byte repeated 257 - head times
            total, i = total + 257 - head, i + 2
        else:  # 128: a no-op
            i += 1
    return total


_SIZERS: dict[int, Callable[[memoryview, int], int]] = {
    _CP.ADOBE_DEFLATE: _zlib_size,
    _CP.DEFLATE: _zlib_size,
    _CP.LZMA: _lzma_size,
    _CP.PACKBITS: _packbits_size,
}


def check_segments(page: Any, read: Callable[[int, int], bytes | memoryview]) -> None:
    """Refuse a TIFF page with a compressed segment (strip or tile) that decodes to more bytes
    than the segment's pixels take, without ever holding more than that many.

    ``page`` is a :class:`tifffile.TiffPage`; ``read(offset, count)`` returns ``count`` bytes
    of the file from byte ``offset``. Raises :class:`DecompressionLimitError`. Uncompressed
    pages and compressions this module has no sizer for pass unchecked (the latter go through
    Pillow, whose decoders write into a buffer of the image's own size)."""
    sizer = _SIZERS.get(int(page.compression))
    if sizer is None:
        return
    # An upper bound in bytes: the segment's samples at their dtype's width (bit-packed
    # 1-bit and 12-bit samples take less).
    limit = math.prod(int(s) for s in page.chunks) * np.dtype(page.dtype).itemsize
    name = _CP(page.compression).name
    # A damaged file may list fewer byte counts than offsets: tifffile reads those it pairs.
    pairs = zip(page.dataoffsets, page.databytecounts, strict=False)
    for index, (offset, count) in enumerate(pairs):
        if not count:
            continue
        cap = PACKBITS_BYTES_PER_BYTE * limit + PACKBITS_SLACK_BYTES
        if sizer is _packbits_size and count > cap:
            raise DecompressionLimitError(
                f"has a strip or tile (#{index}) compressed as {name} in {count} bytes, more "
                f"than the {cap} its {limit} bytes of pixels can take compressed: save the "
                "image again with a standard encoder"
            )
        if sizer(memoryview(read(int(offset), int(count))), limit) > limit:
            raise DecompressionLimitError(
                f"has a strip or tile (#{index}) compressed as {name} that decompresses to "
                f"more than the {limit} bytes its pixels take (refused as a decompression "
                "bomb): save the image again with a standard encoder"
            )
