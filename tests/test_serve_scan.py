"""Uploads whose structure costs Pillow far more than their bytes (a TIFF of 85,000 one-pixel
pages took 94 s to be refused, a PNG padded with 1.3 M empty chunks 10 s to open): counted by
a linear scan that stops just past the limit, and refused (413) before Pillow walks them."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from pomlia_hpc.serve.decode import InputSpec, Limits, RequestError, decode
from pomlia_hpc.serve.scan import tiff_pages

GREY1 = InputSpec(image_size=1, channels=1)
LIMITS = Limits(max_upload_bytes=16 << 20, max_side_px=4096, max_images=256)


def tiff_of_pages(n: int, *, broken_after: int | None = None) -> bytes:
    """A little-endian TIFF of ``n`` 1x1 grey pages, 104 bytes each; with ``broken_after``,
    the page after that many points its next page far past the end of the file."""
    pages = []
    base = 8
    for i in range(n):
        ifd = base + 104 * i
        entries = [
            (256, 3, 1, 1),  # width
            (257, 3, 1, 1),  # height
            (258, 3, 1, 8),  # bits per sample
            (259, 3, 1, 1),  # no compression
            (262, 3, 1, 1),  # black is zero
            (273, 4, 1, ifd + 102),  # the pixel, right after this IFD
            (278, 3, 1, 1),  # rows per strip
            (279, 4, 1, 1),  # strip bytes
        ]
        nxt = ifd + 104 if i + 1 < n else 0
        if broken_after is not None and i == broken_after:
            nxt = 0x7FFFFFF0
        body = struct.pack("<H", len(entries))
        body += b"".join(struct.pack("<HHII", *e) for e in entries)
        pages.append(body + struct.pack("<I", nxt) + b"\x80\x00")
    return b"II*\x00" + struct.pack("<I", base) + b"".join(pages)


def refusal(data: bytes, spec: InputSpec = GREY1) -> RequestError:
    try:
        decode(data, None, spec, LIMITS)
    except RequestError as exc:
        return exc
    raise AssertionError("the upload was accepted")


def test_the_page_counter_stops_one_past_the_limit() -> None:
    assert tiff_pages(tiff_of_pages(3), stop_after=257) == 3
    assert tiff_pages(tiff_of_pages(85_000), stop_after=257) == 257
    assert decode(tiff_of_pages(3), None, GREY1, LIMITS).shape == (3, 1, 1, 1)


def test_a_tiff_of_many_pages_is_413_before_pillow_walks_it() -> None:
    err = refusal(tiff_of_pages(20_000))
    assert err.status == 413
    assert err.message == "upload: more than 256 images, at most 256 per request"
    # Pages past the 257th are never read: a broken chain after them does not matter (Pillow,
    # which counted every page first, found the break and answered 400 "corrupt").
    err = refusal(tiff_of_pages(400, broken_after=300))
    assert err.status == 413 and "more than 256 images" in err.message


def test_a_png_padded_with_empty_chunks_is_413() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    empty = struct.pack(">I", 0) + b"prVt" + struct.pack(">I", zlib.crc32(b"prVt"))
    padded = png[:33] + empty * 50_000 + png[33:]  # after IHDR (8 + 25 bytes)
    err = refusal(padded)
    assert err.status == 413 and "PNG holds more than 4682 chunks" in err.message


def test_a_png_in_small_idat_chunks_still_decodes() -> None:
    """libpng writes 8 KiB chunks; even 1 KiB ones are well within the limit."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in arr)
    data = zlib.compress(raw, 1)
    chunk = lambda kind, d: (  # noqa: E731
        struct.pack(">I", len(d)) + kind + d + struct.pack(">I", zlib.crc32(kind + d))
    )
    ihdr = struct.pack(">IIBBBBB", 512, 512, 8, 2, 0, 0, 0)
    idats = b"".join(chunk(b"IDAT", data[i : i + 1024]) for i in range(0, len(data), 1024))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idats + chunk(b"IEND", b"")
    out = decode(png, "image/png", InputSpec(image_size=512, channels=3), LIMITS)
    np.testing.assert_array_equal(np.rint(out[0] * 255).astype(np.uint8), arr)


def test_a_jpeg_padded_with_comments_is_413() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    assert decode(jpeg, None, GREY1, LIMITS).shape == (1, 1, 1, 1)
    err = refusal(jpeg[:2] + b"\xff\xfe\x00\x02" * 5000 + jpeg[2:])
    assert err.status == 413 and "more than 1024 marker segments" in err.message


def overlapping_tiff(entries: int, ifds: int) -> bytes:
    """A TIFF of ``ifds`` IFDs of ``entries`` entries each, IFD k 12 bytes after IFD k-1 (so
    they overlap): a small file in which Pillow loads ``entries * ifds`` entries (a 783 KB
    one of 256 IFDs of 65,535 entries took it 57 s). Entry m is at 10 + 12 m; IFD k's count
    is the top half of entry k-1's value and its next-IFD offset entry entries + k's tag and
    type."""
    first = 8
    out = []
    for m in range(entries + ifds):
        if m < entries:
            tag, kind, value = 0x8000 + m % 0x7000, 3, entries << 16
        else:
            k = m - entries + 1  # this entry's first 4 bytes point IFD k-1 at IFD k
            nxt = first + 12 * k if k < ifds else 0
            tag, kind, value = nxt & 0xFFFF, nxt >> 16, entries << 16
        out.append(struct.pack("<HHII", tag, kind, 1, value))
    body = struct.pack("<H", entries) + b"".join(out)
    return b"II*\x00" + struct.pack("<I", first) + body + b"\0" * 16


def test_a_tiff_of_overlapping_ifds_with_many_entries_is_413() -> None:
    data = overlapping_tiff(600, 64)
    assert tiff_pages(data, stop_after=257) == 64
    err = refusal(data)
    assert err.status == 413
    assert err.message == (
        "upload: TIFF holds 38400 tag entries in its 64 page(s), at most 5120 (1024 plus 64 "
        "per page); save the image again with a standard encoder"
    )


def test_a_tiff_page_of_too_many_entries_is_413() -> None:
    err = refusal(overlapping_tiff(1100, 1))
    assert err.status == 413
    assert err.message == (
        "upload: a TIFF page (IFD) holds 1100 tag entries, at most 1024; save the image "
        "again with a standard encoder"
    )
    # A plain multi-page file is far within both limits.
    assert decode(tiff_of_pages(256), None, GREY1, LIMITS).shape == (256, 1, 1, 1)


def test_a_jpeg_padded_with_fill_or_junk_bytes_is_413() -> None:
    """Pillow steps over fill (0xFF) and junk bytes one at a time in Python: 15 MiB of fill
    took 14 s to decode."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    app0_end = 4 + int.from_bytes(jpeg[4:6], "big")  # SOI, APP0 marker, APP0 segment
    assert decode(jpeg[:2] + b"\xff" * 100 + jpeg[2:], None, GREY1, LIMITS).shape[0] == 1
    for data in (
        jpeg[:2] + b"\xff" * (1 << 20) + jpeg[2:],
        jpeg[:app0_end] + b"\x00" * (1 << 20) + jpeg[app0_end:],
    ):
        err = refusal(data)
        assert err.status == 413, err.message
        assert "JPEG holds more than 4096 bytes of fill (0xFF) or junk" in err.message
