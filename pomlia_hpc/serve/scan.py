"""Cheap structural checks of an uploaded PNG or TIFF, before Pillow parses it.

Pillow walks a file's structure in Python, and some walks cost far more than the bytes they
cover: counting the pages of a TIFF checks each new page against a list of all earlier ones
(quadratic: 85,000 one-pixel pages, 16 MB, took 94 s before the "at most 256 images" refusal),
and a PNG padded with 1.3 million empty ancillary chunks took 10 s to open. Both scans here
read only the few bytes that chain the structure together, in one linear pass, and stop as
soon as the answer is known:

* :func:`tiff_chain` follows the chain of image file directories (IFDs), stops after
  ``stop_after`` pages and sums their entries (the decoder refuses an IFD of more than
  ``TIFF_MAX_IFD_ENTRIES`` entries, or more than :func:`tiff_entry_limit` in all: Pillow
  loads every entry of every IFD in Python, twice, and 256 IFDs of 65,535 entries laid 12
  bytes apart, one 783 KB file, took it 57 s);
* :func:`jpeg_head` walks the marker segments before the first scan and stops after
  ``stop_after`` segments or ``max_skipped`` bytes of fill (0xFF) or junk between them (the
  decoder refuses more than ``JPEG_MAX_SEGMENTS`` and ``JPEG_MAX_SKIPPED``: Pillow skips such
  bytes one at a time, 15 MiB of fill took 14 s);
* :func:`png_chunks` walks the chunk headers and stops after ``stop_after`` chunks (the
  decoder refuses a file with more than :func:`png_chunk_limit`).

A file these scans cannot follow (truncated, an offset past the end) is left to Pillow, which
refuses it with its own words; the scans only count, and the decoder refuses only what is too big.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

#: Chunks a PNG may hold regardless of its size (IHDR, PLTE, text, ICC profile, ... and IDATs).
PNG_BASE_CHUNKS = 4096
#: Plus one chunk per this many bytes of file: encoders split the image data into chunks of
#: 8 KiB (libpng) to 64 KiB (Pillow) or more, so real files stay far below this density.
PNG_BYTES_PER_CHUNK = 1024
_PNG_SIGNATURE_LEN = 8
#: Marker segments a JPEG may hold before its first scan (APPn, COM, DQT, DHT, SOF...): real
#: files have a dozen or so; Pillow reads each in Python (1 M empty comments took 2 s per 4 MB).
JPEG_MAX_SEGMENTS = 1024
#: Fill (0xFF) and junk bytes a JPEG may hold between its segments before the first scan:
#: encoders write none or a few.
JPEG_MAX_SKIPPED = 4096
#: Entries one TIFF IFD may hold: a page has about 10 to 30 (size, layout, strips, metadata).
TIFF_MAX_IFD_ENTRIES = 1024
#: Entries a TIFF may hold in all: this many plus ``TIFF_ENTRIES_PER_PAGE`` per page.
TIFF_BASE_ENTRIES = 1024
TIFF_ENTRIES_PER_PAGE = 64


class TiffChain(NamedTuple):
    """What :func:`tiff_chain` found: ``pages`` (IFDs) counted, their ``entries`` in all, and
    the most entries in one of them (``largest``)."""

    pages: int
    entries: int
    largest: int


class JpegHead(NamedTuple):
    """What :func:`jpeg_head` found before the first scan: marker ``segments`` and the fill
    or junk bytes ``skipped`` between them."""

    segments: int
    skipped: int


def tiff_entry_limit(pages: int) -> int:
    """Most IFD entries a TIFF of ``pages`` pages may hold in all: ``TIFF_BASE_ENTRIES`` plus
    ``TIFF_ENTRIES_PER_PAGE`` per page."""
    return TIFF_BASE_ENTRIES + TIFF_ENTRIES_PER_PAGE * pages


def tiff_chain(data: bytes, stop_after: int) -> TiffChain:
    """The pages (IFDs) of the classic TIFF ``data`` and their entries, counted up to
    ``stop_after`` pages at most: a file with more pages stops there without reading further.
    A chain that loops or points outside the file ends the count there (Pillow judges such a
    file)."""
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return TiffChain(0, 0, 0)
    order = "<" if data[:2] == b"II" else ">"
    u16, u32 = struct.Struct(order + "H"), struct.Struct(order + "I")
    offset = u32.unpack_from(data, 4)[0]
    seen: set[int] = set()
    pages = total = largest = 0
    while offset and pages < stop_after:
        if offset in seen or offset + 2 > len(data):
            break
        seen.add(offset)
        pages += 1
        entries = u16.unpack_from(data, offset)[0]
        # Counted even when the IFD runs past the end: Pillow reads what is there.
        total, largest = total + entries, max(largest, entries)
        end = offset + 2 + 12 * entries  # the 4-byte offset of the next IFD follows the entries
        if end + 4 > len(data):
            break
        offset = u32.unpack_from(data, end)[0]
    return TiffChain(pages, total, largest)


def tiff_pages(data: bytes, stop_after: int) -> int:
    """The number of pages (IFDs) in the classic TIFF ``data``, counted up to ``stop_after``
    at most (see :func:`tiff_chain`)."""
    return tiff_chain(data, stop_after).pages


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


def jpeg_head(data: bytes, stop_after: int, max_skipped: int) -> JpegHead:
    """The marker segments in the JPEG ``data`` before its first scan (SOS), counted up to
    ``stop_after`` at most, and the fill (0xFF) and junk bytes between them, counted up to
    just past ``max_skipped``; the walk also stops where it cannot follow the file (Pillow
    judges that)."""
    pos, count, skipped, end = 2, 0, 0, len(data)  # after SOI
    while pos + 4 <= end and count < stop_after and skipped <= max_skipped:
        marker = data[pos + 1]
        if data[pos] != 0xFF or marker == 0xFF or marker == 0x00:
            # Junk, a fill byte before a marker, or an escaped 0xFF: Pillow steps over each
            # byte in Python, so they are counted (and refused beyond max_skipped).
            step = 2 if data[pos] == 0xFF and marker == 0x00 else 1
            pos, skipped = pos + step, skipped + step
            continue
        count += 1
        if marker == 0xDA:  # start of scan: entropy-coded data follows, parsed in C
            break
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # no length field
            pos += 2
            continue
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
    return JpegHead(count, skipped)
