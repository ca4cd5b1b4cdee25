"""Bounded decoding of a TIFF page's compressed strips and tiles.

Without the optional imagecodecs package, tifffile decompresses a deflate, LZMA or PackBits
strip whole, with no output limit: a 64 x 64 px page whose one strip holds 200 MB of
compressed zeros (a 30 KB LZMA upload) makes it allocate 200 MB and more, and up to 256 pages
may share that strip. So every segment is decompressed here, once, with an output limit of
what the page's own pixels can take (one byte past it tells "too long"), and a page with a
segment that decodes to more is refused; :mod:`.tiffpage` assembles the page from these
decodes (the only decode of a compressed page). This holds no more than one segment's
expected bytes at a time. Torch-free, as :mod:`.pixels`, which calls it.
"""

from __future__ import annotations

import lzma
import math
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tifffile

from pomlia_hpc.errors import InputError

_CP = tifffile.COMPRESSION
#: A PackBits segment takes at most 2 bytes per decoded byte (a run of 1 literal), plus slack
#: for no-op headers; more is refused unscanned, so the pure-Python scan below stays short.
PACKBITS_BYTES_PER_BYTE = 2
PACKBITS_SLACK_BYTES = 1024
#: Bytes any one strip or tile may decode to even past its whole page's pixels: a legitimate
#: tile may be larger than a small image (libtiff's 256 px tiles for a 100 px image).
SEGMENT_FLOOR_BYTES = 4 << 20
#: Most memory (bytes) an LZMA segment's decoder may take: preset 9's 64 MB dictionary, and more.
LZMA_MEMLIMIT_BYTES = 128 << 20
#: Each byte value with its 8 bits in reverse order: a FillOrder 2 (LSB first) file's stored
#: bytes, compressed ones included, are reversed before they are decompressed (as tifffile
#: does, and libtiff).
REVERSED_BITS = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


class DecompressionLimitError(InputError):
    """A compressed TIFF segment that decodes to more bytes than its page's pixels take (a
    decompression bomb); the message starts with a verb, as a ``PixelFormatError``'s does."""


def inflate(data: memoryview, limit: int) -> bytes:
    """A zlib (deflate) stream decoded to ``limit + 1`` bytes at most; a stream cut short
    (no end marker within the limit) raises ``zlib.error``, as ``zlib.decompress`` does."""
    decoder = zlib.decompressobj()
    # max_length stops inflating there: the rest stays in unconsumed_tail, never allocated.
    out = decoder.decompress(data, limit + 1)
    if len(out) <= limit and not decoder.eof:
        raise zlib.error("incomplete or truncated deflate stream")
    return out


def unlzma(data: memoryview, limit: int) -> bytes:
    """LZMA data decoded to ``limit + 1`` bytes at most; as ``lzma.decompress`` (tifffile's
    decoder), concatenated streams are decoded one after another and junk after a stream is
    ignored, and a first stream cut short raises ``LZMAError``."""
    parts: list[bytes] = []
    total, rest, first = 0, data, True
    while rest:
        # memlimit: a stream's header may ask for a dictionary of up to 1.5 GB; the presets
        # ask for at most 64 MB. Past the limit it raises LZMAError, a damaged file's error.
        decoder = lzma.LZMADecompressor(memlimit=LZMA_MEMLIMIT_BYTES)
        try:
            parts.append(decoder.decompress(rest, max_length=limit + 1 - total))
        except lzma.LZMAError:
            if first:
                raise
            break  # junk after a stream, which lzma.decompress (tifffile's decoder) ignores
        total += len(parts[-1])
        if total > limit:
            break
        if not decoder.eof:
            if first:
                raise lzma.LZMAError("LZMA data ended before the end-of-stream marker")
            break
        rest, first = memoryview(decoder.unused_data), False
    return b"".join(parts)


def unpackbits(data: memoryview, limit: int) -> bytes:
    """PackBits data decoded to just past ``limit`` bytes at most (a run cut short by the end
    of the data yields what it holds, as tifffile's decoder does)."""
    out, i, n = bytearray(), 0, len(data)
    while i < n and len(out) <= limit:
        head = data[i]
        if head < 128:  # a literal run of head + 1 bytes
            out += data[i + 1 : i + head + 2]
            i += head + 2
        elif head > 128:  # one byte repeated 257 - head times
            out += bytes(data[i + 1 : i + 2]) * (257 - head)
            i += 2
        else:  # 128: a no-op
            i += 1
    return bytes(out)


