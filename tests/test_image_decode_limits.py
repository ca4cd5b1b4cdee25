"""A reviewer's findings on the one per-file image decoder (ingest and server): compressed TIFF
strips that decode past their page's pixels are refused without being decompressed in full;
unspecified extra samples are refused, not dropped as alpha; grey 16-bit and float LZW TIFFs
keep their depth; tifffile's warnings do not flood the log; animated PNGs are one image per
file at ingest, and their 16-bit colour frames are not cut to 8 bits in the server."""

from __future__ import annotations

import io
import logging
import lzma
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pomlia_hpc.data.sources.folder import read_header, read_image
from pomlia_hpc.errors import InputError
from pomlia_hpc.serve.decode import InputSpec, Limits, RequestError, decode
from pomlia_hpc.serve.formats import quiet_pillow_warnings

SIDE = 64
#: Decoded bytes of each crafted strip: far past the 4096 bytes of a 64 x 64 uint8 page.
BOMB_BYTES = 48 << 20


def tiff(
    compression: int, strip: bytes, extra: tuple[tuple[int, int, int, int], ...] = ()
) -> bytes:
    """A 64 x 64 px 8-bit grey TIFF whose one strip is ``strip``, compressed as
    ``compression``; ``extra``: more (tag, type, count, value) entries."""
    entries = sorted(
        [
            (256, 3, 1, SIDE),
            (257, 3, 1, SIDE),
            (258, 3, 1, 8),
            (259, 3, 1, compression),
            (262, 3, 1, 1),
            (273, 4, 1, 0),
            (277, 3, 1, 1),
            (278, 3, 1, SIDE),
            (279, 4, 1, len(strip)),
            *extra,
        ]
    )
    offset = 8 + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(entries)))
    for tag, kind, count, value in entries:
        value = offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    return bytes(out + struct.pack("<I", 0)) + strip


