"""Which failures of the one image decoder are a bad file (a 4xx in the server, one line
naming the file at ingest) and which are a bug (let through): found by fuzzing the decode path
with mutated PNG, JPEG, TIFF and NPY files."""

from __future__ import annotations

import io
import logging
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pomlia_hpc.data.sources import folder
from pomlia_hpc.data.sources.base import IngestLimits, check_side
from pomlia_hpc.data.sources.folder import (
    UnreadableImageError,
    decodes,
    read_header,
    read_image,
)
from pomlia_hpc.data.sources.pixels import is_unreadable_file_error
from pomlia_hpc.data.sources.segments import SEGMENT_FLOOR_BYTES
from pomlia_hpc.errors import InputError
from pomlia_hpc.serve import decode as serve_decode
from pomlia_hpc.serve.decode import InputSpec, Limits, RequestError, decode
from tests.fixtures import bad_tiffs

SIDE = 28
#: name: (file, channels, status, what the server's message says)
DAMAGED = {
    "IFD chain that loops": (bad_tiffs.looping_chain(SIDE, 3), 3, 400, "loops back"),
    "ImageLength of two numbers": (bad_tiffs.tuple_image_length(SIDE), 1, 400, "corrupt"),
    "StripByteCounts typed ASCII": (bad_tiffs.text_byte_counts(SIDE), 1, 400, "expected numbers"),
    "RGB 5-6-5": (bad_tiffs.rgb_565(SIDE), 3, 400, "samples differ in depth (5, 6, 5 bits)"),
    # was refused as "a TIFF of 1-bit samples of sample format 1", not skipped as unreadable
    "every tag past the file's end": (
        bad_tiffs.tags_out_of_the_file(SIDE),
        1,
        400,
        "without its size tags (damaged file)",
    ),
}


@pytest.mark.timeout(120)  # the looping chain was followed without end: a hang, not a failure
@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_tiffs_are_one_clear_refusal_in_the_server_and_at_ingest(
    name: str, tmp_path: Path
) -> None:
    data, channels, status, words = DAMAGED[name]
    with pytest.raises(RequestError) as err:
        decode(data, "image/tiff", InputSpec(SIDE, channels), Limits())
    assert err.value.status == status and words in err.value.message, err.value.message
    path = tmp_path / "bad.tif"
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"image file '.*bad\.tif' "):
        read_image(path, channels, read_header(path).depth)


def test_a_bigtiff_is_refused_alike_by_the_server_and_at_ingest(tmp_path: Path) -> None:
    """Ingest took BigTIFF files that the server refused (415): a model could not be served
    its own training files. Both refuse them now, saying how to save a classic TIFF."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((SIDE, SIDE), np.uint8), bigtiff=True)
    with pytest.raises(RequestError) as err:
        decode(buf.getvalue(), "image/tiff", InputSpec(SIDE, 1), Limits())
    assert err.value.status == 415 and "BigTIFF is not supported" in err.value.message
    assert "tifffile.imwrite(..., bigtiff=False)" in err.value.message, err.value.message
    path = tmp_path / "big.tif"
    path.write_bytes(buf.getvalue())
    with pytest.raises(InputError) as refused:
        read_header(path)
    assert str(refused.value).startswith(f"image file '{path}' is a BigTIFF (64-bit offsets)")
    assert "tifffile.imwrite(..., bigtiff=False)" in str(refused.value)
    assert decodes(path) is None  # not "unreadable": the scan refuses it, naming the file


def test_a_file_of_damaged_tags_is_skipped_as_unreadable_without_tifffiles_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`data add --skip-unreadable` refused it for its (default) 1-bit samples, and printed
    tifffile's 14 log records of the damaged tags above the message."""
    path = tmp_path / "bad.tif"
    path.write_bytes(bad_tiffs.tags_out_of_the_file(SIDE))
    with caplog.at_level("DEBUG"):
        why = decodes(path)  # what --skip-unreadable asks: a reason, so the file is skipped
        with pytest.raises(UnreadableImageError):
            read_header(path)
    assert why == "TiffFileError: TIFF page without its size tags (damaged file)", why
    assert [r for r in caplog.records if r.name.startswith("tifffile")] == []
    logging.getLogger("tifffile").error("outside pomlia's decoding")  # another thread's, say
    assert [r.getMessage() for r in caplog.records] == ["outside pomlia's decoding"]


