"""A compressed TIFF page is assembled from its bounded strip and tile decodes, each segment
decompressed once (it was decompressed again by tifffile's own decoder), and the assembly
gives exactly tifffile's pixels in every layout it takes on."""

from __future__ import annotations

import io
import itertools
import lzma
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from pomlia_hpc.data.sources.folder import read_image
from pomlia_hpc.data.sources.tiffpage import page_array
from pomlia_hpc.serve.decode import InputSpec, Limits, decode

DTYPES = ("uint8", "uint16", "int16", "uint32", "float16", "float32", "float64")
#: (keyword arguments of tifffile.imwrite, shape of the written array)
LAYOUTS = {
    "grey, one strip": ({}, (37, 45)),
    "grey, 5-row strips": ({"rowsperstrip": 5}, (37, 45)),
    "grey, tiles past the edge": ({"tile": (16, 32)}, (37, 45)),
    "RGB, contiguous": ({"photometric": "rgb", "rowsperstrip": 8}, (37, 45, 3)),
    "RGB, planar": ({"photometric": "rgb", "planarconfig": "separate"}, (3, 37, 45)),
    "RGB, planar tiles": (
        {"photometric": "rgb", "planarconfig": "separate", "tile": (16, 16)},
        (3, 37, 45),
    ),
}


def tifffile_bytes(x: np.ndarray, **kw: Any) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, x, **kw)
    return buf.getvalue()


def assembled_and_tifffiles(data: bytes) -> tuple[np.ndarray | None, np.ndarray]:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        got = page_array(page, lambda offset, count: memoryview(data)[offset : offset + count])
        return got, page.asarray()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_assembled_pages_are_tifffiles_pixels(layout: str) -> None:
    kw, shape = LAYOUTS[layout]
    rng = np.random.default_rng(0)
    cases = itertools.product(DTYPES, (None, "zlib", "lzma"), (False, True), ("<", ">"))
    for dtype, compression, predictor, order in cases:
        if predictor and (dtype.startswith("float") or compression is None):
            # Floating-point differencing: tifffile needs imagecodecs to write it; nor does
            # it write a predictor without compression.
            continue
        scale = 1 if dtype.startswith("float") else 200
        x = (rng.random(shape) * scale).astype(dtype)
        data = tifffile_bytes(
            x, compression=compression, predictor=predictor, byteorder=order, **kw
        )
        got, want = assembled_and_tifffiles(data)
        case = (dtype, compression, predictor, order)
        assert got is not None, case
        assert got.dtype == want.dtype and got.shape == want.shape, case
        assert np.array_equal(got, want, equal_nan=True), case


@pytest.mark.parametrize("compression", ["raw", "packbits", "tiff_adobe_deflate"])
@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "F"])
def test_pillow_written_pages_are_assembled_alike(compression: str, mode: str) -> None:
    """Pillow (libtiff) writes many-strip files and PackBits, which tifffile cannot write."""
    rng = np.random.default_rng(1)
    if mode == "RGB":
        image = Image.fromarray(rng.integers(0, 256, (41, 30, 3), dtype=np.uint8))
    elif mode == "F":
        image = Image.fromarray(rng.random((41, 30)).astype(np.float32), mode="F")
    else:
        dtype = np.uint16 if mode == "I;16" else np.uint8
        image = Image.fromarray(rng.integers(0, 256, (41, 30)).astype(dtype) * 3)
    buf = io.BytesIO()
    image.save(buf, format="TIFF", compression=compression)
    got, want = assembled_and_tifffiles(buf.getvalue())
    assert got is not None
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_each_compressed_strip_is_decompressed_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """tifffile's deflate and LZMA decoders are zlib.decompress and lzma.decompress: with the
    page assembled from the bounded decodes, neither runs, in the server or at ingest."""
    x = np.random.default_rng(2).integers(0, 65536, (64, 64), dtype=np.uint16)
    files = {
        "deflate": tifffile_bytes(x, compression="zlib", rowsperstrip=16),
        "lzma": tifffile_bytes(x, compression="lzma", tile=(32, 32)),
        "deflate+predictor": tifffile_bytes(x, compression="zlib", predictor=True),
    }

    def second_decode(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("a strip was decompressed a second time")

    monkeypatch.setattr(zlib, "decompress", second_decode)
    monkeypatch.setattr(lzma, "decompress", second_decode)
    for name, data in files.items():
        served = decode(data, "image/tiff", InputSpec(64, 1), Limits())
        assert np.array_equal(served[0, ..., 0], x * np.float32(1 / 65535)), name
        path = tmp_path / "x.tif"
        path.write_bytes(data)
        assert np.array_equal(read_image(path, 1, "uint16")[..., 0], x), name


@pytest.mark.parametrize(
    ("kw", "shape"),
    [
        ({"rowsperstrip": 16}, (200, 64)),
        ({"photometric": "rgb", "planarconfig": "separate", "rowsperstrip": 8}, (3, 40, 24)),
    ],
)
def test_an_uncompressed_page_of_back_to_back_strips_is_one_read(
    kw: dict[str, Any], shape: tuple[int, ...]
) -> None:
    """Read strip by strip, with a read and a copy each, such a page took twice tifffile's
    time (which reads it in one go); the samples are the same either way."""
    x = np.random.default_rng(2).integers(0, 65536, shape).astype(">u2")
    data = tifffile_bytes(x, **kw)
    reads: list[tuple[int, int]] = []

    def read(offset: int, count: int) -> memoryview:
        reads.append((offset, count))
        return memoryview(data)[offset : offset + count]

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        got = page_array(page, read)
        assert len(page.dataoffsets) > 1
        np.testing.assert_array_equal(got, page.asarray())
    assert len(reads) == 1 and reads[0][1] == x.nbytes
    assert got.flags.writeable
