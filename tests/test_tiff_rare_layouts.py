"""The TIFF layouts that were checked by bounded decodes and then decoded again by tifffile:
bilevel (1-bit) pages and FillOrder 2 ones are now assembled from the one bounded decode of
each strip, with exactly tifffile's pixels; 3-D volumes, floating-point differencing, packed
samples, mixed sample formats and many extra samples are refused by name before any strip is
decoded; and a page's array is allocated only once a strip has decoded."""

from __future__ import annotations

import io
import itertools
import lzma
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from pomlia_hpc.data.sources import segments
from pomlia_hpc.data.sources.folder import read_header, read_image
from pomlia_hpc.data.sources.tiffpage import page_array
from pomlia_hpc.errors import InputError
from pomlia_hpc.serve.decode import InputSpec, Limits, RequestError, decode
from tests.fixtures.bad_tiffs import emptied_strip, fill_order_2, retagged, with_short_tag

SIDE = 29  # not a multiple of 8: bilevel rows end in padding bits


def plain(x: np.ndarray, **kw: Any) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, x, **kw)
    return buf.getvalue()


def pages_both_ways(data: bytes) -> list[tuple[np.ndarray | None, np.ndarray]]:
    """Each page as assembled here and as tifffile decodes it."""
    view = memoryview(data)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        return [(page_array(p, lambda at, n: view[at : at + n]), p.asarray()) for p in tif.pages]


def rare_files() -> dict[str, bytes]:
    """Bilevel and FillOrder 2 pages in every arrangement tifffile writes, and stacks."""
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    arrangements: dict[str, dict[str, Any]] = {
        "one strip": {},
        "3-row strips": {"rowsperstrip": 3},
        "tiles": {"tile": (16, 16)},
    }
    for (where, kw), compression, order in itertools.product(
        arrangements.items(), (None, "zlib", "lzma"), ("<", ">")
    ):
        bits = rng.integers(0, 2, (SIDE, SIDE)).astype(bool)
        files[f"bilevel, {where}, {compression}, {order}"] = plain(
            bits, compression=compression, byteorder=order, **kw
        )
    for (where, kw), compression, dtype, predictor in itertools.product(
        arrangements.items(), (None, "zlib", "lzma"), ("bool", "uint8", "uint16", "float32"), (0, 1)
    ):
        if predictor and (dtype in ("bool", "float32") or compression is None):
            # No predictor for bits; floating-point differencing needs imagecodecs; tifffile
            # writes no predictor without compression.
            continue
        x = (rng.random((SIDE, SIDE)) * (2 if dtype == "bool" else 250)).astype(dtype)
        files[f"FillOrder 2, {dtype}, {where}, {compression}, predictor {predictor}"] = (
            fill_order_2(x, compression=compression, predictor=bool(predictor), **kw)
        )
    rgb = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    files["FillOrder 2, RGB planar"] = fill_order_2(
        np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate", compression="zlib"
    )
    stack = rng.integers(0, 65536, (4, SIDE, SIDE), dtype=np.uint16)
    files["4-page stack"] = plain(stack, photometric="minisblack", compression="zlib")
    files["bilevel stack"] = plain(stack > 30000, photometric="minisblack", compression="zlib")
    return files


def test_bilevel_and_fill_order_2_pages_are_tifffiles_pixels() -> None:
    files = rare_files()
    assert len(files) > 50
    for name, data in files.items():
        for got, want in pages_both_ways(data):
            assert got is not None, name
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert np.array_equal(got, want), name


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_a_strip_left_empty_is_nodata(compression: str | None) -> None:
    """The page is no longer filled with nodata before its strips are placed: a strip the
    file leaves empty (byte count 0) is filled after them. (tifffile itself misreads such a
    file: uncompressed, it puts the next strip's bytes under the empty one's rows; deflate,
    it fails with "incomplete or truncated stream".)"""
    x = np.arange(SIDE * SIDE, dtype=np.uint16).reshape(SIDE, SIDE)
    data = emptied_strip(x, 2, compression=compression, rowsperstrip=4)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        got = page_array(tif.pages[0], lambda at, n: memoryview(data)[at : at + n])
    want = x.copy()
    want[8:12] = 0
    assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.mark.parametrize("compression", ["zlib", "lzma"])
def test_a_fill_order_2_page_is_served_and_ingested(compression: str, tmp_path: Path) -> None:
    """Its compressed strips were decompressed without reversing their bits first: a file
    tifffile reads was refused as a corrupt one (400 "incorrect header check")."""
    x = np.random.default_rng(1).integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
    data = fill_order_2(x, compression=compression, rowsperstrip=4)
    served = decode(data, "image/tiff", InputSpec(SIDE, 1), Limits())
    assert np.array_equal(served[0, ..., 0], x * np.float32(1 / 255))
    path = tmp_path / "x.tif"
    path.write_bytes(data)
    assert np.array_equal(read_image(path, 1, read_header(path).depth)[..., 0], x)


