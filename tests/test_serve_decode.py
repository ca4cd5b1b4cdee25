"""Upload decoding: every accepted format, and every bad input refused with a 4xx message."""

from __future__ import annotations

import contextlib
import io
import struct
import sys
import threading
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pomlia_hpc.data.sources.folder import read_image
from pomlia_hpc.serve.decode import InputSpec, Limits, RequestError, decode
from pomlia_hpc.serve.fingerprint import stats_dim, stats_fingerprint
from tests.fixtures.factories import npy

RGB28 = InputSpec(image_size=28, channels=3)
GREY28 = InputSpec(image_size=28, channels=1)
LIMITS = Limits(max_upload_bytes=1 << 20, max_side_px=512, max_images=8)


def encode(arr: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def refused(data: bytes, ctype: str | None, spec: InputSpec = RGB28) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode(data, ctype, spec, LIMITS)
    assert 400 <= info.value.status < 500
    return info.value


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)


@pytest.mark.parametrize(("fmt", "ctype"), [("PNG", "image/png"), ("TIFF", "image/tiff")])
def test_lossless_formats_decode_exactly(rgb: np.ndarray, fmt: str, ctype: str) -> None:
    out = decode(encode(rgb, fmt), ctype, RGB28, LIMITS)
    assert out.shape == (1, 28, 28, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0] * 255, rgb, atol=1e-3)


def test_jpeg_and_sniffed_octet_stream(rgb: np.ndarray) -> None:
    smooth = np.broadcast_to(np.linspace(0, 255, 28, dtype=np.uint8)[None, :, None], (28, 28, 3))
    out = decode(
        encode(np.ascontiguousarray(smooth), "JPEG", quality=95), "image/jpeg", RGB28, LIMITS
    )
    assert out.shape == (1, 28, 28, 3)
    assert np.abs(out[0] * 255 - smooth).mean() < 5  # lossy, but the same picture
    assert decode(encode(rgb, "PNG"), "application/octet-stream", RGB28, LIMITS).shape[0] == 1


def test_grey_png_and_16_bit() -> None:
    grey = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) * 50
    out = decode(encode(grey, "PNG"), "image/png", GREY28, LIMITS)
    assert out.shape == (1, 28, 28, 1)
    np.testing.assert_allclose(out[0, :, :, 0], grey / 65535, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK"])
def test_image_kinds_ingest_reads_are_converted_as_it_converts_them(
    rgb: np.ndarray, mode: str
) -> None:
    """As an image-folder ingest reads a file for a colour data set (Pillow's RGB rendering):
    alpha dropped, palette rendered, grey repeated to 3 channels."""
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, "JPEG" if mode == "CMYK" else "PNG")
    want = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float32) / 255
    out = decode(buf.getvalue(), None, RGB28, LIMITS)
    assert out.shape == (1, 28, 28, 3)
    np.testing.assert_allclose(out[0], want, atol=1e-6)


@pytest.mark.parametrize(("mode", "spec"), [("P", RGB28), ("1", GREY28), ("LA", GREY28)])
def test_ingest_and_the_server_read_an_image_by_one_rule_in_any_data_set(
    tmp_path: Path, rgb: np.ndarray, mode: str, spec: InputSpec
) -> None:
    """A palette or bilevel file in a 16-bit image folder was read as palette indices or 0/1
    by ingest (its 8-bit rule differed) but as its rendering by the server: one rule now."""
    path = tmp_path / "a.png"
    Image.fromarray(rgb).convert(mode).save(path)
    eight = read_image(path, spec.channels, "uint8")
    np.testing.assert_array_equal(read_image(path, spec.channels, "uint16"), eight)
    served = decode(path.read_bytes(), "image/png", spec, LIMITS)[0]
    np.testing.assert_allclose(served, eight / 255, atol=1e-6)


def test_16_bit_pixels_are_scaled_by_the_training_maximum_when_known() -> None:
    raw = np.array([[0, 1000, 3999, 60000]], np.uint16).repeat(28, 0).repeat(7, 1)
    spec = InputSpec(image_size=28, channels=1, scale_max=3999.0)
    out = decode(encode(raw, "PNG"), "image/png", spec, LIMITS)[0, 0, ::7, 0]
    stored = np.array([0, 64, 255, 255])  # round(x * 255 / 3999), saturated above 3999
    np.testing.assert_allclose(out, stored / 255, atol=1e-6)


