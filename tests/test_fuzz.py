"""Property-based fuzzing (hypothesis) of what reads untrusted bytes: the server's upload
decoders and the ingest readers. Whatever the bytes, the outcome is a result or the project's
own refusal (a 4xx :class:`RequestError`, an :class:`InputError`), never another exception
(which would be a 500 or a traceback). Bounded: a fixed number of examples each, a deadline
per example, no shrinking database on disk; about 20 s in all."""

from __future__ import annotations

import io
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pomlia_hpc.data.sources import open_source
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.serve.decode import MAGIC, InputSpec, Limits, RequestError, decode
from tests.fixtures.factories import npy

FUZZ = settings(
    max_examples=150,
    deadline=2000,  # ms per example: a decoder that hangs on some input fails the test
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SPEC = InputSpec(image_size=16, channels=3)
LIMITS = Limits(max_upload_bytes=1 << 20, max_side_px=512, max_images=8)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    img = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


VALID = [
    _png(0),
    npy(np.zeros((16, 16, 3), np.uint8)),
    npy(np.ones((2, 16, 16, 3), np.float32) / 2),
]
CTYPES = [None, "", "image/png", "image/jpeg", "image/tiff", "application/x-npy",
          "application/octet-stream", "text/plain"]  # fmt: skip


def _check_decode(data: bytes, ctype: str | None) -> None:
    try:
        out = decode(data, ctype, SPEC, LIMITS)
    except RequestError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    assert out.dtype == np.float32 and out.shape[1:] == (16, 16, 3) and 1 <= len(out) <= 8
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@FUZZ
@given(
    st.sampled_from(list(MAGIC)), st.binary(max_size=2048), st.sampled_from(CTYPES)
)  # fmt: skip
def test_decode_any_bytes_behind_a_known_magic(magic: bytes, tail: bytes, ctype: str) -> None:
    _check_decode(magic + tail, ctype)


@FUZZ
@given(st.sampled_from(VALID), st.data(), st.sampled_from(CTYPES))
def test_decode_valid_files_with_bytes_changed(
    base: bytes, data: st.DataObject, ctype: str
) -> None:
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(buf)))
    _check_decode(bytes(buf[:cut]), ctype)


HEADER_PARTS = st.one_of(
    st.text(alphabet="{}()[],:' 0123456789-eEdscrfortan_hp<>|uifbO", max_size=120),
    st.builds(
        lambda d, f, s: f"{{'descr': {d!r}, 'fortran_order': {f}, 'shape': {s}, }}",
        st.sampled_from(["<f4", "|u1", "<u2", "<f8", "O", "<U3", "V8", "<i8", ">f4", "?"]),
        st.sampled_from(["False", "True", "1", "None"]),
        st.one_of(
            st.tuples(*[st.integers(-5, 10**12)] * 3).map(str),
            st.lists(st.integers(0, 40), max_size=6).map(lambda v: str(tuple(v))),
            st.text(max_size=20),
        ),
    ),
)


@FUZZ
@given(HEADER_PARTS, st.binary(max_size=4096), st.sampled_from([(1, 0), (2, 0), (3, 0)]))
def test_decode_npy_with_any_header(header: str, payload: bytes, version: tuple[int, int]) -> None:
    raw = header.encode("utf-8")
    size = struct.pack("<H" if version == (1, 0) else "<I", len(raw))
    _check_decode(b"\x93NUMPY" + bytes(version) + size + raw + payload, "application/x-npy")


# ----------------------------------------------------------------------------- ingest readers


def _npz_bytes() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    np.savez_compressed(
        buf,
        train_images=rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8),
        train_labels=np.array([0, 1, 2, 0, 1, 2]),
        val_images=rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8),
        val_labels=np.array([1, 0]),
    )
    return buf.getvalue()


NPZ = _npz_bytes()
READ_FUZZ = settings(FUZZ, max_examples=60)


def _read_all(path: Path) -> None:
    """Open ``path`` as a source and read every row: fine, or an InputError."""
    try:
        src = open_source(path)
    except PomliaError:
        return
    try:
        total = 0
        for _start, rows in src.iter_rows(4):
            assert rows.dtype == np.uint8 and rows.ndim == 4
            total += len(rows)
        assert total == src.n_images
        assert len(src.labels()) == src.n_images
    except PomliaError:
        pass
    finally:
        close = getattr(src, "close", None)
        if close is not None:
            close()


@READ_FUZZ
@given(st.data())
def test_npz_reader_with_bytes_changed(data: st.DataObject) -> None:
    buf = bytearray(NPZ)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npz"
        path.write_bytes(bytes(buf[: data.draw(st.integers(1, len(buf)))]))
        _read_all(path)


@READ_FUZZ
@given(HEADER_PARTS, st.binary(max_size=2048), st.sampled_from(["train_images", "train_labels"]))
def test_npz_reader_with_any_member_header(header: str, payload: bytes, key: str) -> None:
    raw = header.encode("utf-8")
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + payload
    good = {
        "train_images": npy(np.zeros((4, 8, 8), np.uint8)),
        "train_labels": npy(np.zeros(4, np.int64)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npz"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, blob in good.items():
                z.writestr(f"{name}.npy", member if name == key else blob)
        _read_all(path)


@READ_FUZZ
@given(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"\xff\xd8\xff", b""]),
       st.binary(max_size=1024), st.sampled_from([".png", ".tif", ".jpg"]))  # fmt: skip
def test_folder_reader_with_any_image_bytes(magic: bytes, tail: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        for cls in ("a", "b"):
            (root / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / cls / "ok.png")
        (root / "b" / f"fuzz{suffix}").write_bytes(magic + tail)
        _read_all(root)