def test_each_rare_strip_is_decompressed_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """tifffile's deflate and LZMA decoders are zlib.decompress and lzma.decompress: they no
    longer run after the bounded check for bilevel pages and stacks."""
    bits = np.random.default_rng(2).integers(0, 2, (3, SIDE, SIDE)).astype(bool)
    files = {
        "bilevel": (plain(bits[0], compression="zlib", rowsperstrip=5), 1),
        "bilevel, LZMA tiles": (plain(bits[0], compression="lzma", tile=(16, 16)), 1),
        "bilevel stack": (plain(bits, photometric="miniswhite", compression="zlib"), 3),
    }

    # tifffile writes bool pages as MinIsWhite: 1 is black.
    want = decode(plain(bits, photometric="miniswhite"), "image/tiff", InputSpec(SIDE, 1), Limits())

    def second_decode(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("a strip was decompressed a second time")

    monkeypatch.setattr(zlib, "decompress", second_decode)
    monkeypatch.setattr(lzma, "decompress", second_decode)
    for name, (data, pages) in files.items():
        served = decode(data, "image/tiff", InputSpec(SIDE, 1), Limits())
        assert np.array_equal(served, want[:pages]), name
    path = tmp_path / "x.tif"
    path.write_bytes(files["bilevel"][0])
    assert np.array_equal(read_image(path, 1, "uint8")[..., 0], ~bits[0] * np.uint8(255))


def refused_layouts() -> dict[str, tuple[bytes, str]]:
    """Files of a layout refused by name: (file, what the message says)."""
    rng = np.random.default_rng(3)
    grey = rng.random((SIDE, SIDE)).astype(np.float32)
    wide = rng.integers(0, 4096, (SIDE, SIDE), dtype=np.uint16)
    volume = rng.integers(0, 256, (4, SIDE, SIDE), dtype=np.uint8)
    as_volume: dict[str, Any] = {"volumetric": True, "tile": (16, 16), "photometric": "minisblack"}
    alphas = np.zeros((SIDE, SIDE, 40), np.uint8)
    return {
        "3-D volume": (
            plain(volume, compression="zlib", **as_volume),
            "3-D TIFF volume of 4 slices",
        ),
        "uncompressed 3-D volume": (
            plain(volume, **as_volume),
            "3-D TIFF volume of 4 slices",
        ),
        "ImageDepth 0": (with_short_tag(grey, 32997, 0), "ImageDepth is 0"),
        "floating-point predictor": (
            with_short_tag(grey, 317, 3, compression="zlib"),
            "predictor FLOATINGPOINT",
        ),
        "12-bit samples": (retagged(plain(wide, byteorder="<"), 258, 12), "12-bit samples"),
        "40 alpha samples": (
            plain(alphas, photometric="minisblack", extrasamples=[2] * 39, compression="zlib"),
            "39 of them extra (alpha) samples",
        ),
    }


@pytest.mark.parametrize("name", sorted(refused_layouts()))
def test_layouts_not_read_are_refused_by_name_before_any_decode(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A 3-D volume was read with its slices as rows (a 4 x 29 image served to a 29 px
    model); the others were decompressed, then failed in tifffile as a "corrupt" file, or
    (40 alpha samples) decoded every sample, to drop all but one."""
    data, words = refused_layouts()[name]

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("a strip was decoded")

    monkeypatch.setattr(segments, "decoded_segments", no_decode)
    with pytest.raises(RequestError) as err:
        decode(data, "image/tiff", InputSpec(SIDE, 1), Limits())
    assert err.value.status == 400 and words in err.value.message, err.value.message
    path = tmp_path / "odd.tif"
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"odd\.tif") as ingest:
        read_image(path, 1, "uint8")
    assert words in str(ingest.value)


def test_a_page_is_not_allocated_before_a_strip_decodes() -> None:
    """A 4096 px square 16-bit page (32 MB) whose first strip is damaged: refused without
    the page's array (it was allocated whole, then the first strip failed)."""
    x = np.zeros((4096, 4096), np.uint16)
    data = bytearray(plain(x, compression="zlib", rowsperstrip=4096))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        offset = int(tif.pages[0].dataoffsets[0])
    data[offset : offset + 2] = b"\xff\xff"  # no zlib header
    view = memoryview(bytes(data))
    tracemalloc.start()
    try:
        with tifffile.TiffFile(io.BytesIO(view)) as tif, pytest.raises(zlib.error):
            page_array(tif.pages[0], lambda at, n: view[at : at + n])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes // 4, peak