def test_a_bug_in_the_decoder_is_not_called_an_unreadable_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A TypeError raised by this project's own code (not by Pillow or tifffile reading a
    damaged file) is a bug: it is let through, never reported as "cannot be read", skipped
    by --skip-unreadable or answered as a 400."""
    path = tmp_path / "fine.png"
    Image.new("RGB", (SIDE, SIDE)).save(path)
    data = path.read_bytes()

    def buggy(*args: object, **kwargs: object) -> np.ndarray:
        raise TypeError("a bug of ours")

    monkeypatch.setattr(folder, "file_pixels", buggy)
    monkeypatch.setattr(serve_decode, "pil_pixels", buggy)
    calls: list[Callable[[], object]] = [
        lambda: read_image(path, 3, "uint8"),
        lambda: decodes(path),
        lambda: decode(data, "image/png", InputSpec(SIDE, 3), Limits()),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="a bug of ours"):
            call()


def test_skip_unreadable_does_not_decode_a_header_past_the_size_limit(tmp_path: Path) -> None:
    """--skip-unreadable decodes every file before the headers are scanned: a 300-byte file
    that claims 8192 x 8192 px (16-bit) was decoded in full, 128 MB of missing strips."""
    path = tmp_path / "claims.tif"
    path.write_bytes(bad_tiffs.claimed_size(16, 8192))
    tracemalloc.start()
    try:
        why = decodes(path, IngestLimits(max_side_px=4096))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert why is None  # its header reads: the scan refuses its size, naming it
    assert peak < 8 << 20, peak
    head = read_header(path)
    with pytest.raises(InputError, match=r"8192x8192 px: expected sides of 1 \.\. 4096"):
        check_side(f"image file '{path}'", head.height, head.width, IngestLimits(4096))


def test_a_tile_far_larger_than_its_image_cannot_inflate_past_the_floor(tmp_path: Path) -> None:
    """A 32 px page may name 4096 px tiles: its one deflate tile was allowed to inflate to the
    tile's 16 MB (65536 px tiles: 4 GB from a 4 MB upload). Now no segment may decode past
    the whole page's pixels or SEGMENT_FLOOR_BYTES (4 MB), whichever is larger."""
    data = bad_tiffs.oversized_tile(32, 4096, 12 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(RequestError) as err:
            decode(data, "image/tiff", InputSpec(32, 1), Limits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.status == 413 and "decompression bomb" in err.value.message
    assert peak < 3 * SEGMENT_FLOOR_BYTES, peak  # was the 12 MB tile, twice
    path = tmp_path / "tiles.tif"
    path.write_bytes(data)
    with pytest.raises(InputError, match="decompression bomb"):
        read_image(path, 1, "uint8")
    # A legitimate tile larger than a small image still decodes (256 px tiles, 100 px image).
    x = np.arange(100 * 100, dtype=np.uint16).reshape(100, 100)
    buf = io.BytesIO()
    tifffile.imwrite(buf, x, tile=(256, 256), compression="zlib")
    got = decode(buf.getvalue(), "image/tiff", InputSpec(100, 1), Limits())
    assert np.array_equal(got[0, ..., 0], x * np.float32(1 / 65535))


@pytest.mark.parametrize(
    "write", [bad_tiffs.huge_byte_count, bad_tiffs.huge_uncompressed_byte_count]
)
def test_a_strip_byte_count_past_the_file_allocates_nothing_at_ingest(
    tmp_path: Path, write: Callable[[int], bytes]
) -> None:
    """A file's read(n) allocates n bytes before it reads: a strip that claims 2 GB in a
    file of a few hundred bytes made ingest allocate 2 GB (a MemoryError under a memory cap).
    Uncompressed files too: tifffile read their strips itself, by their stated byte counts
    (2 GB allocated for a 900-byte file); they are read here now, cut to what each strip's
    pixels take and to the file's end."""
    path = tmp_path / "claims.tif"
    path.write_bytes(write(SIDE))
    tracemalloc.start()
    try:
        x = read_image(path, 1, read_header(path).depth)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.shape == (SIDE, SIDE, 1)  # the strip the file holds decodes, as tifffile reads it
    assert peak < 16 << 20, peak


def test_a_valid_tiff_of_many_pages_still_decodes_page_by_page() -> None:
    """The bounded walk of the page chain keeps every page of a plain multi-page file."""
    pages = [Image.new("L", (SIDE, SIDE), 40 * i) for i in range(5)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    got = decode(buf.getvalue(), "image/tiff", InputSpec(SIDE, 1), Limits())
    assert [round(float(p.max()) * 255) for p in got] == [0, 40, 80, 120, 160]


def raised(call: Callable[[], object]) -> Exception:
    """The exception ``call`` raises (with its traceback)."""
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("nothing was raised")


def test_a_bad_file_is_told_by_where_the_exception_was_raised() -> None:
    """Raised inside tifffile's or Pillow's code, any exception is the file's fault, also one
    that numpy raises on tifffile's behalf (a TypeError there was a 500 in the server); the
    same exception raised by numpy for this project's own code is a bug."""
    horizontal = tifffile.TIFF.UNPREDICTORS[2]  # tifffile's horizontal-differencing decoder
    in_tifffile = raised(lambda: horizontal(None, axis=-1))
    numpy_for_tifffile = raised(lambda: horizontal(np.zeros((2, 2)), axis="x"))
    numpy_for_us = raised(lambda: np.cumsum(np.zeros((2, 2)), axis="x"))  # type: ignore[call-overload]
    ours = raised(lambda: getattr(None, "dtype"))  # noqa: B009
    assert isinstance(in_tifffile, AttributeError) and isinstance(ours, AttributeError)
    assert type(numpy_for_tifffile) is type(numpy_for_us) is TypeError
    assert is_unreadable_file_error(in_tifffile)
    assert is_unreadable_file_error(numpy_for_tifffile)
    assert not is_unreadable_file_error(numpy_for_us)
    assert not is_unreadable_file_error(ours)


def fuzzed_tiffs(n: int) -> list[tuple[bytes, int]]:
    """``n`` TIFFs of many layouts, each with 1 to 3 of its first page's tag entries damaged
    (type, count or value), seeded: (file, channels)."""
    rng = np.random.default_rng(7)
    side = 16
    grey = rng.integers(0, 256, (side, side), dtype=np.uint8)
    rgb = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    seeds = [
        (bad_tiffs.fill_order_2(grey, compression="zlib", rowsperstrip=5), 1),
        (bad_tiffs.with_short_tag(grey > 99, 266, 1, compression="lzma"), 1),
        (
            bad_tiffs.with_short_tag(
                rgb, 266, 1, photometric="rgb", tile=(16, 16), compression="zlib", predictor=True
            ),
            3,
        ),
        (bad_tiffs.with_short_tag(grey.astype(np.uint16) * 99, 266, 1, compression="zlib"), 1),
        (bad_tiffs.with_short_tag(grey.astype(np.float32) / 255, 266, 1), 1),
    ]
    types = [1, 2, 3, 4, 5, 7, 8, 11, 12, 16, 17]
    values = [0, 1, 2, 3, 5, 8, 16, 255, 65535, 2**31]
    out = []
    for i in range(n):
        data, channels = seeds[i % len(seeds)]
        d = bytearray(data)
        ifd = struct.unpack_from("<I", d, 4)[0]
        for _ in range(int(rng.integers(1, 4))):
            entry = ifd + 2 + 12 * int(rng.integers(0, struct.unpack_from("<H", d, ifd)[0]))
            field = int(rng.integers(0, 3))
            if field == 0:
                struct.pack_into("<H", d, entry + 2, int(rng.choice(types)))
            else:
                struct.pack_into("<I", d, entry + 4 * field, int(rng.choice(values)))
        out.append((bytes(d), channels))
    return out


@pytest.mark.timeout(300)
def test_fuzzed_tiffs_are_refused_as_bad_files_never_as_bugs(tmp_path: Path) -> None:
    """Damaged tags in every layout the decoder assembles: each file decodes or is one clear
    refusal, in the server (a 4xx) and at ingest (an InputError naming it)."""
    path = tmp_path / "fuzzed.tif"
    for data, channels in fuzzed_tiffs(400):
        try:
            decode(data, "image/tiff", InputSpec(16, channels), Limits())
        except RequestError as exc:
            assert 400 <= exc.status < 500, exc.message
        path.write_bytes(data)
        try:
            read_image(path, channels, read_header(path).depth)
        except InputError as exc:
            assert "fuzzed.tif" in str(exc)
