"""Cheap structural checks of an uploaded PNG or TIFF, before Pillow parses it.

Pillow walks a file's structure in Python, and some walks cost far more than the bytes they
cover: counting the pages of a TIFF checks each new page against a list of all earlier ones
(quadratic: 85,000 one-pixel pages, 16 MB, took 94 s before the "at most 256 images" refusal),
and a PNG padded with 1.3 million empty ancillary chunks took 10 s to open. Both scans here
read only the few bytes that chain the structure together, in one linear pass, and stop as
soon as the answer is known:

* :func:`tiff_pages` follows the chain of image file directories (IFDs) and stops after
  ``stop_after`` pages;
* :func:`jpeg_segments` walks the marker segments before the first scan and stops after
  ``stop_after`` (the decoder refuses more than ``JPEG_MAX_SEGMENTS``);
* :func:`png_chunks` walks the chunk headers and stops after ``stop_after`` chunks (the
  decoder refuses a file with more than :func:`png_chunk_limit`).

A file these scans cannot follow (truncated, an offset past the end) is left to Pillow, which
refuses it with its own words; the scans only count, and the decoder refuses only what is too big.
"""

from __future__ import annotations

import struct

#: Chunks a PNG may hold regardless of its size (IHDR, PLTE, text, ICC profile, ... and IDATs).
PNG_BASE_CHUNKS = 4096
#: Plus one chunk per this many bytes of file: encoders split the image data into chunks of
#: 8 KiB (libpng) to 64 KiB (Pillow) or more, so real files stay far below this density.
PNG_BYTES_PER_CHUNK = 1024
_PNG_SIGNATURE_LEN = 8
#: Marker segments a JPEG may hold before its first scan (APPn, COM, DQT, DHT, SOF...): real
#: files have a dozen or so; Pillow reads each in Python (1 M empty comments took 2 s per 4 MB).
JPEG_MAX_SEGMENTS = 1024


def tiff_pages(data: bytes, stop_after: int) -> int:
    """The number of pages (IFDs) in the classic TIFF ``data``, counted up to ``stop_after``
    at most: a file with more pages returns ``stop_after`` without reading further. A chain
    that loops or points outside the file ends the count there (Pillow judges such a file)."""
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return 0
    order = "<" if data[:2] == b"II" else ">"
    u16, u32 = struct.Struct(order + "H"), struct.Struct(order + "I")
    offset = u32.unpack_from(data, 4)[0]
    seen: set[int] = set()
    pages = 0
    while offset and pages < stop_after:
        if offset in seen or offset + 2 > len(data):
            break
        seen.add(offset)
        pages += 1
        entries = u16.unpack_from(data, offset)[0]
        end = offset + 2 + 12 * entries  # the 4-byte offset of the next IFD follows the entries
        if end + 4 > len(data):
            break
        offset = u32.unpack_from(data, end)[0]
    return pages


def png_chunk_limit(size: int) -> int:
    """Most chunks a PNG of ``size`` bytes may hold: ``PNG_BASE_CHUNKS`` plus one per
    ``PNG_BYTES_PER_CHUNK`` bytes (1 KiB)."""
    return PNG_BASE_CHUNKS + size // PNG_BYTES_PER_CHUNK


def png_chunks(data: bytes, stop_after: int) -> int:
    """The number of chunks in the PNG ``data`` up to and including IEND, counted up to
    ``stop_after`` at most (the walk stops there, at IEND, or where the file ends)."""
    header = struct.Struct(">I4s")
    pos, count, end = _PNG_SIGNATURE_LEN, 0, len(data)
    while pos + 8 <= end and count < stop_after:
        length, kind = header.unpack_from(data, pos)
        count += 1
        if kind == b"IEND":
            break
        pos += 12 + length  # length, type, data, CRC
    return count


def jpeg_segments(data: bytes, stop_after: int) -> int:
    """The number of marker segments in the JPEG ``data`` before its first scan (SOS),
    counted up to ``stop_after`` at most; the walk also stops where it cannot follow the
    file (Pillow judges that)."""
    pos, count, end = 2, 0, len(data)  # after SOI
    while pos + 4 <= end and count < stop_after:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        count += 1
        if marker == 0xDA:  # start of scan: entropy-coded data follows, parsed in C
            break
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # no length field
            pos += 2
            continue
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
    return count