#: The bounded decoder of each compression decoded here, by TIFF compression code.
DECODERS: dict[int, Callable[[memoryview, int], bytes]] = {
    _CP.ADOBE_DEFLATE: inflate,
    _CP.DEFLATE: inflate,
    _CP.LZMA: unlzma,
    _CP.PACKBITS: unpackbits,
}
#: The TIFF compressions whose segments are read here: none, and those of :data:`DECODERS`.
READ_HERE = frozenset({int(_CP.NONE), *DECODERS})


def segment_limit(page: Any) -> int:
    """Most bytes one strip or tile of ``page`` may decode to: its samples at their dtype's
    width (bit-packed 1-bit and 12-bit samples take less), but no more than the whole page's
    samples or ``SEGMENT_FLOOR_BYTES``, whichever is larger. A tile's size is the file's word,
    not bounded by the image's: a 32 px page that names 4096 x 4096 px tiles would let one
    deflate tile inflate to 16 MB (and 65536 px tiles to 4 GB, from a 4 MB upload)."""
    itemsize = np.dtype(page.dtype).itemsize
    segment = math.prod(int(s) for s in page.chunks) * itemsize
    whole = math.prod(int(s) for s in page.shaped) * itemsize
    return min(segment, max(whole, SEGMENT_FLOOR_BYTES))


def decoded_segments(
    page: Any, read: Callable[[int, int], bytes | memoryview]
) -> Iterator[tuple[int, bytes | None]]:
    """Each segment (strip or tile) of a TIFF page, decoded once with an output limit of what
    the segment's pixels take: ``(index, bytes)``, ``bytes`` None for a segment the file
    leaves empty (byte count 0). An uncompressed segment is its stored bytes, read no further
    than its samples go (tifffile drops the rest) nor past the file's end (``read`` cuts
    there): never refused.

    ``page`` is a :class:`tifffile.TiffPage` stored uncompressed or compressed as one of
    :data:`DECODERS` (:data:`READ_HERE`); ``read(offset, count)`` returns ``count`` bytes of
    the file from byte ``offset``, fewer at its end. Raises :class:`DecompressionLimitError`
    for a segment that decodes to more bytes than its pixels take, without ever holding more
    than that many; a damaged stream raises its codec's error (``zlib.error``,
    ``LZMAError``)."""
    decoder = DECODERS.get(int(page.compression))  # None: uncompressed
    limit = segment_limit(page)
    name = getattr(page.compression, "name", str(page.compression))
    reversed_bits = int(page.fillorder) == 2
    # What an uncompressed segment's samples take: tifffile reads its bytes whole, and a
    # file object's read(n) allocates n bytes first (a byte count of 2 GB in a 1 KB file
    # took 2 GB at ingest); a larger count is cut here, and the read at the file's end.
    as_stored = math.prod(int(s) for s in page.chunks) * np.dtype(page.dtype).itemsize
    # A damaged file may list fewer byte counts than offsets: tifffile reads those it pairs.
    pairs = zip(page.dataoffsets, page.databytecounts, strict=False)
    for index, (offset, count) in enumerate(pairs):
        if not isinstance(offset, int | np.integer) or not isinstance(count, int | np.integer):
            # A damaged tag type (ASCII, say) that tifffile reads as text.
            raise tifffile.TiffFileError(
                f"strip or tile #{index} has offset {offset!r} and byte count {count!r}: "
                "expected numbers (damaged file)"
            )
        if not count:
            yield index, None
            continue
        if decoder is None:
            data = bytes(read(int(offset), min(int(count), as_stored)))
            yield index, data.translate(REVERSED_BITS) if reversed_bits else data
            continue
        cap = PACKBITS_BYTES_PER_BYTE * limit + PACKBITS_SLACK_BYTES
        if decoder is unpackbits and count > cap:
            raise DecompressionLimitError(
                f"has a strip or tile (#{index}) compressed as {name} in {count} bytes, more "
                f"than the {cap} its {limit} bytes of pixels can take compressed: save the "
                "image again with a standard encoder"
            )
        stored = read(int(offset), int(count))
        if reversed_bits:
            stored = bytes(stored).translate(REVERSED_BITS)
        decoded = decoder(memoryview(stored), limit)
        if len(decoded) > limit:
            raise DecompressionLimitError(
                f"has a strip or tile (#{index}) compressed as {name} that decompresses to "
                f"more than the {limit} bytes its pixels can take (refused as a "
                "decompression bomb): save the image again with a standard encoder"
            )
        yield index, decoded