def test_multipage_tiff_is_a_batch(rgb: np.ndarray) -> None:
    frames = [Image.fromarray(np.full((28, 28, 3), v, np.uint8)) for v in (0, 100, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    out = decode(buf.getvalue(), "image/tiff", RGB28, LIMITS)
    assert out.shape == (3, 28, 28, 3)
    np.testing.assert_allclose(out[:, 0, 0, 0] * 255, [0, 100, 200], atol=1e-3)


@pytest.mark.parametrize(
    ("shape", "spec", "n"),
    [
        ((28, 28, 3), RGB28, 1),
        ((5, 28, 28, 3), RGB28, 5),
        ((28, 28), GREY28, 1),
        ((4, 28, 28), GREY28, 4),
        ((2, 28, 28, 1), GREY28, 2),
    ],
)
def test_npy_layouts(shape: tuple[int, ...], spec: InputSpec, n: int) -> None:
    arr = np.random.default_rng(1).random(shape, dtype=np.float32)
    out = decode(npy(arr), "application/x-npy", spec, LIMITS)
    assert out.shape == (n, 28, 28, spec.channels)
    # Float pixels are served at the 8-bit steps ingest stores them at.
    steps = (arr * np.float32(255) + np.float32(0.5)).astype(np.uint8)
    as_stored = np.multiply(steps, np.float32(1 / 255), dtype=np.float32)
    np.testing.assert_array_equal(out.reshape(-1), as_stored.reshape(-1))


@pytest.mark.parametrize(
    ("data", "ctype", "status", "message"),
    [
        (b"", "image/png", 400, "empty body"),
        (b"hello world", "image/png", 400, "unrecognised first bytes"),
        (b"hello", "text/plain", 415, "'text/plain' is not supported"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png", 400, "corrupt"),
    ],
)
def test_garbage_is_refused(data: bytes, ctype: str, status: int, message: str) -> None:
    err = refused(data, ctype)
    assert err.status == status and message in err.message


@pytest.mark.parametrize(
    ("data", "ctype"),
    [
        (b"\xff\xd8\xff" + b"x" * 50, "image/jpeg"),
        (b"II*\x00" + b"z" * 40, "image/tiff"),
        (b"\xff\xd8\xff" + b"x" * 50, None),  # sniffed
    ],
)
def test_a_corrupt_image_is_described_without_a_python_repr(data: bytes, ctype: str | None) -> None:
    """The 400 for a corrupt JPEG said "cannot identify image file <_io.BytesIO object at
    0x7f…>"."""
    err = refused(data, ctype)
    assert err.status == 400 and "corrupt image/" in err.message
    assert "object at 0x" not in err.message and "<" not in err.message, err.message


def test_truncated_png_and_declared_type_mismatch(rgb: np.ndarray) -> None:
    png = encode(rgb, "PNG")
    assert "corrupt" in refused(png[: len(png) // 2], "image/png").message
    err = refused(png, "image/jpeg")
    assert (
        err.status == 415
        and "declared as image/jpeg (its Content-Type) but the data is image/png" in err.message
    )


def test_wrong_size_and_channel_count(rgb: np.ndarray) -> None:
    err = refused(encode(np.zeros((32, 32, 3), np.uint8), "PNG"), "image/png")
    assert "32 px high, 32 px wide, the model expects 28 px high, 28 px wide" in err.message
    err = refused(encode(rgb, "PNG"), "image/png", GREY28)
    assert "3 channel(s) (colour), the model expects 1" in err.message
    rgba = np.zeros((28, 28, 4), np.uint8)  # alpha dropped, as ingest does
    assert decode(encode(rgba, "PNG"), "image/png", RGB28, LIMITS).shape == (1, 28, 28, 3)
    # An RGBA NPY too: ingest drops the alpha of an (N, H, W, 4) array.
    assert decode(npy(rgba), "application/x-npy", RGB28, LIMITS).shape == (1, 28, 28, 3)
    two = np.zeros((28, 28, 2), np.uint8)
    assert "2 channel(s), the model expects 3" in refused(npy(two), "application/x-npy").message


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_from_the_header() -> None:
    err = refused(_png_header_only(100_000, 100_000), "image/png")
    assert err.status == 413 and "limit of 512 px" in err.message
    err = refused(_png_header_only(600, 20), "image/png")  # under Pillow's bomb limit: ours
    assert err.status == 413
    assert "20 px high, 600 px wide, larger than the limit of 512 px" in err.message


def test_npy_refusals() -> None:
    obj = np.array([None, 1], dtype=object)
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    assert "dtype object is not supported" in refused(buf.getvalue(), "application/x-npy").message
    good = npy(np.zeros((28, 28, 3), np.uint8))
    assert "header announces" in refused(good[:-10], "application/x-npy").message
    assert "NPY shape" in refused(npy(np.zeros(5, np.uint8)), "application/x-npy").message
    big = npy(np.zeros((9, 28, 28, 3), np.uint8))
    assert refused(big, "application/x-npy").status == 413  # 9 images > max_images 8
    nan = np.full((28, 28, 3), np.nan, np.float32)
    assert "finite" in refused(npy(nan), "application/x-npy").message
    huge_header = npy(np.zeros((1, 600, 2, 3), np.uint8))
    assert refused(huge_header, "application/x-npy").status == 413


def test_stats_fingerprint_layout() -> None:
    x = np.random.default_rng(2).random((2, 3, 28, 28), dtype=np.float32)
    fp = stats_fingerprint(x)
    assert fp.shape == (2, stats_dim(3))
    np.testing.assert_allclose(fp[:, :3], x.mean(axis=(2, 3)), atol=1e-5)
    np.testing.assert_allclose(fp[:, 3:6], x.std(axis=(2, 3)), atol=1e-4)
    # First thumbnail cell of channel 0 averages the top-left 3x3 block (28 px -> 3/4 px blocks).
    np.testing.assert_allclose(fp[:, 6], x[:, 0, :3, :3].mean(axis=(1, 2)), atol=1e-5)
    # The thumbnail average equals the image mean.
    np.testing.assert_allclose(fp[:, 6:70].mean(axis=1), x[:, 0].mean(axis=(1, 2)), atol=1e-2)


def _tiff(frames: list[Image.Image], **kw: object) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:], **kw)
    return buf.getvalue()


def test_compressed_tiff_pages_of_the_wrong_size_are_refused_before_decoding() -> None:
    # 3 pages of 2048 px RGB compress to a few KB each but would decode to 150 MiB of float32.
    pages = [Image.new("RGB", (2048, 2048), (v, 0, 0)) for v in (10, 20, 30)]
    data = _tiff(pages, compression="tiff_adobe_deflate")
    assert len(data) < 200_000
    limits = Limits(max_side_px=4096, max_images=8)
    tracemalloc.start()
    try:
        with pytest.raises(RequestError) as info:
            decode(data, "image/tiff", RGB28, limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.status == 400
    assert "page 1: image is 2048 px high, 2048 px wide, the model expects 28 px high" in (
        info.value.message
    )
    assert peak < 8 * 2**20  # one decoded page alone would be 12 MiB (uint8) + 48 MiB (float)


def test_a_bad_page_after_good_ones_is_named() -> None:
    pages = [Image.new("L", (28, 28)), Image.new("RGB", (28, 28)), Image.new("L", (28, 28))]
    err = refused(_tiff(pages), "image/tiff", GREY28)
    assert err.status == 400
    assert "page 2: image has 3 channel(s) (colour), the model expects 1" in err.message


def test_files_of_one_request_share_the_image_budget() -> None:
    pages = [Image.new("RGB", (28, 28)) for _ in range(3)]
    assert decode(_tiff(pages), "image/tiff", RGB28, LIMITS, budget=3).shape[0] == 3
    with pytest.raises(RequestError) as info:
        decode(_tiff(pages), "image/tiff", RGB28, LIMITS, budget=2)
    assert info.value.status == 413
    assert "3 images, at most 8 per request (2 left after the earlier files)" in (
        info.value.message
    )
    arr = npy(np.zeros((3, 28, 28, 3), np.uint8))
    with pytest.raises(RequestError) as info:
        decode(arr, "application/x-npy", RGB28, LIMITS, budget=2)
    assert info.value.status == 413


def test_float_pixels_outside_unit_range_are_refused_as_at_ingest() -> None:
    err = refused(npy(np.full((28, 28, 3), 255.0, np.float32)), "application/x-npy")
    assert err.status == 400 and "float pixels in [255, 255]; expected floats in [0, 1]" in (
        err.message
    )
    neg = np.zeros((28, 28), np.float32)
    neg[0, 0] = -0.5
    err = refused(encode(neg, "TIFF"), "image/tiff", GREY28)  # a mode 'F' TIFF
    assert "float pixels in [-0.5, 0]" in err.message
    edge = np.linspace(0, 1, 28 * 28, dtype=np.float64).reshape(28, 28)
    out = decode(npy(edge), "application/x-npy", GREY28, LIMITS)
    assert out.min() == 0.0 and out.max() == 1.0


def test_3d_npy_for_a_grey_model_names_both_readings() -> None:
    grey64 = InputSpec(image_size=64, channels=1)
    err = refused(npy(np.zeros((5, 32, 32), np.uint8)), "application/x-npy", grey64)
    assert err.status == 400
    assert "as one (H, W, C) image it is 5 px high, 32 px wide with 32 channel(s)" in err.message
    assert "as (N, H, W) grey images 5 of 32 px high, 32 px wide" in err.message
    assert "(N, 64, 64)" in err.message


def test_a_channel_first_npy_names_its_shape_and_the_accepted_ones() -> None:
    # (1, 1, 28, 28) read channel-last was "image is 1 px high, 28 px wide".
    err = refused(npy(np.zeros((1, 1, 28, 28), np.uint8)), "application/x-npy", GREY28)
    assert err.status == 400 and err.reason == "wrong-size"
    assert "NPY shape (1, 1, 28, 28) does not fit the model" in err.message
    assert "accepted shapes (28, 28), (28, 28, 1), (N, 28, 28) or (N, 28, 28, 1)" in err.message
    err = refused(npy(np.zeros((3, 28, 28), np.uint8)), "application/x-npy", RGB28)
    assert "NPY shape (3, 28, 28)" in err.message
    assert (
        "accepted shapes (28, 28, 3), (N, 28, 28, 3), (28, 28), (28, 28, 1) or (N, 28, 28, 1)"
        in (err.message)
    )


def test_no_content_type_reads_the_type_from_the_data(rgb: np.ndarray) -> None:
    assert decode(encode(rgb, "PNG"), None, RGB28, LIMITS).shape == (1, 28, 28, 3)
    assert decode(encode(rgb, "PNG"), "", RGB28, LIMITS).shape == (1, 28, 28, 3)
    err = refused(encode(rgb, "PNG"), "application/x-npy")
    assert "declared as application/x-npy (its Content-Type) but the data is image/png" in (
        err.message
    )
    assert "send Content-Type: image/png, or no Content-Type" in err.message


def test_a_colour_image_for_a_grey_model_says_how_to_convert_it(rgb: np.ndarray) -> None:
    # Ingest never makes a colour image grey, so the server does not either; it says how.
    err = refused(encode(rgb, "JPEG"), "image/jpeg", GREY28)
    assert "3 channel(s) (colour), the model expects 1 (grey); convert it to grey" in (err.message)
    assert "convert('L')" in err.message


def test_concurrent_decodes_leave_the_warning_filters_as_they_were() -> None:
    """warnings.catch_warnings swaps the process-wide filter list and is not thread-safe:
    decodes in threads left ('ignore', Warning) and ('error', DecompressionBombWarning)
    in warnings.filters for good."""
    png = encode(np.zeros((28, 28), np.uint8), "PNG")
    buf = io.BytesIO()
    # A pixel type neither ingest nor the server reads (signed 8-bit).
    tifffile.imwrite(buf, np.zeros((28, 28), np.int8))
    float_tiff = buf.getvalue()
    assert "has pixel type int8" in refused(float_tiff, None, GREY28).message
    before = list(warnings.filters)

    def loop(data: bytes) -> None:
        for _ in range(400):
            with contextlib.suppress(RequestError):
                decode(data, None, GREY28, LIMITS)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that a race shows
    try:
        threads = [threading.Thread(target=loop, args=(d,)) for d in (png, float_tiff) * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert list(warnings.filters) == before