BOMBS = {
    "deflate": lambda: tiff(8, zlib.compress(bytes(BOMB_BYTES), 9)),
    "lzma": lambda: tiff(34925, lzma.compress(bytes(BOMB_BYTES))),
    # Within the byte count a 4096-byte strip may take, but decoding to 576 KB.
    "packbits": lambda: tiff(32773, bytes([129, 0]) * 4500),
    # Far past any byte count a 4096-byte strip may take: refused before it is scanned.
    "packbits, long": lambda: tiff(32773, bytes([129, 0]) * (BOMB_BYTES // 128)),
}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_a_compressed_tiff_strip_past_its_pixels_is_refused_unallocated(
    kind: str, tmp_path: Path
) -> None:
    data = BOMBS[kind]()
    tracemalloc.start()
    try:
        with pytest.raises(RequestError) as err:
            decode(data, "image/tiff", InputSpec(SIDE, 1), Limits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.status == 413, err.value.message
    assert "decompression bomb" in err.value.message or "can take" in err.value.message
    # Was the whole decoded strip (48 MB, 576 KB for the short PackBits one), and more; what
    # is left is the LZMA decoder's own dictionary (8 MB at the default preset).
    assert peak < (16 << 20 if kind == "lzma" else 256 * 1024), peak
    path = tmp_path / "bomb.tif"
    path.write_bytes(data)
    with pytest.raises(
        InputError, match=r"bomb\.tif' has a strip or tile \(#0\) compressed as"
    ):  # ingest alike
        read_image(path, 1, read_header(path).depth)


@pytest.mark.parametrize("compression", ["zlib", "lzma"])
def test_legitimate_compressed_tiffs_still_decode(compression: str) -> None:
    x = np.random.default_rng(0).integers(0, 65536, (SIDE, SIDE), dtype=np.uint16)
    for kw in ({}, {"rowsperstrip": 5}, {"tile": (16, 16)}, {"predictor": True}):
        buf = io.BytesIO()
        tifffile.imwrite(buf, x, compression=compression, **kw)  # type: ignore[arg-type]
        got = decode(buf.getvalue(), "image/tiff", InputSpec(SIDE, 1), Limits())
        assert np.array_equal(got[0, ..., 0], x * np.float32(1 / 65535)), kw


def test_unspecified_extra_samples_are_refused_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "fluo.tif"
    x = np.random.default_rng(1).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    tifffile.imwrite(path, x, photometric="minisblack", planarconfig="contig")
    with pytest.raises(InputError, match="3 samples per pixel, 2 of them extra samples of unsp"):
        read_header(path)
    with pytest.raises(RequestError, match="unspecified meaning"):
        decode(path.read_bytes(), "image/tiff", InputSpec(SIDE, 3), Limits())
    # An alpha extra sample is still dropped.
    rgba = np.random.default_rng(2).integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert np.array_equal(read_image(path, 3, "uint8"), rgba[..., :3])


def lzw_tiff(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="TIFF", compression="tiff_lzw")
    return buf.getvalue()


def test_grey_16_bit_and_float_lzw_tiffs_keep_their_depth(tmp_path: Path) -> None:
    grey = np.arange(SIDE * SIDE, dtype=np.uint16).reshape(SIDE, SIDE) * 15
    got = decode(lzw_tiff(Image.fromarray(grey)), "image/tiff", InputSpec(SIDE, 1), Limits())
    assert np.array_equal(got[0, ..., 0], grey * np.float32(1 / 65535))
    path = tmp_path / "g.tif"
    path.write_bytes(lzw_tiff(Image.fromarray(grey)))
    assert read_header(path).depth == "uint16"
    assert np.array_equal(read_image(path, 1, "uint16")[..., 0], grey)
    floats = np.linspace(0, 1, SIDE * SIDE, dtype=np.float32).reshape(SIDE, SIDE)
    path.write_bytes(lzw_tiff(Image.fromarray(floats, mode="F")))
    assert np.array_equal(read_image(path, 1, "float32")[..., 0], floats)


def test_a_16_bit_miniswhite_lzw_tiff_is_inverted(tmp_path: Path) -> None:
    grey = np.arange(SIDE * SIDE, dtype=np.uint16).reshape(SIDE, SIDE) * 15
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="TIFF", compression="tiff_lzw")
    raw = buf.getvalue()
    # Photometric (tag 262) made MinIsWhite in the file Pillow wrote.
    at = raw.index(struct.pack("<HHI", 262, 3, 1))
    path = tmp_path / "w.tif"
    path.write_bytes(raw[: at + 8] + struct.pack("<H", 0) + raw[at + 10 :])
    assert tifffile.TiffFile(path).pages[0].photometric == tifffile.PHOTOMETRIC.MINISWHITE
    assert np.array_equal(read_image(path, 1, "uint16")[..., 0], 65535 - grey)


def test_a_tiff_with_many_bad_tags_logs_at_most_one_line(caplog: pytest.LogCaptureFixture) -> None:
    bogus = [(40000 + i, 4, 100, 0x7FFFFFFF) for i in range(300)]
    data = tiff(1, bytes(SIDE * SIDE), extra=tuple(bogus))
    quiet_pillow_warnings()  # as the server does at start
    with caplog.at_level(logging.DEBUG):
        decode(data, "image/tiff", InputSpec(SIDE, 1), Limits(), budget=1)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 1


def apng(frames: list[np.ndarray], depth: int) -> bytes:
    """An animated RGB PNG of ``frames`` at ``depth`` bits, written by hand."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    h, w, _ = frames[0].shape
    dtype = ">u2" if depth == 16 else "u1"
    out = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 2, 0, 0, 0))
    out += chunk(b"acTL", struct.pack(">II", len(frames), 0))
    seq = 0
    for i, x in enumerate(frames):
        out += chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 10, 0, 0))
        seq += 1
        raw = zlib.compress(b"".join(b"\x00" + x[r].astype(dtype).tobytes() for r in range(h)))
        if i == 0:
            out += chunk(b"IDAT", raw)
        else:
            out += chunk(b"fdAT", struct.pack(">I", seq) + raw)
            seq += 1
    return b"\x89PNG\r\n\x1a\n" + out + chunk(b"IEND", b"")


def test_animated_pngs_are_one_image_per_file_at_ingest_and_whole_in_the_server(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    x8 = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)]
    path = tmp_path / "anim.png"
    path.write_bytes(apng(x8, 8))
    with pytest.raises(InputError, match=r"anim\.png' has 2 frames .*one image per file"):
        read_header(path)
    served = decode(path.read_bytes(), "image/png", InputSpec(8, 3), Limits())
    assert np.array_equal(served, np.stack(x8) * np.float32(1 / 255))
    x16 = [rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16) for _ in range(2)]
    with pytest.raises(RequestError, match="16-bit colour PNG of 2 frames"):
        decode(apng(x16, 16), "image/png", InputSpec(8, 3), Limits())


def test_a_colour_tiff_of_an_unknown_compression_code_is_refused_by_name(tmp_path: Path) -> None:
    """A 16-bit colour TIFF whose compression tag holds a code tifffile has no name for (a
    damaged or exotic file) is refused with that code, in the server (400) and at ingest,
    rather than failing on the missing name (a 500 in the server)."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((8, 8, 3), np.uint16), photometric="rgb")
    data = bytearray(buf.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        offset = tif.pages[0].tags["Compression"].valueoffset
    data[offset : offset + 2] = struct.pack("<H", 12345)  # no such compression
    with pytest.raises(RequestError) as caught:
        decode(bytes(data), "image/tiff", InputSpec(8, 3, 65535.0), Limits())
    assert caught.value.status in (400, 415)
    assert "code 12345" in str(caught.value)
    path = tmp_path / "odd.tif"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="code 12345"):
        read_header(path)
